"""Build the scaling and fine-tuning datasets from raw Amazon files (see `etl/cli.py`).

Example:
    python scripts/scaling_datasets.py --step all --raw-dir RAW --out-dir OUT --sizes 100K,1M
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from etl.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
