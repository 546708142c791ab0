"""The ``cvr`` grid's models as the papers train them, on the click -> order funnel alone, at the full budget.

In ``cvr`` every model also trains the synthetic world's stay-time head and stops after at most 5 epochs; there
the shared-layer baselines stop at epoch 2 and ESMM and the Calibration4CVR structures run out of budget (best
step 975 = epoch 5), and every model's CTR AUC (0.73-0.76) is far under a CTR-only Wide&Deep's (0.803,
``cbmr_ctr``). ESMM, MMoE, PLE and Calibration4CVR are trained on CTR and CVR only in their papers.

Hypothesis, stated before any run of this grid: with the stay-time loss weight 0 and up to 20 epochs (early
stopping on validation CTCVR AUC, patience 2), (a) every model's CTR AUC rises towards 0.80, and (b) the
Calibration4CVR structures, whose CVR tower takes calibration from the CTR tower, close their CVR AUC gap to the
shared-layer baselines (0.684 vs 0.697-0.702 in ``cvr``) or pass them. Either part may fail; both are reported.

    python -m benchmarks.quality --grid cvr_funnel --datasets synthetic --threads 2
"""

from benchmarks.grids.cvr import COLUMNS, METRICS, PLOT_METRICS, render  # noqa: F401
from benchmarks.grids.cvr import EXPERIMENTS as _CVR
from benchmarks.quality import Experiment

TITLE = "CTR/CVR multi-task on the funnel alone (no stay-time head), full training budget"
FUNNEL_ONLY = ["train.task_weights.stay=0"]
EXPERIMENTS = [Experiment(e.name, e.model, e.params, e.overrides + FUNNEL_ONLY, e.datasets) for e in _CVR]
