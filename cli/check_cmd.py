"""`comfyfleet check`: can this machine reach the coordinator, trust its certificate, and use
this key? Prints what it found; exit 2 with the reason when something is wrong."""

from __future__ import annotations

import argparse
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8787"


def add_check(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("check", help="check the connection, TLS and API key to a coordinator")
    cmd.add_argument(
        "--coordinator",
        action="append",
        default=None,
        help="coordinator URL; repeat it or separate URLs with commas to check each "
        f"(env COMFYFLEET_COORDINATOR; default {DEFAULT_URL})",
    )
    cmd.add_argument(
        "--ca-file",
        type=Path,
        default=None,
        help="CA bundle that signed the coordinator's certificate "
        "(env COMFYFLEET_CA_FILE; default: the system CAs)",
    )
    cmd.add_argument(
        "--api-key-env",
        default="COMFYFLEET_API_KEY",
        metavar="NAME",
        help="environment variable holding the API key (default COMFYFLEET_API_KEY;"
        " keys are not taken as flags, which other users can see)",
    )
    cmd.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from comfyfleet.main import CliError
    from comfyfleet.shared.endpoints import parse_urls
    from comfyfleet.shared.errors import InvalidInput

    given = ",".join(args.coordinator or ()) or os.environ.get("COMFYFLEET_COORDINATOR")
    try:
        urls = parse_urls(given or DEFAULT_URL)
    except InvalidInput as exc:
        raise CliError(exc.message) from None
    ca_env = os.environ.get("COMFYFLEET_CA_FILE")
    ca_file = args.ca_file or (Path(ca_env) if ca_env else None)
    for url in urls:
        _check_one(url, ca_file, args.api_key_env)
    return 0


def _check_one(url: str, ca_file: Path | None, api_key_env: str) -> None:
    from comfyfleet.shared.tls import client_context

    context = client_context(ca_file) if url.startswith("https://") else None
    health = _get(f"{url}/healthz", context, None)
    tls = (
        f"TLS verified ({'CA ' + str(ca_file) if ca_file else 'system CAs'})"
        if context
        else "plain HTTP"
    )
    role = health.get("role", "leader")
    leader = "" if role == "leader" else f" (leader: {health.get('leader') or 'none now'})"
    print(
        f"coordinator {url}: up, {role}{leader}, {health.get('agents', '?')} agents, "
        f"{health.get('queued', '?')} queued; {tls}"
    )
    key = os.environ.get(api_key_env)
    if key:
        _get(f"{url}/v1/jobs?limit=1", context, key)
        print(f"API key from {api_key_env}: accepted")
    else:
        print(f"no API key in {api_key_env}: not checked")


def _get(url: str, context: ssl.SSLContext | None, key: str | None) -> dict[str, Any]:
    from comfyfleet.main import CliError

    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            data = json.loads(resp.read() or b"{}")
            return data if isinstance(data, dict) else {}
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise CliError(f"{url}: HTTP {exc.code}: {message}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise CliError(
                f"{url}: the certificate is not trusted ({reason.verify_message}); "
                f"pass --ca-file with the CA that signed it"
            ) from None
        raise CliError(f"{url}: cannot connect: {reason}") from None
    except (TimeoutError, ConnectionError) as exc:
        raise CliError(f"{url}: cannot connect: {exc}") from None
