"""Importing kserve without letting it read our command line.

kserve parses sys.argv when first imported (its model server's flags, with argparse's prefix
matching): `sd-serving serve --grpc-port` or pytest's flags would be taken as, or clash with, its
`--grpc_port` / `--http_port`. Programs with their own flags that load the server import it
through here first (the client library never imports kserve)."""

from __future__ import annotations

import sys


def import_kserve() -> None:
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve  # noqa: F401
    finally:
        sys.argv = argv
