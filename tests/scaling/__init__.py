"""Tests of recbole_fork.scaling: fits, frontier, report, sweeps."""
