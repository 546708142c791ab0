"""CBMR (calibration-based meta-learning, Shopee Live) against Wide&Deep, its ablations, MultiCBMR and PEPNet.

The paper's claim: CBMR (Wide&Deep + EmbCB + MlpCB) gains CTR AUC over Wide&Deep, and EmbCB and MlpCB each add
to it. Rows share the dataset profile of ``benchmarks/quality.py`` (batch size, epochs with early stopping,
learning rates); only model parameters differ. The table gives every task of the dataset and CTR AUC per scene.

    python -m benchmarks.quality --grid cbmr                  # synthetic world + MovieLens-100K, 3 seeds
    python -m benchmarks.quality --grid cbmr --quick          # smoke test
"""

from typing import Any, Dict, List, Tuple

from benchmarks.quality import Experiment

TITLE = "CBMR: calibration-based meta-learning (EmbCB, MlpCB), MultiCBMR and PEPNet"
HIDDEN = [256, 128, 64]
BOTH = ("synthetic", "movielens")
SYNTHETIC = ("synthetic",)

EXPERIMENTS = [
    Experiment("Wide&Deep", "wide_deep", {"hidden": HIDDEN}, datasets=BOTH),
    Experiment("CBMR (EmbCB only)", "cbmr", {"hidden": HIDDEN, "mlpcb": {"enabled": False}}, datasets=BOTH),
    Experiment("CBMR (MlpCB only)", "cbmr", {"hidden": HIDDEN, "embcb": {"enabled": False}}, datasets=BOTH),
    Experiment("CBMR (EmbCB + MlpCB)", "cbmr", {"hidden": HIDDEN}, datasets=BOTH),
    Experiment("MultiCBMR", "multicbmr", {}, datasets=BOTH),
    Experiment("PEPNet", "pepnet", {"hidden": HIDDEN}, datasets=BOTH),
    # the design history of the modules (synthetic world only)
    Experiment(
        "CBMR, EmbCB first design (SENet)",
        "cbmr",
        {"hidden": HIDDEN, "embcb": {"design": "senet", "output_activation": "sigmoid"}},
        datasets=SYNTHETIC,
    ),
    Experiment("CBMR, EmbCB K=2", "cbmr", {"hidden": HIDDEN, "embcb": {"num_vectors": 2}}, datasets=SYNTHETIC),
    Experiment(
        "CBMR, EmbCB ReLU output",
        "cbmr",
        {"hidden": HIDDEN, "embcb": {"output_activation": "relu"}},
        datasets=SYNTHETIC,
    ),
    Experiment(
        "CBMR, MlpCB parallel gates", "cbmr", {"hidden": HIDDEN, "mlpcb": {"serial": False}}, datasets=SYNTHETIC
    ),
]
METRICS = ["auc", "oracle_auc", "gauc", "logloss"]

# (report key, column title) per dataset; scene columns are added from the reports
COLUMNS: Dict[str, List[Tuple[str, str]]] = {
    "synthetic": [
        ("ctr/auc", "CTR AUC"),
        ("ctr/oracle_auc", "oracle"),
        ("ctr/gauc", "CTR GAUC"),
        ("ctr/logloss", "CTR logloss"),
        ("stay/rmse", "stay RMSE (s)"),
        ("stay/auc", "stay AUC (>60 s)"),
        ("cvr/auc", "CVR AUC"),
    ],
    "movielens": [("like/auc", "like AUC"), ("like/gauc", "like GAUC"), ("like/logloss", "like logloss")],
    "quick": [("ctr/auc", "CTR AUC"), ("stay/rmse", "stay RMSE (s)"), ("cvr/auc", "CVR AUC")],
}
MAIN_AUC = {"synthetic": "ctr/auc", "movielens": "like/auc", "quick": "ctr/auc"}


def _cell(metrics: Dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if v is None or v["mean"] != v["mean"]:
        return ""
    return f"{v['mean']:.4f} ± {v['std']:.4f}"


def _kind(dataset: str) -> str:
    """The column layout of a dataset profile: MovieLens, the quick world, or the synthetic world (any size)."""
    return dataset if dataset in ("movielens", "quick") else "synthetic"


def render(results: Dict[str, Dict[str, Any]]) -> str:
    """One table per dataset: every task, then the main AUC per scene; the difference to Wide&Deep's main AUC
    in units of the larger of the two standard deviations."""
    datasets = list(dict.fromkeys(d for r in results.values() for d in r))
    out = []
    for d in datasets:
        rows = {name: r[d]["metrics"] for name, r in results.items() if d in r}
        main = MAIN_AUC[_kind(d)]
        prefix = f"{main}/scenario="
        scenes = list(dict.fromkeys(k[len(prefix) :] for m in rows.values() for k in m if k.startswith(prefix)))
        cols = [c for c in COLUMNS[_kind(d)] if any(c[0] in m for m in rows.values())]
        cols += [(f"{main}/scenario={s}", f"{main.split('/')[0]} AUC {s}") for s in scenes]
        base = rows.get("Wide&Deep", {}).get(main)
        header = ["model"] + [title for _, title in cols] + (["vs W&D (std)"] if base else [])
        lines = [f"### {d}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for name, m in rows.items():
            cells = [name] + [_cell(m, key) for key, _ in cols]
            if base:
                v = m.get(main)
                spread = max(v["std"], base["std"]) if v else 0.0
                diff = v["mean"] - base["mean"] if v else float("nan")
                cells.append(
                    ""
                    if name == "Wide&Deep" or not v
                    else f"{diff:+.4f} ({diff / spread:+.1f})"
                    if spread > 0
                    else f"{diff:+.4f}"
                )
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)
