"""SSIM's phases: search the shared-instance set with a backbone, export it, retrain any multi-scenario model.

    recsys ssim search  -c CONFIG                 train ``ssim_search`` (a multi-scenario config is wrapped with
                                                  the default SSIM options), then score every training row:
                                                  RUN/ssim_scores.parquet (row_id, scenario, score, mask)
    recsys ssim export  --scores S --out F --ratio 0.3|learned
                                                  write the set: row_id, scenario, score, shared (Parquet)
    recsys ssim export  --scores S --out F --ratio auto -c RETRAIN_CONFIG [--ratios 0.1,0.3,learned]
                                                  retrain once per candidate ratio, keep the best validation AUC
    recsys ssim retrain -c CONFIG --shared F      a fresh multi-scenario model trained with the saved set

The set is model-free: the flags reach every split's batches by row id (``data.side_columns``), so the
retrained model may differ from the searched backbone (STAR, HMoE, another backbone).

Shared ratio: ``learned`` keeps the selection network's own hard mask (``p > eps``); a number r keeps, within
each scenario, the fraction r of training instances with the highest selection score (so every scenario
contributes the same share and the ratio is comparable across datasets).
"""

import copy
import json
import logging
import math
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.distributed as dist

from recsys.config import Config, ModelConfig, SideColumnsConfig, from_dict
from recsys.errors import ConfigError, RecsysError
from recsys.io import write_parquet_atomic
from recsys.models.ssim import SSIMConfig, SSIMSearch, SSIMSearchConfig
from recsys.train.metrics import default_metric, format_table
from recsys.train.trainer import Trainer

log = logging.getLogger("recsys.ssim")

SCORES_FILE = "ssim_scores.parquet"
SHARED_COLUMN = "shared"
Ratio = Union[float, str]


# --- configs -------------------------------------------------------------------------------------------------
def search_config(cfg: Config) -> Config:
    """``cfg`` with its model wrapped in ``ssim_search`` (default SSIM options) unless it already is one."""
    out = copy.deepcopy(cfg)
    if cfg.model.name != "ssim_search":
        if cfg.model.name == "ssim":
            raise ConfigError("model.name: 'ssim' retrains with a saved set; search with its backbone instead")
        out.model = ModelConfig(
            name="ssim_search",
            embedding_dim=cfg.model.embedding_dim,
            params={"backbone": cfg.model.name, "backbone_params": dict(cfg.model.params)},
        )
    return out


def retrain_config(cfg: Config, shared_path: str, column: str = SHARED_COLUMN) -> Config:
    """``cfg`` retraining its multi-scenario model with the shared set at ``shared_path``.

    The model may be a multi-scenario backbone, ``ssim`` (its backbone), or ``ssim_search`` (its backbone, trained
    from scratch without the selection network); the set joins the data by row id as side column ``column``."""
    out = copy.deepcopy(cfg)
    name, params = cfg.model.name, dict(cfg.model.params)
    if name == "ssim_search":
        searched = from_dict(SSIMSearchConfig, params, where="model.params")
        name, params = searched.backbone, dict(searched.backbone_params)
    elif name == "ssim":
        retrained = from_dict(SSIMConfig, params, where="model.params")
        name, params = retrained.backbone, dict(retrained.backbone_params)
    out.model = ModelConfig(
        name="ssim",
        embedding_dim=cfg.model.embedding_dim,
        params={"backbone": name, "backbone_params": params, "shared_column": column},
    )
    side = [s for s in out.data.side_columns if column not in s.columns]
    out.data.side_columns = side + [SideColumnsConfig(path=os.path.abspath(shared_path), columns=[column])]
    return out


# --- search --------------------------------------------------------------------------------------------------
def score_instances(trainer: Trainer, split: str = "train") -> Optional[pa.Table]:
    """Selection probability and hard mask of every row of ``split`` (rank 0 gets the table, others None).

    Columns: row_id, scenario, score (p, the own-scenario head at the current temperature), logit (m, which ranks
    instances also where p saturates), mask (p > eps)."""
    model = trainer.model
    if not isinstance(model, SSIMSearch):
        raise ConfigError(f"model '{trainer.cfg.model.name}' has no selection network (use ssim_search)")
    parts: List[Dict[str, np.ndarray]] = []
    for batch, _ in trainer.scan(split):
        m, p, g = model.selection_scores(batch)
        keep = (batch.row_id >= 0) & (batch.weights > 0)
        parts.append(
            {
                "row_id": batch.row_id[keep].cpu().numpy(),
                "scenario": batch.scenario[keep].cpu().numpy(),
                "score": p[keep].float().cpu().numpy(),
                "logit": m[keep].float().cpu().numpy(),
                "mask": g[keep].cpu().numpy() > 0.5,
            }
        )
    mine = {
        k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
        for k in ("row_id", "scenario", "score", "logit", "mask")
    }
    if dist.is_initialized() and dist.get_world_size() > 1:
        everyone: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        mine = {k: np.concatenate([e[k] for e in everyone]) for k in mine}
    if not trainer.is_main:
        return None
    return pa.table(
        {
            "row_id": mine["row_id"].astype(np.int64),
            "scenario": mine["scenario"].astype(np.int64),
            "score": mine["score"].astype(np.float32),
            "logit": mine["logit"].astype(np.float32),
            "mask": mine["mask"].astype(bool),
        }
    )


def run_search(cfg: Config) -> Dict[str, Any]:
    """Train ``ssim_search`` (early stopping on validation, best checkpoint restored), score the training rows and
    write ``run_dir/ssim_scores.parquet``. Returns the trainer's result plus ``scores`` and ``learned_ratio``."""
    trainer = Trainer(search_config(cfg))
    result = trainer.fit()
    table = score_instances(trainer, "train")
    path = os.path.join(cfg.run_dir, SCORES_FILE)
    if table is not None:
        write_parquet_atomic(path, table)
        result["learned_ratio"] = float(np.mean(table.column("mask").to_numpy(zero_copy_only=False)))
        log.info(
            "ssim search: %d training instances scored, %.1f%% shared by the learned mask -> %s",
            table.num_rows,
            100 * result["learned_ratio"],
            path,
        )
    result["scores"] = path
    result["trainer"] = trainer
    return result


# --- export --------------------------------------------------------------------------------------------------
def parse_ratio(value: Ratio) -> Ratio:
    """``learned`` or a fraction in [0, 1]."""
    if isinstance(value, str) and value == "learned":
        return value
    try:
        r = float(value)
    except ValueError:
        raise ConfigError(f"--ratio: expected 'learned' or a fraction in [0, 1], got {value!r}") from None
    if not 0.0 <= r <= 1.0:
        raise ConfigError(f"--ratio: a fraction must be in [0, 1], got {r}")
    return r


def shared_flags(scores: pa.Table, ratio: Ratio) -> np.ndarray:
    """Which scored instances are shared: the learned mask, or the top ``ratio`` by selection logit (the score's
    order without its saturation; the score where a file has no logit) within each scenario, ties broken by row
    id, so the set is deterministic."""
    ratio = parse_ratio(ratio)
    if ratio == "learned":
        return scores.column("mask").to_numpy(zero_copy_only=False).astype(bool)
    scenario = scores.column("scenario").to_numpy()
    score = scores.column("logit" if "logit" in scores.column_names else "score").to_numpy()
    row_id = scores.column("row_id").to_numpy()
    flags = np.zeros(len(score), dtype=bool)
    for s in np.unique(scenario):
        idx = np.flatnonzero(scenario == s)
        k = int(math.floor(float(ratio) * len(idx) + 0.5))
        order = np.lexsort((row_id[idx], -score[idx]))  # highest score first, then smallest row id
        flags[idx[order[:k]]] = True
    return flags


def export_shared(scores_path: str, out_path: str, ratio: Ratio) -> Dict[str, Any]:
    """Write the shared-instance set (row_id, scenario, score, shared) to ``out_path`` (Parquet, written under a
    temporary name and renamed); the ratio and the realised shared fraction go into the file's metadata."""
    if not os.path.isfile(scores_path):
        raise RecsysError(f"{scores_path}: no such scores file (run `recsys ssim search` first)")
    scores = pq.read_table(scores_path)
    missing = {"row_id", "scenario", "score", "mask"} - set(scores.column_names)
    if missing:
        raise RecsysError(f"{scores_path}: not an SSIM scores file (missing {sorted(missing)})")
    flags = shared_flags(scores, ratio)
    table = pa.table(
        {
            "row_id": scores.column("row_id"),
            "scenario": scores.column("scenario"),
            "score": scores.column("score"),
            SHARED_COLUMN: pa.array(flags),
        }
    )
    scenario = scores.column("scenario").to_numpy()
    per_scenario = {int(s): float(flags[scenario == s].mean()) for s in np.unique(scenario)}
    info = {
        "ratio": ratio if ratio == "learned" else float(ratio),
        "shared_fraction": float(flags.mean()),
        "shared_fraction_per_scenario": per_scenario,
        "rows": int(len(flags)),
        "scores": scores_path,
    }
    table = table.replace_schema_metadata({b"ssim": json.dumps(info).encode()})
    write_parquet_atomic(out_path, table)
    return info


def read_export_info(path: str) -> Dict[str, Any]:
    """The metadata ``export_shared`` stored in a shared-instance file."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(b"ssim", b"{}"))


def choose_ratio(scores_path: str, out_path: str, retrain_cfg: Config, ratios: Sequence[Ratio]) -> Dict[str, Any]:
    """Export the set for each candidate ratio, retrain ``retrain_cfg``'s model with it, and keep the ratio with
    the best validation metric (the early-stopping metric, default the first task's AUC). Writes the chosen set
    to ``out_path`` and the comparison to ``<out_path>.ratios.json``; returns it."""
    if not ratios:
        raise ConfigError("--ratios: give at least one candidate")
    metric = retrain_cfg.train.early_stopping.metric
    rows = []
    for ratio in ratios:
        ratio = parse_ratio(ratio)
        candidate = f"{out_path}.ratio-{ratio}.parquet"
        info = export_shared(scores_path, candidate, ratio)
        cfg = retrain_config(retrain_cfg, candidate)
        cfg.run_dir = os.path.join(retrain_cfg.run_dir, f"ratio-{ratio}")
        trainer = Trainer(cfg)
        if metric == "auto":
            metric = default_metric(trainer.schema)[0]
        result = trainer.fit()
        value = float(result["valid"][metric])
        rows.append(
            {
                "ratio": info["ratio"],
                "shared_fraction": info["shared_fraction"],
                f"valid {metric}": value,
                "file": candidate,
                "run_dir": cfg.run_dir,
            }
        )
        log.info("ssim ratio %s (shared %.1f%%): valid %s = %.5f", ratio, 100 * info["shared_fraction"], metric, value)
    best = max(rows, key=lambda r: r[f"valid {metric}"])
    shutil.copyfile(best["file"], out_path + ".tmp")
    os.replace(out_path + ".tmp", out_path)
    summary = {"metric": f"valid {metric}", "chosen_ratio": best["ratio"], "candidates": rows}
    with open(out_path + ".ratios.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


# --- retrain -------------------------------------------------------------------------------------------------
def run_retrain(cfg: Config, shared_path: str) -> Dict[str, Any]:
    """Train a fresh multi-scenario model with the saved set (see :func:`retrain_config`)."""
    if not os.path.isfile(shared_path):
        raise RecsysError(f"{shared_path}: no such shared-instance file (run `recsys ssim export` first)")
    trainer = Trainer(retrain_config(cfg, shared_path))
    result = trainer.fit()
    result["trainer"] = trainer
    return result


def report(result: Dict[str, Any], title: str) -> str:
    trainer = result["trainer"]
    split = "test" if result["test"] else "valid"
    return format_table(trainer.schema, result[split], title=f"{title}: {split}")
