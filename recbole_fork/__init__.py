"""recbole_fork: RecBole 1.2.1 extended for scaling-law studies of sequential recommenders.

Importing the package applies the compatibility fixes of ``recbole_fork.compat`` (numpy 2,
pandas 3) before anything touches RecBole. Nothing here imports ``ray`` or ``mlflow``:
those live behind ``recbole_fork.scaling`` and ``recbole_fork.tracking``.
"""

from recbole_fork import compat

compat.apply()

__version__ = "0.1.0"
