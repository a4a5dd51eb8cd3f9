"""`comfyfleet config show`: the effective settings of a daemon, secrets masked."""

from __future__ import annotations

import argparse
import sys

from comfyfleet.daemon_config import (
    ROLES,
    add_config_arguments,
    config_class,
    layered_values,
    process_env,
)
from comfyfleet.shared.settings import effective, env_name, is_secret, to_toml


def add_config(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("config", help="show a daemon's effective configuration")
    actions = cmd.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the effective config as TOML, secrets masked")
    show.add_argument("--role", choices=ROLES, required=True)
    add_config_arguments(show)
    show.set_defaults(run=run_show)


def run_show(args: argparse.Namespace) -> int:
    cls = config_class(args.role)
    values = layered_values(args.role, args, process_env())
    sys.stdout.write(f"# effective {args.role} config: file < COMFYFLEET_* env < flags\n")
    shown = effective(cls, values)
    secrets = [k for k in shown if is_secret(cls, k)]
    if secrets:
        sys.stdout.write(f"# secrets are masked: {', '.join(secrets)}\n")
    sys.stdout.write(f"# each key KEY is also read from the environment as {env_name('KEY')}\n")
    sys.stdout.write(to_toml(shown))
    return 0
