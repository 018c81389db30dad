"""Scaling-law analysis and sweeps: power-law fits, the compute-optimal frontier, reports.

Modules, one concern each:

- ``laws``: fits of ``L = A x^-alpha`` and ``L(N, D) = E + A/N^alpha + B/D^beta``, bootstrap.
- ``frontier``: the compute-optimal allocation, analytic (from the joint law) and empirical.
- ``runs``: MLflow runs -> ``RunRecord`` (N, D, tokens, compute, metrics, loss curves).
- ``figures``: the paper figures (matplotlib, Agg backend).
- ``report``: fits + figures -> ``report.md``, logged back to MLflow.
- ``sweep``: the grid of trials, run with Ray Tune (Ray is imported only inside it).

Nothing here imports ``ray`` or ``mlflow`` at import time: MLflow is reached through
``recbole_fork.tracking`` and Ray only inside ``sweep.run_sweep``.
"""
