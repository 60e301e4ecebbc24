"""``python -m goose_proxy``."""

import sys

try:
    from goose_proxy.cli import main
except KeyboardInterrupt:  # Ctrl-C while its modules load: as main() says it (130)
    sys.exit(130)

sys.exit(main())
