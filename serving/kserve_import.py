"""Importing kserve without letting it read our command line.

kserve parses sys.argv when first imported (its model server's flags, with argparse's prefix
matching): `sd-serving generate --grpc` or locust's `--host` would be taken as, or clash with,
its `--grpc_port` / `--http_port`. Programs with their own flags import it through here first."""

from __future__ import annotations

import sys


def import_kserve() -> None:
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = argv
