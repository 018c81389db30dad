"""Scaling-law analysis and sweeps: power-law fits, the compute-optimal frontier, reports.

Modules, one concern each:

- ``laws``: the fits, in named forms: ``L = E + A/N^alpha + B/D^beta`` (a loss, or ``1 - m`` of a
  ranking metric m) and ``m = K N^a D^b``, in one or two variables.
- ``cells``: runs grouped into cells (seeds, per-size tuning), the bootstrap over cells, LOO.
- ``frontier``: the compute-optimal allocation: approach 3 (from the joint law), approach 2
  (IsoFLOP profiles), and when the cells determine one at all.
- ``holdout``: the extrapolation test (fit without the largest runs, predict them).
- ``compare``: width against depth; one group of runs against another.
- ``mapping``: which names of an MLflow store are N, D, C, the metrics; read-only store copies.
- ``runs``: MLflow runs -> ``RunRecord`` (N, D, tokens, compute, metrics, loss curves).
- ``figures``: the figures (matplotlib, Agg backend).
- ``report``: everything above -> ``report.md`` and figures, logged to MLflow for own stores.
- ``sweep``: the trials (grid, budgets, tuning, seeds), run with Ray Tune.

Nothing here imports ``ray`` or ``mlflow`` at import time: MLflow is reached through
``recbole_fork.tracking`` and Ray only inside ``sweep.run_sweep``.
"""
