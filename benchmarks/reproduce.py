"""Rerun committed quality cells at one seed and compare every test metric with the committed run.

A refactor that claims "behaviour unchanged" is held to this: the same config, seed and data give the same
numbers on the same CPU stack, to the digits in ``benchmarks/results/quality/<grid>.json``. Differences are
reported per metric (the largest absolute one first), not hidden in a mean.

Usage::

    python -m benchmarks.reproduce                                   # one cell per model family (default set)
    python -m benchmarks.reproduce --cells "foundation/Wide&Deep/movielens" --seed 1

Results: ``benchmarks/results/quality/reproduce.{json,md}``.
"""

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Sequence, Tuple

import torch

from benchmarks.common import RESULTS, environment, environment_markdown, write_json, write_text
from benchmarks.quality import DATASETS, grids, run_one
from recsys.console import setup_logging
from recsys.errors import ConfigError

log = logging.getLogger("recsys.reproduce")  # shown by recsys.console.setup_logging

# one cell per model family, on MovieLens where the grid has it (seconds per run there, not minutes). The
# foundation grid is not among them: it was run before the plan-independent table initialisation (1ce89fb)
# changed every model's initial tables on purpose.
DEFAULT_CELLS = [
    "cbmr/Wide&Deep/movielens",  # wide & deep, the baseline
    "cbmr/CBMR (EmbCB + MlpCB)/movielens",  # calibration blocks
    "cbmr/PEPNet/movielens",  # gates (EPNet / PPNet)
    "ssim/DeepFM ST/movielens",  # FM backbone, one model per scenario
    "ssim/DCN MT/movielens",  # cross network
    "ssim/STAR/movielens",  # multi-scenario: scenario-specific weights
    "ssim/HMoE/movielens",  # multi-scenario: label-space mixing
    "ssim/DFFM/movielens",  # multi-scenario: domain-facilitated interactions
    "ssim/DNN SSIM/movielens",  # instance selection workflow
    "cvr/ESMM/synthetic",  # funnel models
    "cvr/MMoE/synthetic",  # multi-task experts
]


def parse_cell(text: str) -> Tuple[str, str, str]:
    grid, rest = text.split("/", 1)
    experiment, dataset = rest.rsplit("/", 1)
    return grid, experiment, dataset


def compare(new: Dict[str, Any], old: Dict[str, Any]) -> List[Tuple[str, float, float, float]]:
    """(metric, committed, now, |difference|) for every numeric test metric both runs have, largest first."""
    rows = []
    for key, was in old.items():
        now = new.get(key)
        if isinstance(was, (int, float)) and isinstance(now, (int, float)):
            diff = 0.0 if (math.isnan(was) and math.isnan(now)) else abs(float(now) - float(was))
            rows.append((key, float(was), float(now), diff))
    return sorted(rows, key=lambda r: -r[3])


def reproduce(cells: Sequence[str], seed: int) -> Dict[str, Any]:
    available = grids()
    out: Dict[str, Any] = {"seed": seed, "cells": {}}
    tmp = tempfile.mkdtemp(prefix="recsys-reproduce-")
    for text in cells:
        grid, name, dataset = parse_cell(text)
        committed = os.path.join(RESULTS, "quality", f"{grid}.json")
        with open(committed) as f:
            saved = json.load(f)
        cell = saved["results"][name][dataset]
        exp = next(e for e in available[grid].EXPERIMENTS if e.name == name)
        epochs = cell.get("epochs", saved.get("epochs"))
        profile = DATASETS[dataset]
        path = profile.path
        if profile.prepare is not None:
            profile.prepare(path)
        if path is None or not os.path.exists(path):
            log.warning("%s: no data at %s, skipped", text, path)
            continue
        start = time.perf_counter()
        try:
            run = run_one(exp, dataset, seed, path, tmp, epochs)
        except ConfigError as e:  # a combination refused since the grid ran (e.g. a model requirement added)
            log.warning("%s: refused now: %s", text, e)
            out["cells"][text] = {"refused": str(e)}
            continue
        rows = compare(run["test"], cell["runs"][seed]["test"])
        largest = rows[0][3] if rows else float("nan")
        log.info(
            "%s seed %d: %d test metrics, largest difference %.3g (%.0f s)",
            text,
            seed,
            len(rows),
            largest,
            time.perf_counter() - start,
        )
        out["cells"][text] = {
            "epochs": epochs,
            "metrics": len(rows),
            "max_abs_diff": largest,
            "largest": rows[:3],
            "differences": rows,
            "best_step": (cell["runs"][seed]["best_step"], run["best_step"]),
            "committed_date": saved["environment"]["date"],
        }
    return out


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        "## Quality cells rerun against the committed numbers",
        "",
        environment_markdown(result["environment"]),
        "",
        f"Seed {result['seed']}; every numeric test metric of the committed run compared (overall, per scenario "
        "and per group).",
        "",
        "| cell | metrics | largest difference | where | best step (committed, now) |",
        "|---|---|---|---|---|",
    ]
    for text, c in result["cells"].items():
        if "refused" in c:
            lines.append(f"| {text} | - | refused now: {c['refused']} | - | - |")
            continue
        where = c["largest"][0][0] if c["largest"] and c["max_abs_diff"] > 0 else "-"
        lines.append(
            f"| {text} | {c['metrics']} | {c['max_abs_diff']:.3g} | {where} | "
            f"{c['best_step'][0]}, {c['best_step'][1]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(DEFAULT_CELLS), help="grid/experiment/dataset, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(RESULTS, "quality"))
    args = parser.parse_args(list(argv) or None)
    setup_logging()
    torch.set_num_threads(args.threads)
    result = reproduce([c for c in args.cells.split(",") if c], args.seed)
    result["environment"] = environment()
    write_json(os.path.join(args.out, "reproduce.json"), result)
    write_text(os.path.join(args.out, "reproduce.md"), markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
