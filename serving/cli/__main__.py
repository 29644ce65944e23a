"""`python -m serving.cli ...` is `sd-serving ...`."""

import sys

from serving.cli.main import main

sys.exit(main())
