"""recbole_fork: RecBole 1.2.1 extended for scaling-law studies of sequential recommenders.

Importing the package itself is cheap (no torch, no RecBole), so light modules such as
``recbole_fork.errors`` can be imported by the ETL. The compatibility fixes of
``recbole_fork.compat`` (numpy 2, pandas 3) are applied by every module of the package that
touches RecBole (``compat.apply()`` at its top, idempotent), before RecBole is used.
Nothing here imports ``ray`` or ``mlflow``: those live behind ``recbole_fork.scaling`` and
``recbole_fork.tracking``.
"""

__version__ = "0.1.0"
