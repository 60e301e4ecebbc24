"""``python -m goose_proxy``."""

import sys

from goose_proxy.cli import main

sys.exit(main())
