"""``python -m cnet.predict``: short for ``python -m cnet.tools.predict``."""

import sys

from cnet.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
