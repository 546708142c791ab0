"""CBMR against Wide&Deep on a four times denser sample of the synthetic world (2M impressions, same users,
hosts, items and 30 days), at the full training budget (up to 20 epochs, early stopping).

At 500k impressions CBMR's lead over Wide&Deep is faster convergence: at the full budget they tie
(``cbmr_full``). The paper trains on production logs; this grid asks whether the per-sample calibration pays
once every id has four times the data.

    python -m benchmarks.quality --grid cbmr_scale --datasets synthetic-2m
"""

from benchmarks.grids.cbmr import COLUMNS, METRICS, render  # noqa: F401
from benchmarks.grids.cbmr import EXPERIMENTS as _CBMR
from benchmarks.quality import Experiment

TITLE = "CBMR vs Wide&Deep on 2M impressions of the synthetic world, full training budget"
EXPERIMENTS = [
    Experiment(e.name, e.model, e.params, e.overrides, ("synthetic-2m",))
    for e in _CBMR
    if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)")
]
