"""``python -m cnet.test``: short for ``python -m cnet.tools.test``."""

import sys

from cnet.tools.test import main

if __name__ == "__main__":
    sys.exit(main())
