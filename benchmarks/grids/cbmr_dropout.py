"""CBMR against Wide&Deep with dropout 0.1 on the deep MLP of both, at the full training budget of the default
synthetic world.

Without regularisation CBMR converges faster but early-stops 1-4 epochs before Wide&Deep and ends level with it
(``cbmr_full``, ``cbmr_slopes``). This grid asks whether the same regularisation for both lets the calibrated
model keep its lead. The rate 0.1 was fixed before any run.

    python -m benchmarks.quality --grid cbmr_dropout --datasets synthetic
"""

from benchmarks.grids.cbmr import COLUMNS, METRICS, render  # noqa: F401
from benchmarks.grids.cbmr import EXPERIMENTS as _CBMR
from benchmarks.quality import Experiment

TITLE = "CBMR vs Wide&Deep, both with dropout 0.1, full training budget"
EXPERIMENTS = [
    Experiment(e.name, e.model, {**e.params, "dropout": 0.1}, e.overrides, ("synthetic",))
    for e in _CBMR
    if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)")
]
