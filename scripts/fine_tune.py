"""Fine-tune a pre-trained model: ``python scripts/fine_tune.py -c CONFIG -s DATASET -o CKPT -i PRE``.

See ``python scripts/fine_tune.py --help`` and ``recbole_fork/finetune.py``.
"""

import sys

from recbole_fork.cli import fine_tune_main

if __name__ == "__main__":
    sys.exit(fine_tune_main())
