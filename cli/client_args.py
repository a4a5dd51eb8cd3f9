"""What every client command shares: where the coordinator is, the API key, --json output."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from comfyfleet.client import APIError, ClientError, resolve_api_key, resolve_url
from comfyfleet.client.aio import AsyncClient
from comfyfleet.shared.endpoints import parse_urls
from comfyfleet.shared.errors import InvalidInput


def add_client_options(cmd: argparse.ArgumentParser, json_flag: bool = True) -> None:
    cmd.add_argument(
        "--coordinator",
        metavar="URL",
        action="append",
        default=None,
        help="coordinator URL; repeat it, or separate URLs with commas, to name every "
        "coordinator of one store (env COMFYFLEET_COORDINATOR, or coordinator in "
        "the client config file; default http://127.0.0.1:8787)",
    )
    cmd.add_argument(
        "--api-key",
        default=None,
        help="API key, sent as a Bearer token (env COMFYFLEET_API_KEY, or api_key in "
        "~/.config/comfyfleet/client.toml)",
    )
    if json_flag:
        cmd.add_argument("--json", action="store_true", help="print JSON for scripts")


def client_of(args: argparse.Namespace) -> AsyncClient:
    url = resolve_url(args.coordinator)
    try:
        parse_urls(url)
    except InvalidInput as exc:
        from comfyfleet.main import CliError

        raise CliError(exc.message) from None
    return AsyncClient(url, api_key=resolve_api_key(args.api_key))


def print_json(obj: Any) -> None:
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(obj)).decode() + "\n")


def cli_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """API and connection errors become one-line CLI errors (exit 2), never tracebacks."""

    def wrapped(args: argparse.Namespace) -> int:
        from comfyfleet.main import CliError

        try:
            return run(args)
        except APIError as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise CliError(f"{exc.message or exc.code}{where} [HTTP {exc.status}]") from None
        except ClientError as exc:
            raise CliError(str(exc)) from None

    return wrapped
