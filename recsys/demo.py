"""``make demo`` / ``recsys demo``: generate the synthetic world, train the default models and compare them
with the oracle (the true click probabilities), per task and scenario.

CBMR and its Wide&Deep baseline are CTR models in the paper, and they are trained as such here (the other tasks'
loss weights 0; training their heads on the same single tower costs both about 0.01 CTR AUC, see docs/cbmr.md).
Wide&Deep is trained a second time on all tasks of the schema, for the per-task table.
"""

import logging
import os
from typing import Dict, List, Tuple

from recsys.config import load_config
from recsys.data.synthetic import CTR_ONLY, WorldConfig, generate

log = logging.getLogger("recsys.demo")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (column label, run config, overrides): the default model first, its baseline after
DEMO_MODELS: List[Tuple[str, str, List[str]]] = [
    ("cbmr (ctr)", "configs/cbmr_synthetic.yaml", CTR_ONLY),
    ("wide_deep (ctr)", "configs/wide_deep_synthetic.yaml", CTR_ONLY),
    ("wide_deep (all tasks)", "configs/wide_deep_synthetic.yaml", []),
]
QUICK_WORLD = WorldConfig(rows=60_000, users=1_000, hosts=100, items=600)


def comparison_table(results: Dict[str, Dict[str, float]], schema, metric: str = "auc") -> str:
    """Markdown: one row per task x slice, the oracle's and each model's ``metric`` side by side."""
    models = list(results)
    slices = (
        ["all"]
        + [f"scenario={schema.scenario_name(i)}" for i in range(schema.num_scenarios)]
        + [f"{name}={v}" for name, values in schema.eval_groups for v in values]
    )
    lines = ["| task | slice | oracle | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for task in schema.task_names:
        for sl in slices:
            suffix = "" if sl == "all" else f"/{sl}"
            key = f"{task}/{metric}{suffix}"
            oracle = next(
                (
                    results[m][f"{task}/oracle_{metric}{suffix}"]
                    for m in models
                    if f"{task}/oracle_{metric}{suffix}" in results[m]
                ),
                None,
            )
            cells = [results[m].get(key) for m in models]
            if all(c is None for c in cells):
                continue
            fmt = lambda v: "" if v is None or v != v else f"{v:.4f}"  # noqa: E731
            lines.append(f"| {task} | {sl} | {fmt(oracle)} | " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines)


def run_demo(data_dir: str = "data/synthetic", run_root: str = "runs/demo", quick: bool = False) -> Dict:
    from recsys.train.trainer import Trainer

    world = QUICK_WORLD if quick else WorldConfig()
    if not os.path.exists(os.path.join(data_dir, "world.json")):
        log.info("generating the synthetic world (%d impressions) into %s", world.rows, data_dir)
        generate(world, data_dir, progress=True, overwrite=True)
    results, schema = {}, None
    for label, config, extra in DEMO_MODELS:
        run_dir = os.path.join(run_root, label.replace(" ", "_").replace("(", "").replace(")", ""))
        overrides = [f"data.path={os.path.abspath(data_dir)}", f"run_dir={run_dir}"] + list(extra)
        if quick:
            overrides += ["train.epochs=2"]
        cfg = load_config(os.path.join(REPO, config), overrides)
        log.info("training %s", label)
        trainer = Trainer(cfg, overwrite=True)  # the demo's runs are replaced on every demo
        result = trainer.fit()
        untrained = [t for t, w in cfg.train.task_weights.items() if w == 0]
        # an untrained head's metrics mean nothing: leave its cells empty
        results[label] = {k: v for k, v in result["test"].items() if k.split("/")[0] not in untrained}
        schema = trainer.schema
        log.info(
            "%s: test ctr AUC %.4f in %.0f s",
            label,
            result["test"].get("ctr/auc", float("nan")),
            result["train_seconds"],
        )
    table = comparison_table(results, schema)
    print("\nTest AUC per task and slice (cvr on clicked impressions; stay: long view > 60 s):\n")
    print(table)
    return results
