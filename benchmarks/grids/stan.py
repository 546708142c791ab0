"""STAN (Li et al., RecSys 2023) against its multi-task backbones on the synthetic live-streaming world, overall
and per lifecycle stage.

Rows: MMoE and PLE (the multi-task issue's models, by registry name), PLE from STAN's code without the state
branch (the controlled baseline: same towers and training), PLE-stage (the true stage as a user feature,
``configs/datasets/synthetic_stage.yaml``), STAN's branch without loss re-weighting (gamma = 1), STAN without
Beta (gamma = the preference head's prediction) and STAN (Beta-resampled gamma). Tasks CTR, stay time (AUC of
stay > 60 s, NDCG@5 with the stay as graded relevance) and order (CVR on clicks); AUC and NDCG@5 per user;
overall and per lifecycle stage.

    python -m benchmarks.quality --grid stan --datasets synthetic --seeds 3
"""

import logging
import os
from typing import Any, Dict, List

from benchmarks.plots import Metric
from benchmarks.quality import REPO, Experiment
from recsys.models import model_names

log = logging.getLogger("benchmarks.quality")

TITLE = "STAN: stage-adaptive multi-task learning (synthetic world, per lifecycle stage)"
STAGE_SPEC = "data.spec=" + os.path.join(REPO, "configs", "datasets", "synthetic_stage.yaml")
BACKBONE = {"expert_hidden": [128, 64], "specific_experts": 1, "shared_experts": 1, "tower_hidden": [64]}
ROWS = [
    Experiment("MMoE", "mmoe", datasets=("synthetic",)),
    Experiment("PLE", "ple", datasets=("synthetic",)),
    Experiment(
        "PLE (STAN code, no state branch)", "stan", {**BACKBONE, "state_branch": False}, datasets=("synthetic",)
    ),
    Experiment(
        "PLE-stage", "stan", {**BACKBONE, "state_branch": False}, overrides=[STAGE_SPEC], datasets=("synthetic",)
    ),
    Experiment("STAN branch, no re-weighting", "stan", {**BACKBONE, "loss_weighting": "none"}, datasets=("synthetic",)),
    Experiment("STAN without Beta", "stan", {**BACKBONE, "loss_weighting": "prediction"}, datasets=("synthetic",)),
    Experiment("STAN", "stan", {**BACKBONE, "loss_weighting": "beta"}, datasets=("synthetic",)),
]


def _registered(rows: List[Experiment]) -> List[Experiment]:
    known = set(model_names())
    kept = []
    for exp in rows:
        if exp.model in known:
            kept.append(exp)
        else:
            log.warning(
                "grid stan: skipping row '%s': model '%s' is not registered in this checkout", exp.name, exp.model
            )
    return kept


EXPERIMENTS = _registered(ROWS)
METRICS = ["auc", "ndcg@5"]
TASKS = (("ctr", "CTR"), ("stay", "stay time"), ("cvr", "order (CVR | click)"))
STAGES = ("new", "wandering", "sticky", "loyal")
# the plot: overall AUC of every task (stay time: AUC of stay > 60 s), beside the oracle's where the world has one
PLOT_METRICS = [Metric(f"{task}/auc", f"{title} AUC", f"{task}/oracle_auc") for task, title in TASKS]


def render(results: Dict[str, Dict[str, Any]]) -> str:
    """One table per task: AUC and NDCG@5 overall and per lifecycle stage, mean ± std over seeds."""
    lines = [f"### {TITLE}", ""]
    slices = [("all", "")] + [(s, f"/stage={s}") for s in STAGES]
    for task, title in TASKS:
        lines += [f"**{title}**", ""]
        header = [f"{m.upper() if m == 'auc' else 'NDCG@5'} {name}" for m in METRICS for name, _ in slices]
        lines.append("| model | " + " | ".join(header) + " |")
        lines.append("|---|" + "---|" * len(header))
        for name, per_ds in results.items():
            for dataset, entry in per_ds.items():
                cells = []
                for m in METRICS:
                    for _, suffix in slices:
                        v = entry["metrics"].get(f"{task}/{m}{suffix}")
                        cells.append("" if v is None or v["mean"] != v["mean"] else f"{v['mean']:.4f} ± {v['std']:.4f}")
                label = name if dataset == "synthetic" else f"{name} ({dataset})"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = [e.name for e in ROWS if e not in EXPERIMENTS]
    if skipped:
        lines.append(f"Not run (model not registered in this checkout): {', '.join(skipped)}.")
    return "\n".join(lines)
