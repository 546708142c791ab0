"""Model quality: one runner for the models x datasets grid, with seeds, early stopping and paper-shaped tables.

    python -m benchmarks.quality --grid foundation [--datasets synthetic,movielens] [--seeds 3]
    python -m benchmarks.quality --quick            # every grid on a tiny world, 1 seed (CI smoke test)

Dataset profiles (``--datasets``, each with its training options, the same for every row): ``synthetic`` (the
embedded 500k-impression world), ``synthetic-2m`` (the same world sampled four times as densely),
``synthetic-slopes`` (the world with per-user slopes on position and host level), ``movielens``
(MovieLens-100K from ``$RECSYS_MOVIELENS`` or ../shared/data/ml-100k) and ``quick``.

A grid is a module ``benchmarks/grids/<name>.py`` defining ``TITLE`` and ``EXPERIMENTS`` (a list of
:class:`Experiment`), optionally ``METRICS`` (report keys to tabulate), ``render(results) -> str`` for a table
shaped like its paper's and ``PLOT_METRICS`` (the AUCs its plot shows, :class:`benchmarks.plots.Metric`; default:
each dataset's main AUC). An experiment may train one model per scenario (``per_scenario``, the ST baseline: the
report is computed on the scenarios' predictions together) and may run a first phase before training
(``prepare``, e.g. SSIM's search and export, which returns extra overrides for the training it precedes). Results
go to ``benchmarks/results/quality/<grid>.{json,md,png}`` (the PNG drawn by ``benchmarks/plots.py``): per
experiment and dataset, the mean and standard deviation over seeds of every test metric (per task, scenario and
group: AUC, logloss, GAUC, NDCG@k, oracle AUC on synthetic data), and the per-seed values.
"""

import argparse
import importlib
import json
import logging
import os
import pkgutil
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text

log = logging.getLogger("benchmarks.quality")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Experiment:
    """One row of a quality table.

    Args:
        name: the row label (e.g. "CBMR (EmbCB only)").
        model: registry name.
        params: ``model.params``.
        overrides: further ``key=value`` config overrides (training options).
        datasets: dataset profiles this row runs on.
        per_scenario: train one model per scenario on that scenario's rows only (``data.scenarios``) and
            evaluate their predictions together (ST).
        prepare: a first phase, called per dataset and seed before training with a :class:`PrepareContext`;
            returns extra ``key=value`` overrides for the training (and may record facts in ``ctx.info``).
    """

    name: str
    model: str
    params: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    datasets: Sequence[str] = ("synthetic", "movielens")
    per_scenario: bool = False
    prepare: Optional[Callable[["PrepareContext"], List[str]]] = None


@dataclass
class PrepareContext:
    """What an experiment's first phase gets.

    Args:
        dataset: the dataset profile name.
        seed: the seed of this run.
        data_path: the data root.
        run_root: a scratch folder that lives for the whole grid run (phases can cache results there).
        overrides: the dataset's and seed's overrides (data spec and path, training options, seed) to build
            configs from; the phase adds its own model and run folder.
        info: facts the phase wants recorded with the run's results.
    """

    dataset: str
    seed: int
    data_path: str
    run_root: str
    overrides: List[str]
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetProfile:
    """How a dataset is trained in the quality grid (same for every model, so rows compare)."""

    spec: str
    path: Optional[str]
    overrides: List[str]
    prepare: Optional[Callable[[str], None]] = None  # creates the data at ``path`` when missing


def _generate(world_kwargs: Dict[str, int]) -> Callable[[str], None]:
    def run(path: str) -> None:
        from recsys.data.synthetic import WorldConfig, generate

        if not os.path.exists(os.path.join(path, "world.json")):
            generate(WorldConfig(**world_kwargs), path, progress=False, overwrite=True)

    return run


COMMON = ["train.progress=false", "tensorboard=false", "train.early_stopping.patience=2", "model.embedding_dim=16"]
SYNTHETIC_OVERRIDES = COMMON + [
    "data.batch_size=2048",
    "train.epochs=20",
    "train.dense_optimizer.lr=0.001",
    "train.embedding_optimizer.lr=0.05",
    "train.early_stopping.metric=ctr/auc",
]
DATASETS: Dict[str, DatasetProfile] = {
    "synthetic": DatasetProfile(
        spec="configs/datasets/synthetic.yaml",
        path=os.path.join(REPO, "data", "synthetic"),
        overrides=SYNTHETIC_OVERRIDES,
        prepare=_generate({}),
    ),
    # the same world sampled four times as densely (2M impressions over the same users, hosts and 30 days): does a
    # model's lead over another survive, grow or vanish with more data per id?
    "synthetic-2m": DatasetProfile(
        spec="configs/datasets/synthetic.yaml",
        path=os.path.join(REPO, "data", "synthetic-2m"),
        overrides=SYNTHETIC_OVERRIDES,
        prepare=_generate({"rows": 2_000_000}),
    ),
    # the world with per-user slopes on position and host level (WorldConfig.personal_slopes): the case
    # sample-adaptive models are built for
    "synthetic-slopes": DatasetProfile(
        spec="configs/datasets/synthetic.yaml",
        path=os.path.join(REPO, "data", "synthetic-slopes"),
        overrides=SYNTHETIC_OVERRIDES,
        prepare=_generate({"personal_slopes": 0.5}),
    ),
    "movielens": DatasetProfile(
        spec="configs/datasets/movielens-100k.yaml",
        path=os.environ.get("RECSYS_MOVIELENS", os.path.join(REPO, "..", "shared", "data", "ml-100k")),
        overrides=COMMON
        + [
            "data.batch_size=1024",
            "train.epochs=20",
            "train.dense_optimizer.lr=0.001",
            "train.embedding_optimizer.lr=0.05",
            "train.early_stopping.metric=like/auc",
        ],
    ),
    "quick": DatasetProfile(
        spec="configs/datasets/synthetic.yaml",
        path=None,  # a temporary tiny world
        overrides=COMMON + ["data.batch_size=256", "train.epochs=1", "train.max_steps=6", "model.embedding_dim=8"],
        prepare=_generate({"rows": 4000, "users": 200, "hosts": 30, "items": 90, "rows_per_file": 4000}),
    ),
}


def grids() -> Dict[str, Any]:
    """Every grid module in benchmarks/grids, by name."""
    import benchmarks.grids as pkg

    return {m.name: importlib.import_module(f"benchmarks.grids.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)}


def dataset_overrides(dataset: str, seed: int, data_path: str) -> List[str]:
    """Overrides every experiment of ``dataset`` shares at ``seed``: data spec and path, training options."""
    profile = DATASETS[dataset]
    return [
        f"data.spec={os.path.join(REPO, profile.spec)}",
        f"data.path={data_path}",
        f"train.seed={seed}",
    ] + profile.overrides


def run_one(
    exp: Experiment, dataset: str, seed: int, data_path: str, run_root: str, epochs: Optional[int] = None
) -> Dict[str, Any]:
    """Train and test one experiment at one seed; ``epochs`` caps the profile's epoch budget."""
    from recsys.config import load_config
    from recsys.train.trainer import Trainer

    start = time.perf_counter()
    base = dataset_overrides(dataset, seed, data_path) + ([] if epochs is None else [f"train.epochs={epochs}"])
    info: Dict[str, Any] = {}
    extra: List[str] = []
    if exp.prepare is not None:
        extra = list(exp.prepare(PrepareContext(dataset, seed, data_path, run_root, list(base), info)))
    run_dir = os.path.join(run_root, f"{exp.model}-{abs(hash(exp.name)) % 10**8}-{dataset}-s{seed}")
    params = "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in exp.params.items()) + "}"
    overrides = base + [f"model.name={exp.model}", f"model.params={params}"] + list(exp.overrides) + extra
    if exp.per_scenario:
        result = _per_scenario(overrides, run_dir)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        result = Trainer(load_config(None, overrides + [f"run_dir={run_dir}"])).fit()
        shutil.rmtree(run_dir, ignore_errors=True)
    out = {
        "test": result["test"],
        "valid": result["valid"],
        "best_step": result["best_step"],
        "seconds": time.perf_counter() - start,
        "samples_per_sec": result["train_samples_per_sec"],
    }
    if info:
        out["info"] = info
    return out


def _per_scenario(overrides: List[str], run_dir: str) -> Dict[str, Any]:
    """One model per scenario, each trained and early-stopped on its own rows; the reports are computed on all
    scenarios' predictions together."""
    from recsys.config import load_config
    from recsys.train.metrics import Predictions, evaluate
    from recsys.train.trainer import Trainer

    preds: Dict[str, List[Any]] = {"valid": [], "test": []}
    steps, speeds = [], []
    scenario, count, schema = 0, 1, None
    while scenario < count:
        folder = f"{run_dir}-scenario{scenario}"
        shutil.rmtree(folder, ignore_errors=True)
        trainer = Trainer(load_config(None, overrides + [f"data.scenarios=[{scenario}]", f"run_dir={folder}"]))
        result = trainer.fit()
        schema, count = trainer.schema, trainer.schema.num_scenarios
        for split in preds:
            preds[split].append(trainer.predictions(split))
        steps.append(result["best_step"])
        speeds.append(result["train_samples_per_sec"])
        shutil.rmtree(folder, ignore_errors=True)
        scenario += 1
    assert schema is not None
    return {split: evaluate(schema, Predictions.concat(p)) for split, p in preds.items()} | {
        "best_step": steps,
        "train_samples_per_sec": float(np.mean(speeds)),
    }


def _yaml(v: Any) -> str:
    import yaml

    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def aggregate(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    keys = sorted(set().union(*(r["test"].keys() for r in runs)))
    out = {}
    for k in keys:
        values = np.array([r["test"].get(k, np.nan) for r in runs], dtype=float)
        out[k] = {
            "mean": float(np.nanmean(values)) if np.isfinite(values).any() else float("nan"),
            "std": float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0,
        }
    return out


def default_table(title: str, results: Dict[str, Dict[str, Any]], metrics: Sequence[str]) -> str:
    """Markdown: one row per experiment, one column per dataset x metric, mean ± std."""
    lines = [f"### {title}", ""]
    datasets = sorted({d for r in results.values() for d in r})
    cols = [
        (d, m) for d in datasets for m in metrics if any(m in results[e].get(d, {}).get("metrics", {}) for e in results)
    ]
    lines.append("| model | " + " | ".join(f"{d}: {m}" for d, m in cols) + " |")
    lines.append("|---|" + "---|" * len(cols))
    for name, per_ds in results.items():
        cells = []
        for d, m in cols:
            v = per_ds.get(d, {}).get("metrics", {}).get(m)
            cells.append("" if v is None or v["mean"] != v["mean"] else f"{v['mean']:.4f} ± {v['std']:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TASK_LABELS = {"ctr": "CTR", "cvr": "CVR", "stay": "stay time", "like": "like"}


def plot_panels(module: Any, results: Dict[str, Dict[str, Any]]) -> List[Any]:
    """What a grid's plot shows: per dataset profile (in ``DATASETS`` order), the grid's ``PLOT_METRICS`` (a
    list of :class:`benchmarks.plots.Metric`) or else the dataset's main AUC beside the oracle's; metrics no
    experiment reports are left out."""
    from benchmarks.plots import Metric, Panel

    present = list(dict.fromkeys(d for per in results.values() for d in per))
    datasets = [d for d in DATASETS if d in present] + [d for d in present if d not in DATASETS]
    panels = []
    for d in datasets:
        task = metric_for(d, "auc").split("/")[0]
        default = Metric(metric_for(d, "auc"), f"{TASK_LABELS.get(task, task)} AUC", metric_for(d, "oracle_auc"))
        for metric in getattr(module, "PLOT_METRICS", None) or [default]:
            if any(metric.key in per.get(d, {}).get("metrics", {}) for per in results.values()):
                panels.append(Panel(d, metric))
    return panels


def epoch_budget(panels: Sequence[Any], epochs: Optional[int]) -> str:
    """The training budget of a grid run in words: the ``--epochs`` cap, else the profiles' epoch budget."""
    if epochs is not None:
        return f"at most {epochs} epochs"
    caps = sorted(
        {
            int(o.split("=", 1)[1])
            for p in panels
            for o in DATASETS[p.dataset].overrides
            if o.startswith("train.epochs=")
        }
        if all(p.dataset in DATASETS for p in panels)
        else []
    )
    return f"full budget (up to {caps[0]} epochs)" if len(caps) == 1 else "full budget"


def figure(module: Any, result: Dict[str, Any]) -> Any:
    """The grid's figure from its JSON result (``benchmarks/plots.py`` draws every benchmark plot)."""
    from benchmarks.plots import quality_figure

    panels = plot_panels(module, result["results"])
    return quality_figure(result, panels, epoch_budget(panels, result.get("epochs")))


def plot(path: str, module: Any, result: Dict[str, Any]) -> None:
    """Write the grid's PNG."""
    from benchmarks.plots import save

    save(figure(module, result), path)


def metric_for(dataset: str, metric: str) -> str:
    """``auc`` of the dataset's main task (ctr on synthetic, like on MovieLens) unless a full key is given."""
    if "/" in metric:
        return metric
    return f"{'like' if dataset == 'movielens' else 'ctr'}/{metric}"


def keep_earlier_cells(
    previous: str, results: Dict[str, Dict[str, Any]], ran: Callable[[str, str], bool], experiments: Sequence[str]
) -> Dict[str, List[Tuple[str, Optional[int]]]]:
    """Carry over from the grid's previous results file the cells this run did not ask for (``ran(exp, dataset)``
    is False), so that a grid can be filled one dataset or one row at a time; cells of experiments no longer in
    the grid are dropped. Returns ``{dataset: [(command, epochs), ...]}`` of the kept cells."""
    if not os.path.exists(previous):
        return {}
    with open(previous) as f:
        saved = json.load(f)
    kept: Dict[str, List[Tuple[str, Optional[int]]]] = {}
    for exp_name, per in saved.get("results", {}).items():
        if exp_name not in experiments:
            continue
        for dataset, cell in per.items():
            if ran(exp_name, dataset) or dataset in results.get(exp_name, {}):
                continue
            cell.setdefault("epochs", saved.get("epochs"))
            cell.setdefault("command", saved.get("environment", {}).get("command", "unknown"))
            results.setdefault(exp_name, {})[dataset] = cell
            origin = (cell["command"], cell["epochs"])
            if origin not in kept.setdefault(dataset, []):
                kept[dataset].append(origin)
    # the grid's row order, whatever order the cells were filled in
    order = {name: k for k, name in enumerate(experiments)}
    reordered = dict(sorted(results.items(), key=lambda item: order.get(item[0], len(order))))
    results.clear()
    results.update(reordered)
    return kept


def run_grid(
    name: str,
    module: Any,
    datasets: Sequence[str],
    seeds: int,
    quick: bool,
    out_dir: str,
    epochs: Optional[int] = None,
    only: Optional[Sequence[str]] = None,
) -> Dict:
    """Run every experiment of a grid; finished (experiment, dataset) cells are kept in
    ``<out_dir>/<name>.partial.json`` as they complete, so an interrupted run resumes where it stopped (the
    cells are reused only when seeds and epochs match). ``only`` restricts the run to some experiments (by name);
    cells of the grid's results file that this run does not redo are kept."""
    names = [exp.name for exp in module.EXPERIMENTS]
    unknown = [n for n in (only or []) if n not in names]
    if unknown:
        raise ValueError(f"grid {name}: unknown experiment(s) {unknown}; available: {names}")
    selected = [exp for exp in module.EXPERIMENTS if not only or exp.name in only]
    results: Dict[str, Dict[str, Any]] = {}
    settings = {"seeds": seeds, "epochs": epochs}
    # one partial file per selection, so that runs filling different cells of a grid can go side by side
    selection = "-".join(sorted(datasets)) + ("" if not only else "-" + "-".join(sorted(only)))
    partial = os.path.join(out_dir, f"{name}.{''.join(c if c.isalnum() else '_' for c in selection)}.partial.json")
    done: Dict[str, Dict[str, Any]] = {}
    if not quick and os.path.exists(partial):
        with open(partial) as f:
            saved = json.load(f)
        if saved.get("settings") == settings:
            done = saved["results"]
            log.info("[%s] resuming: %d finished cells in %s", name, sum(len(v) for v in done.values()), partial)
    tmp = tempfile.mkdtemp(prefix="recsys-quality-")
    try:
        for exp in selected:
            for d in ["quick"] if quick else [d for d in exp.datasets if d in datasets]:
                if d in done.get(exp.name, {}):
                    results.setdefault(exp.name, {})[d] = done[exp.name][d]
                    continue
                profile = DATASETS[d]
                path = profile.path or os.path.join(tmp, "world")
                if profile.prepare is not None:
                    profile.prepare(path)
                if not os.path.exists(path):
                    log.warning("%s: skipped dataset %s (no data at %s)", exp.name, d, path)
                    continue
                runs = []
                for seed in range(seeds):
                    log.info("[%s] %s on %s, seed %d", name, exp.name, d, seed)
                    runs.append(run_one(exp, d, seed, path, tmp, epochs))
                results.setdefault(exp.name, {})[d] = {
                    "model": exp.model,
                    "params": exp.params,
                    "overrides": exp.overrides,
                    "per_scenario": exp.per_scenario,
                    "metrics": aggregate(runs),
                    "runs": runs,
                }
                if not quick:
                    write_json(partial, {"settings": settings, "results": results})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    env = environment()
    for per in results.values():
        for cell in per.values():
            cell.setdefault("epochs", epochs)
            cell.setdefault("command", env["command"])
    ran = lambda exp_name, dataset: dataset in datasets and (not only or exp_name in only)  # noqa: E731
    kept = {} if quick else keep_earlier_cells(os.path.join(out_dir, f"{name}.json"), results, ran, names)
    metrics = getattr(module, "METRICS", ["auc", "oracle_auc", "gauc", "logloss"])
    keys = list(dict.fromkeys(metric_for(d, m) for d in ("synthetic", "movielens", "quick") for m in metrics))
    table = module.render(results) if hasattr(module, "render") else default_table(module.TITLE, results, keys)
    budget = "" if epochs is None else f" Every run trains at most {epochs} epochs (early stopping on validation)."
    earlier = "".join(
        f"\n\nKept from an earlier run ({d}): command `{c}`; "
        f"{'the profile epoch budget' if e is None else f'at most {e} epochs'}."
        for d, origins in sorted(kept.items())
        for c, e in origins
    )
    md = (
        f"## {module.TITLE}\n\n{environment_markdown(env)}\nSeeds: {seeds}; mean ± std over seeds of test metrics."
        f"{budget}{earlier}\n\n{table}\n"
    )
    if not quick:
        saved = {
            "grid": name,
            "title": module.TITLE,
            "environment": env,
            "seeds": seeds,
            "epochs": epochs,
            "results": results,
        }
        write_json(os.path.join(out_dir, f"{name}.json"), saved)
        write_text(os.path.join(out_dir, f"{name}.md"), md)
        plot(os.path.join(out_dir, f"{name}.png"), module, saved)
        if os.path.exists(partial):
            os.remove(partial)
    print(md)
    return results


def only_names(values: Sequence[str], names: Sequence[str]) -> List[str]:
    """The experiments ``--only`` names: each value is one experiment's name, or a comma-separated list."""
    out: List[str] = []
    for value in values:
        out += [value] if value in names else [v.strip() for v in value.split(",")]
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.splitlines()[0])
    p.add_argument("--grid", default="all", help="comma-separated grid names (default: all)")
    p.add_argument("--datasets", default="synthetic,movielens")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny world, 1 seed, few steps: checks the runner works")
    p.add_argument("--out", default=os.path.join(RESULTS, "quality"))
    p.add_argument(
        "--epochs", type=int, default=None, help="cap every run at this many epochs (default: the dataset profile's)"
    )
    p.add_argument(
        "--only",
        action="append",
        default=None,
        help="experiment names to (re)run, comma-separated or one per --only (a name with a comma in it: one "
        "--only each); the grid's other cells are kept",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from recsys.console import setup_logging

    setup_logging()
    available = grids()
    names = sorted(available) if args.grid == "all" else args.grid.split(",")
    unknown = [n for n in names if n not in available]
    if unknown:
        print(f"error: unknown grid(s) {unknown}; available: {sorted(available)}", file=sys.stderr)
        return 2
    for name in names:
        run_grid(
            name,
            available[name],
            args.datasets.split(","),
            1 if args.quick else args.seeds,
            args.quick,
            args.out,
            args.epochs,
            only_names(args.only, [exp.name for exp in available[name].EXPERIMENTS]) if args.only else None,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
