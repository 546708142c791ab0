"""STAN against its controlled PLE baseline at the full training budget of the dataset profile (up to 20 epochs,
early stopping).

The ``stan`` grid compares every variant under a shorter epoch budget; this grid repeats the rows that separate
the mechanisms (the backbone alone, the user-state branch alone, the branch with Beta re-weighting) with the whole
budget, so a gain cannot come from converging faster.

    python -m benchmarks.quality --grid stan_full --datasets synthetic
"""

from benchmarks.grids.stan import EXPERIMENTS as _STAN  # noqa: F401

TITLE = "STAN vs PLE at the full training budget (synthetic world, per lifecycle stage)"
EXPERIMENTS = [
    e for e in _STAN if e.name in ("PLE (STAN code, no state branch)", "STAN branch, no re-weighting", "STAN")
]
