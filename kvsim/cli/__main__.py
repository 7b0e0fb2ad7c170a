"""``python -m kvsim.cli``: the same as ``kvsim``."""

import sys

from kvsim.cli.main import main

sys.exit(main())
