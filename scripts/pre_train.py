"""Pre-train a sequential recommender: ``python scripts/pre_train.py -c CONFIG -o CHECKPOINT``.

See ``python scripts/pre_train.py --help`` and the README.
"""

import sys

from recbole_fork.cli import pre_train_main

if __name__ == "__main__":
    sys.exit(pre_train_main())
