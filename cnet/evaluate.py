"""``python -m cnet.evaluate``: short for ``python -m cnet.tools.evaluate`` (score a COCO results file).

The evaluation loop of a predictor over loaders is :mod:`cnet.evaluator`; the COCO metrics are the
package :mod:`cnet.evaluation`.
"""

import sys

from cnet.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
