"""`comfyfleet keys create|list|revoke`: credentials in the coordinator's keys file.

The credential is printed once, on stdout; the file keeps only its sha256. A running
coordinator picks changes up on SIGHUP (`systemctl reload comfyfleet-coordinator`). An agent
token is bound to one agent id (`--agent-id`) unless `--any-agent` asks for a fleet token; the
last key of a file is never revoked (a coordinator never drops to no authentication).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from comfyfleet.daemon_config import add_config_arguments, layered_values, process_env


def add_keys(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("keys", help="create, list and revoke API keys and agent tokens")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="issue a key (printed once) and store its hash")
    kind = create.add_mutually_exclusive_group()
    kind.add_argument("--admin", action="store_true", help="an admin key: sees every tenant")
    kind.add_argument("--agent", action="store_true", help="an agent token")
    create.add_argument("--tenant", help="the tenant a client key belongs to")
    bound = create.add_mutually_exclusive_group()
    bound.add_argument(
        "--agent-id",
        help="with --agent: the one agent id the token speaks for (the agent's agent_id); "
        "required unless --any-agent",
    )
    bound.add_argument(
        "--any-agent",
        action="store_true",
        help="with --agent: a fleet token that any host may use to register as any agent "
        "(and so release that agent's jobs); prefer one token per agent",
    )
    create.add_argument("--note", default="", help="free text kept with the key")
    listing = actions.add_parser("list", help="list keys (ids, kinds, tenants; never secrets)")
    revoke = actions.add_parser("revoke", help="remove a key by its id")
    revoke.add_argument("key_id")
    for action, run in ((create, run_create), (listing, run_list), (revoke, run_revoke)):
        add_config_arguments(action)
        action.add_argument(
            "--keys-file",
            type=Path,
            help="default: keys_file of the coordinator config, or DATA_DIR/keys.json",
        )
        action.add_argument("--data-dir", type=Path, help="the coordinator's data dir")
        action.set_defaults(run=run)


def _keys_path(args: argparse.Namespace) -> Path:
    flags = {k: getattr(args, k) for k in ("keys_file", "data_dir") if getattr(args, k)}
    values = layered_values("coordinator", args, process_env(), flags)
    keys_file: Path | None = values.get("keys_file")
    return keys_file or values["data_dir"] / "keys.json"


def run_create(args: argparse.Namespace) -> int:
    from comfyfleet.coordinator.keyring import Kind, new_credential, read_keys, write_keys
    from comfyfleet.main import CliError

    kind: Kind = "admin" if args.admin else "agent" if args.agent else "client"
    if kind == "client" and not args.tenant:
        raise CliError("--tenant NAME is required for a client key (or use --admin, --agent)")
    if kind == "agent" and args.tenant:
        raise CliError("an agent token has no tenant; drop --tenant")
    if kind != "agent" and (args.agent_id or args.any_agent):
        raise CliError("--agent-id and --any-agent go with --agent")
    if kind == "agent" and not (args.agent_id or args.any_agent):
        raise CliError(
            "--agent needs --agent-id ID (the agent_id of the one agent that will use the "
            "token) or, for a token any agent may use, --any-agent"
        )
    path = _keys_path(args)
    entries = read_keys(path)
    credential, entry = new_credential(
        kind,
        tenant=args.tenant or ("default" if kind == "admin" else None),
        agent_id=args.agent_id,
        any_agent=args.any_agent,
        note=args.note,
    )
    entries[entry.id] = entry
    write_keys(path, entries)
    who = (
        f"tenant {entry.tenant}"
        if kind == "client"
        else f"admin (tenant {entry.tenant})"
        if kind == "admin"
        else f"agent {entry.agent_id}"
        if entry.agent_id
        else "any agent"
    )
    print(
        f"created {kind} key {entry.id} for {who} in {path}; it is shown only now. "
        f"Reload a running coordinator (SIGHUP) to use it.",
        file=sys.stderr,
    )
    print(credential)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from comfyfleet.coordinator.keyring import read_keys

    for entry in read_keys(_keys_path(args)).values():
        owner = entry.tenant or (f"agent:{entry.agent_id}" if entry.agent_id else "fleet")
        made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created_at))
        print(f"{entry.id}  {entry.kind:<6}  {owner:<24}  {made}  {entry.note}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from comfyfleet.coordinator.keyring import read_keys, write_keys
    from comfyfleet.main import CliError

    path = _keys_path(args)
    entries = read_keys(path)
    if entries.pop(args.key_id, None) is None:
        raise CliError(f"no key {args.key_id!r} in {path}")
    if not entries:
        raise CliError(
            f"{args.key_id} is the last key in {path}; a coordinator that has keys never drops "
            "to none (that would switch authentication off), so create its replacement first"
        )
    write_keys(path, entries)
    print(f"revoked {args.key_id}; reload a running coordinator (SIGHUP) to apply", file=sys.stderr)
    return 0
