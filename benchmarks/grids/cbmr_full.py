"""CBMR against Wide&Deep at the full training budget of the dataset profile (up to 20 epochs, early stopping).

The ``cbmr`` grid compares every variant under a shorter epoch budget; this grid repeats its headline pair with
the whole budget, so a gain cannot come from CBMR merely converging faster.

    python -m benchmarks.quality --grid cbmr_full --datasets synthetic
"""

from benchmarks.grids.cbmr import COLUMNS, EXPERIMENTS as _CBMR, METRICS, render  # noqa: F401

TITLE = "CBMR vs Wide&Deep at the full training budget"
EXPERIMENTS = [e for e in _CBMR if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)")]
