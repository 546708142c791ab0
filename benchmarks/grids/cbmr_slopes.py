"""CBMR against Wide&Deep on the synthetic world with per-user slopes (``WorldConfig.personal_slopes=0.5``: every
user has their own sensitivity to the feed position and to the host's level), at the full training budget.

On the default world the per-sample part of the click logit is a product of a few embeddings, which an MLP
learns given time, and CBMR only converges faster (``cbmr_full``). Here every user carries their own parameters
on context features, the case "one sample, one model" is built for. The strength 0.5 was fixed before any run.

    python -m benchmarks.quality --grid cbmr_slopes --datasets synthetic-slopes
"""

from benchmarks.grids.cbmr import COLUMNS, METRICS, render  # noqa: F401
from benchmarks.grids.cbmr import EXPERIMENTS as _CBMR
from benchmarks.quality import Experiment

TITLE = "CBMR vs Wide&Deep on the synthetic world with per-user slopes, full training budget"
EXPERIMENTS = [
    Experiment(e.name, e.model, e.params, e.overrides, ("synthetic-slopes",))
    for e in _CBMR
    if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)")
]
