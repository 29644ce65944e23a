#!/bin/sh
# `pip install` inside the image build: the `ca-bundle` build secret, when given, is pip's trust
# store (a proxy's or a private index's CA); wheels/ is always a find-links folder.
set -eu
if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi
exec pip install --no-cache-dir --disable-pip-version-check --find-links /wheels "$@"
