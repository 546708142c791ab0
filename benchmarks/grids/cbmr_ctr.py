"""CBMR against Wide&Deep as CTR models (the paper's setting), at the full training budget of the synthetic world.

The paper's CBMR and its Wide&Deep baseline are CTR models; in the other CBMR grids every model also carries the
stay-time and CVR heads of the dataset on its single shared tower (MultiCBMR is the multi-task model). There
CBMR's CVR logloss grows far above Wide&Deep's (``cbmr_full``: 0.88 vs 0.70) while its CTR AUC peaks and early-
stops earlier, so the hypothesis, stated before any run of this grid: the shared tower (and the gates, which
every task trains) overfits the small conditional tasks, and this caps CBMR's CTR ceiling. Both rows here train
on the CTR loss alone (task weights of stay and CVR set to 0; their heads stay in the model untrained and their
metrics mean nothing), same data, budget and seeds as ``cbmr_full``.

The ablation rows (EmbCB only, MlpCB only) and PEPNet were added after the first two rows had run, to check in
this setting the paper's other claim, that EmbCB and MlpCB each add to the gain.

    python -m benchmarks.quality --grid cbmr_ctr --datasets synthetic
"""

from typing import Any, Dict

from benchmarks.grids import cbmr
from benchmarks.grids.cbmr import COLUMNS, METRICS  # noqa: F401
from benchmarks.grids.cbmr import EXPERIMENTS as _CBMR
from benchmarks.quality import Experiment
from recsys.data.synthetic import CTR_ONLY

TITLE = "CBMR vs Wide&Deep as CTR-only models, full training budget"
EXPERIMENTS = [
    Experiment(e.name, e.model, e.params, e.overrides + CTR_ONLY, ("synthetic",))
    for e in _CBMR
    if e.name in ("Wide&Deep", "CBMR (EmbCB + MlpCB)", "CBMR (EmbCB only)", "CBMR (MlpCB only)", "PEPNet")
]


def render(results: Dict[str, Dict[str, Any]]) -> str:
    """The ``cbmr`` table with the CTR columns only (the other heads are not trained here)."""
    ctr = {
        name: {
            d: {**r, "metrics": {k: v for k, v in r["metrics"].items() if k.startswith("ctr/")}}
            for d, r in per_dataset.items()
        }
        for name, per_dataset in results.items()
    }
    return cbmr.render(ctr)
