"""Multi-scenario: ST, MT, MT-S and SSIM per backbone (DNN, DeepFM, DCN); STAR, HMoE, DFFM; STAR+SSIM, HMoE+SSIM.

The table follows the SSIM paper (KDD 2025): per dataset, one row per method, AUC and logloss of the main task
(CTR on synthetic data, ``like`` on MovieLens-100K) in every scenario, mean ± std over seeds.

* ST: one model per scenario, trained and early-stopped on that scenario's rows only (``per_scenario``).
* MT: one shared model for all scenarios (the plain backbone).
* MT-S: shared bottom, one tower per scenario (``*_mts``).
* SSIM: a search phase (``ssim_search`` with the row's MT-S backbone) selects the shared instances, the set is
  exported with the dataset's shared ratio, and a fresh MT-S model is retrained with it (``ssim``).
* STAR+SSIM and HMoE+SSIM reuse the set searched with the DNN MT-S backbone (SSIM's set is model-free).

The phases run inside the quality runner as the experiment's ``prepare`` step; a search is cached per dataset,
seed, backbone and ratio, so rows sharing a search reuse it.
"""

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from benchmarks.quality import Experiment, PrepareContext, metric_for

TITLE = "Multi-scenario: ST / MT / MT-S / SSIM per backbone, STAR, HMoE, DFFM"

# Shared ratio per dataset: the fraction of each scenario's training instances with the highest selection score
# that are shared. Chosen by validation AUC of the retrained DNN MT-S model over 0.1, 0.3, 0.5, 0.7 and the learned
# mask (`recsys ssim export --ratio auto`, seed 0, the grid's epoch budget; docs/multi_scenario.md has the sweep).
# "learned" keeps the selection network's own mask.
RATIOS: Dict[str, Any] = {"synthetic": 0.3, "movielens": 0.7, "quick": "learned"}

# SSIM search options (the selection network); the backbone comes from the row.
SEARCH_OPTIONS: Dict[str, Any] = {
    "kl_weight": 0.01,
    "eps": 0.5,
    "temperature_start": 1.0,
    "temperature_end": 10.0,
    "anneal_steps": 1000,
    "mask_lr": 0.001,
}

MLP = {"hidden": [256, 128, 64]}
MTS = {"hidden": [256, 128], "tower_hidden": [64]}


def _params(params: Dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(params, default_flow_style=True).strip()


def ssim_phase(backbone: str, backbone_params: Dict[str, Any]):
    """The SSIM search + export phase: returns the override that joins the shared flags to the data."""

    def prepare(ctx: PrepareContext) -> List[str]:
        from recsys.config import load_config
        from recsys.workflows.ssim import export_shared, run_search

        ratio = RATIOS.get(ctx.dataset, "learned")
        folder = os.path.join(ctx.run_root, f"ssim-{ctx.dataset}-s{ctx.seed}-{backbone}-{ratio}")
        shared = os.path.join(folder, "shared.parquet")
        info_file = os.path.join(folder, "info.json")
        if not os.path.exists(info_file):
            params = {"backbone": backbone, "backbone_params": backbone_params, **SEARCH_OPTIONS}
            cfg = load_config(
                None,
                ctx.overrides
                + [
                    "model.name=ssim_search",
                    f"model.params={_params(params)}",
                    f"run_dir={os.path.join(folder, 'search')}",
                ],
            )
            result = run_search(cfg)
            info = export_shared(result["scores"], shared, ratio)
            info.update(
                {
                    "search_backbone": backbone,
                    "learned_ratio": result["learned_ratio"],
                    "search_valid": {k: v for k, v in result["valid"].items() if k.count("/") <= 2 and "/auc" in k},
                }
            )
            with open(info_file, "w") as f:
                json.dump(info, f)
        with open(info_file) as f:
            ctx.info.update(json.load(f))
        return [f"data.side_columns=[{{path: {shared}, columns: [shared]}}]"]

    return prepare


def _ssim(
    name: str,
    backbone: str,
    params: Dict[str, Any],
    search_backbone: Optional[str] = None,
    search_params: Optional[Dict[str, Any]] = None,
) -> Experiment:
    return Experiment(
        name,
        "ssim",
        {"backbone": backbone, "backbone_params": params, "shared_column": "shared"},
        prepare=ssim_phase(search_backbone or backbone, search_params if search_params is not None else params),
    )


ROWS: List[Tuple[str, str, Experiment]] = []
for label, mt, mts in (("DNN", "dnn", "dnn_mts"), ("DeepFM", "deepfm", "deepfm_mts"), ("DCN", "dcn", "dcn_mts")):
    ROWS += [
        (label, "ST", Experiment(f"{label} ST", mt, MLP, per_scenario=True)),
        (label, "MT", Experiment(f"{label} MT", mt, MLP)),
        (label, "MT-S", Experiment(f"{label} MT-S", mts, MTS)),
        (label, "SSIM", _ssim(f"{label} SSIM", mts, MTS)),
    ]
ROWS += [
    ("STAR", "STAR", Experiment("STAR", "star", MLP)),
    ("HMoE", "HMoE", Experiment("HMoE", "hmoe", {"num_experts": 4, "expert_hidden": [256, 128], "tower_hidden": [64]})),
    ("DFFM", "DFFM", Experiment("DFFM", "dffm", MLP)),
    ("STAR", "STAR+SSIM", _ssim("STAR+SSIM", "star", MLP, "dnn_mts", MTS)),
    (
        "HMoE",
        "HMoE+SSIM",
        _ssim(
            "HMoE+SSIM", "hmoe", {"num_experts": 4, "expert_hidden": [256, 128], "tower_hidden": [64]}, "dnn_mts", MTS
        ),
    ),
]
EXPERIMENTS = [exp for _, _, exp in ROWS]
METRICS = ["auc", "logloss"]


def _cell(metrics: Dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if v is None or v["mean"] != v["mean"]:
        return ""
    return f"{v['mean']:.4f} ± {v['std']:.4f}"


def _scenarios(results: Dict[str, Dict[str, Any]], dataset: str, task: str) -> List[str]:
    """Scenario names in the schema's order (a run's report keeps it; the aggregated metrics are sorted)."""
    prefix = f"{task}/auc/scenario="
    for per in results.values():
        for run in per.get(dataset, {}).get("runs", []):
            names = [k[len(prefix) :] for k in run.get("test", {}) if k.startswith(prefix)]
            if names:
                return names
    keys = sorted({k for per in results.values() for k in per.get(dataset, {}).get("metrics", {})})
    return [k[len(prefix) :] for k in keys if k.startswith(prefix)]


def render(results: Dict[str, Dict[str, Any]]) -> str:
    """Per dataset: rows backbone x method, columns AUC and logloss of the main task per scenario and overall."""
    out = []
    datasets = sorted({d for per in results.values() for d in per})
    for d in datasets:
        task = metric_for(d, "auc").split("/")[0]
        scenarios = _scenarios(results, d, task)
        cols = [(f"{s} AUC", f"{task}/auc/scenario={s}") for s in scenarios]
        cols += [(f"{s} logloss", f"{task}/logloss/scenario={s}") for s in scenarios]
        cols += [("all AUC", f"{task}/auc"), ("all logloss", f"{task}/logloss")]
        out += [
            f"#### {d} ({task})",
            "",
            "| backbone | method | " + " | ".join(c for c, _ in cols) + " |",
            "|---|---|" + "---|" * len(cols),
        ]
        notes = []
        for backbone, method, exp in ROWS:
            per = results.get(exp.name, {}).get(d)
            if per is None:
                continue
            out.append(f"| {backbone} | {method} | " + " | ".join(_cell(per["metrics"], k) for _, k in cols) + " |")
            infos = [r["info"] for r in per.get("runs", []) if r.get("info")]
            if infos:
                shared = ", ".join(f"{i['shared_fraction']:.3f}" for i in infos)
                learned = ", ".join(f"{i['learned_ratio']:.3f}" for i in infos)
                notes.append(
                    f"{exp.name}: shared ratio {infos[0]['ratio']} (realised {shared}; the search's "
                    f"learned mask shared {learned}; searched with {infos[0]['search_backbone']})"
                )
        out.append("")
        out += [f"- {n}" for n in notes]
        out.append("")
    return "\n".join(out)
