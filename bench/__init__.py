"""Shoal's benchmark: accuracy and speed on simulated videos, as ratios measured in one run.

Run from the repository root: ``python -m bench.run`` (see bench/README.md).
"""
