"""CBMR against Wide&Deep at the full training budget of the dataset profile (up to 20 epochs, early stopping).

The ``cbmr`` grid compares every variant under a shorter epoch budget; this grid repeats its headline pair with
the whole budget (and MultiCBMR, the 5-epoch grid's strongest row), so a gain cannot come from
merely converging faster.

    python -m benchmarks.quality --grid cbmr_full --datasets synthetic
"""

from benchmarks.grids.cbmr import COLUMNS, METRICS, render  # noqa: F401
from benchmarks.grids.cbmr import EXPERIMENTS as _CBMR
from benchmarks.quality import Experiment

TITLE = "CBMR vs Wide&Deep at the full training budget"
EXPERIMENTS = [e for e in _CBMR if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)", "MultiCBMR")] + [
    # MultiCBMR's experts, towers and wide part without EmbCB and MlpCB: what the calibration adds to it
    Experiment(
        "MultiCBMR without calibration (MMoE + wide)",
        "multicbmr",
        {"embcb": {"enabled": False}, "mlpcb": {"enabled": False}},
        datasets=("synthetic",),
    ),
]
