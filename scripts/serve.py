"""Serve a trained model over HTTP: ``python scripts/serve.py -i CHECKPOINT`` (or ``--run RUN_ID``).

See ``python scripts/serve.py --help`` and the README ("Serving").
"""

import sys

from recbole_fork.serving.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
