"""The `comfyfleet` command: one entry point, one subcommand per daemon or tool."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyfleet")
    parser.add_argument("--version", action="store_true")
    args = parser.parse_args(argv)
    if args.version:
        from comfyfleet import __version__

        print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
