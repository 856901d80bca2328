"""``python -m cnet.convert``: short for ``python -m cnet.tools.convert``."""

import sys

from cnet.tools.convert import main

if __name__ == "__main__":
    sys.exit(main())
