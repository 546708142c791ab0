"""CTR/CVR multi-task models on the synthetic click -> order funnel: ESMM, SharedBottom, MMoE, PLE, single-task
CVR with a bias net, and the four Calibration4CVR structures (docs/cvr.md).

Every row uses the same embeddings (16-d), comparable network sizes and early stopping on the CTCVR AUC of the
validation split (the funnel metric that needs both pCTR and pCVR). Columns: CTR AUC on all impressions, CVR AUC
on clicked impressions, CTCVR AUC (pCTR x pCVR against click-and-order) on all impressions.
"""

from typing import Any, Dict

from benchmarks.plots import Metric
from benchmarks.quality import Experiment

TITLE = "CTR/CVR multi-task: ESMM, SharedBottom, MMoE, PLE, single-task + bias net, Calibration4CVR"

_RUN = ["train.early_stopping.metric=cvr/ctcvr_auc"]
_CAL = {"ctr_hidden": [256, 128, 64], "cvr_hidden": [256, 128, 64], "calibrate_layer": 1}
STRUCTURES = [
    ("1: CTR calibration (MLP, concat)", "ctr_mlp"),
    ("2: CTR calibration with scaling", "ctr_scaled"),
    ("3: CVR calibration (SE gate)", "cvr_se"),
    ("4: CVR calibration concat", "cvr_se_concat"),
]

EXPERIMENTS = [
    Experiment("ESMM", "esmm", {"hidden": [256, 128, 64]}, _RUN, ("synthetic",)),
    Experiment("SharedBottom", "shared_bottom", {"bottom": [256, 128], "tower": [64]}, _RUN, ("synthetic",)),
    Experiment("MMoE", "mmoe", {"num_experts": 4, "expert_hidden": [256, 128], "tower": [64]}, _RUN, ("synthetic",)),
    Experiment(
        "PLE",
        "ple",
        {"levels": 2, "specific_experts": 1, "shared_experts": 1, "expert_hidden": [256, 128], "tower": [64]},
        _RUN,
        ("synthetic",),
    ),
    Experiment("Single-task CVR + bias net", "single_task", {"hidden": [256, 128, 64]}, _RUN, ("synthetic",)),
] + [
    Experiment(f"Calibration4CVR {label}", "calibration4cvr", dict(_CAL, structure=structure), _RUN, ("synthetic",))
    for label, structure in STRUCTURES
]

METRICS = ["ctr/auc", "cvr/auc", "cvr/ctcvr_auc"]
COLUMNS = [("CTR AUC", "ctr/auc"), ("CVR AUC (clicked)", "cvr/auc"), ("CTCVR AUC", "cvr/ctcvr_auc")]
# the plot: each AUC of the table beside the oracle's AUC of the same target
PLOT_METRICS = [
    Metric("ctr/auc", "CTR AUC (all impressions)", "ctr/oracle_auc"),
    Metric("cvr/auc", "CVR AUC (clicked impressions)", "cvr/oracle_auc"),
    Metric("cvr/ctcvr_auc", "CTCVR AUC (all impressions)", "cvr/oracle_ctcvr_auc"),
]


def render(results: Dict[str, Dict[str, Any]]) -> str:
    """One row per model, per dataset: CTR AUC, CVR AUC on clicked rows, CTCVR AUC, mean ± std over seeds; the
    oracle's AUCs (the synthetic world's true probabilities) as the last row."""
    lines = []
    datasets = sorted({d for per in results.values() for d in per})
    for d in datasets:
        lines += [
            f"#### {d}",
            "",
            "| model | " + " | ".join(c for c, _ in COLUMNS) + " |",
            "|---|" + "---|" * len(COLUMNS),
        ]
        oracle = None
        for name, per in results.items():
            metrics = per.get(d, {}).get("metrics", {})
            if not metrics:
                continue
            cells = []
            for _, key in COLUMNS:
                v = metrics.get(key)
                cells.append("" if v is None or v["mean"] != v["mean"] else f"{v['mean']:.4f} ± {v['std']:.4f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
            oracle = oracle or {k: metrics.get(k) for k in ("ctr/oracle_auc", "cvr/oracle_auc", "cvr/oracle_ctcvr_auc")}
        if oracle and all(v is not None for v in oracle.values()):
            lines.append(
                "| *oracle (true probabilities)* | "
                + " | ".join(
                    f"{oracle[k]['mean']:.4f}" for k in ("ctr/oracle_auc", "cvr/oracle_auc", "cvr/oracle_ctcvr_auc")
                )
                + " |"
            )
        lines.append("")
    return "\n".join(lines)
