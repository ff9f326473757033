"""``python -m genbook``: see :mod:`genbook.cli` (``python -m genbook --help``)."""

import sys

from genbook.cli import main

sys.exit(main())
