"""``python -m cnet.evaluate``: short for ``python -m cnet.tools.evaluate``."""

import sys

from cnet.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
