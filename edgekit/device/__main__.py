"""`python -m edgekit.device prepare [--root DIR] [--wheel FILE ...] [--force]`: what `make emulator` runs."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from edgekit.errors import EdgekitError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.device")
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make the arm64 root + aarch64 wheels (cached)")
    prep.add_argument("--root", type=Path, default=None)
    prep.add_argument("--wheel", type=Path, action="append", default=None, help="use this aarch64 wheel (repeat)")
    prep.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from edgekit.device.root import prepare, smoke

    try:
        root = prepare(args.root, wheels=args.wheel, force=args.force)
        print(f"arm64 root ready at {root.path}: {smoke(root)} under {root.qemu}")
    except EdgekitError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
