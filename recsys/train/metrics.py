"""Evaluation: per task, per scenario and per evaluation group (e.g. lifecycle stage).

Metrics by task kind:
    binary: ``auc``, ``logloss``, ``gauc`` (impression-weighted mean of per-user AUC over users that have
        both classes), ``ndcg@k`` (per user, averaged over users with at least one positive; users without
        positives are skipped and counted in ``ndcg_skipped``), ``oracle_auc`` when the data carries true
        probabilities, ``pos_rate`` and ``calibration`` (mean prediction / mean label).
    a binary task with ``depends_on`` (CVR given click): the metrics above on rows whose parent label is
        positive (CVR on clicked impressions), plus ``ctcvr_auc`` on all rows with the score
        ``p(parent) * p(child)`` and the child's label (and ``oracle_ctcvr_auc``).
    regression: ``rmse`` and ``mae`` in the label's unit, ``auc`` against ``label > eval_threshold`` when
        the task has one, ``ndcg@k`` with the label as graded relevance; restricted to parent-positive rows
        when it ``depends_on`` a parent.

Keys are ``task/metric`` overall and ``task/metric/scenario=name`` or ``task/metric/stage=name`` per slice.
Sample weights only select rows (weight 0 rows such as padding are dropped); metrics are unweighted.
"""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.retrieval import RetrievalNormalizedDCG

from recsys.data.batch import Batch
from recsys.schema import Schema, Task
from recsys.train.losses import prediction_of

NDCG_KS = (1, 5)


@dataclass
class Predictions:
    """Rows scored during evaluation (padding removed); scores are in the label's space."""

    row_id: np.ndarray
    scenario: np.ndarray
    user: np.ndarray
    labels: Dict[str, np.ndarray]
    scores: Dict[str, np.ndarray]
    groups: Dict[str, np.ndarray] = field(default_factory=dict)
    oracle: Dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.row_id)

    def subset(self, keep: np.ndarray) -> "Predictions":
        return Predictions(
            self.row_id[keep], self.scenario[keep], self.user[keep],
            {k: v[keep] for k, v in self.labels.items()}, {k: v[keep] for k, v in self.scores.items()},
            {k: v[keep] for k, v in self.groups.items()}, {k: v[keep] for k, v in self.oracle.items()},
        )

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        def cat(get):
            return np.concatenate([get(p) for p in parts])

        first = parts[0]
        return Predictions(
            cat(lambda p: p.row_id), cat(lambda p: p.scenario), cat(lambda p: p.user),
            {k: cat(lambda p, k=k: p.labels[k]) for k in first.labels},
            {k: cat(lambda p, k=k: p.scores[k]) for k in first.scores},
            {k: cat(lambda p, k=k: p.groups[k]) for k in first.groups},
            {k: cat(lambda p, k=k: p.oracle[k]) for k in first.oracle},
        )


class PredictionCollector:
    """Accumulates model outputs over evaluation batches, dropping padding rows.

    Example::

        collector = PredictionCollector(schema)
        for batch in loader:
            collector.add(model(batch), batch)
        preds = collector.gather()      # all ranks' rows on every rank
    """

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._parts: List[Predictions] = []

    def add(self, outputs: Dict[str, torch.Tensor], batch: Batch) -> None:
        keep = (batch.row_id >= 0) & (batch.weights > 0)

        def np_(t: torch.Tensor) -> np.ndarray:
            return t[keep].detach().cpu().numpy()

        self._parts.append(Predictions(
            row_id=np_(batch.row_id),
            scenario=np_(batch.scenario),
            user=np_(batch.user),
            labels={t: np_(batch.labels[t]) for t in self.schema.task_names},
            scores={t.name: np_(prediction_of(t, outputs[t.name].float())) for t in self.schema.tasks},
            groups={k: np_(v) for k, v in batch.groups.items()},
            oracle={k: np_(v) for k, v in batch.oracle.items()},
        ))

    def local(self) -> Predictions:
        if not self._parts:
            raise ValueError("no evaluation rows")
        return Predictions.concat(self._parts)

    def gather(self) -> Predictions:
        """This rank's rows joined with every other rank's (all-gather of numpy arrays)."""
        mine = self.local() if self._parts else None
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            if mine is None:
                raise ValueError("no evaluation rows")
            return mine
        everyone: List[Optional[Predictions]] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        parts = [p for p in everyone if p is not None and len(p)]
        if not parts:
            raise ValueError("no evaluation rows on any rank")
        return Predictions.concat(parts)


# --- metric functions ----------------------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (ties count half); NaN when only one class is present.

    Scores are replaced by their dense ranks scaled into [0, 1] first: torchmetrics squashes scores outside
    [0, 1] with a float32 sigmoid, which would merge distinct large values (stay times in seconds) into ties.
    """
    labels = labels > 0.5
    if labels.all() or not labels.any():
        return float("nan")
    ranks = pd.Series(np.asarray(scores, np.float64)).rank(method="dense").to_numpy()
    return float(binary_auroc(torch.from_numpy(ranks / ranks.max()), torch.from_numpy(labels)))


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    if len(labels) == 0:
        return float("nan")
    p = torch.from_numpy(np.clip(np.asarray(probs, np.float64), eps, 1 - eps))
    return float(torch.nn.functional.binary_cross_entropy(p, torch.from_numpy(labels.astype(np.float64))))


def grouped_auc(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
    """GAUC: the impression-weighted mean of per-group AUC over groups having both classes.

    Per-group AUC comes from tie-averaged ranks within each group (Mann-Whitney U), fully vectorised.
    Returns (gauc, number of groups used).
    """
    labels = labels > 0.5
    frame = pd.DataFrame({"g": groups, "s": scores, "y": labels})
    ranks = frame.groupby("g", sort=False)["s"].rank(method="average").to_numpy()
    codes, uniques = pd.factorize(frame["g"], sort=False)
    n = np.bincount(codes, minlength=len(uniques)).astype(np.float64)
    pos = np.bincount(codes, weights=labels.astype(np.float64), minlength=len(uniques))
    neg = n - pos
    pos_rank_sum = np.bincount(codes, weights=ranks * labels, minlength=len(uniques))
    valid = (pos > 0) & (neg > 0)
    if not valid.any():
        return float("nan"), 0
    group_auc = (pos_rank_sum[valid] - pos[valid] * (pos[valid] + 1) / 2) / (pos[valid] * neg[valid])
    return float(np.average(group_auc, weights=n[valid])), int(valid.sum())


def grouped_ndcg(groups: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int) -> Tuple[float, int]:
    """NDCG@k per group (torchmetrics), averaged over groups with a positive relevance.

    Groups whose relevance is all zero have no ideal ranking; they are skipped explicitly and counted.
    Returns (ndcg, number of groups skipped).
    """
    if len(groups) == 0:
        return float("nan"), 0
    codes, uniques = pd.factorize(groups, sort=False)
    has_pos = np.bincount(codes, weights=(relevance > 0).astype(np.float64), minlength=len(uniques)) > 0
    if not has_pos.any():
        return float("nan"), int(len(uniques))
    keep = has_pos[codes]
    metric = RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")
    metric.update(
        torch.from_numpy(np.asarray(scores[keep], np.float64)),
        torch.from_numpy(np.asarray(relevance[keep], np.float64)),
        indexes=torch.from_numpy(codes[keep].astype(np.int64)),
    )
    return float(metric.compute()), int((~has_pos).sum())


# --- reports -------------------------------------------------------------------------------------------------
def _task_metrics(schema: Schema, task: Task, p: Predictions, with_user: bool) -> Dict[str, float]:
    out: Dict[str, float] = {}
    rows = np.ones(len(p), dtype=bool)
    if task.depends_on is not None:
        rows = p.labels[task.depends_on] > 0.5
    y, s = p.labels[task.name][rows], p.scores[task.name][rows]
    out["count"] = float(rows.sum())
    if task.kind == "binary":
        out["auc"] = auc(s, y)
        out["logloss"] = logloss(s, y)
        out["pos_rate"] = float(y.mean()) if len(y) else float("nan")
        out["calibration"] = float(s.mean() / y.mean()) if len(y) and y.mean() > 0 else float("nan")
        if task.name in p.oracle:
            out["oracle_auc"] = auc(p.oracle[task.name][rows], y)
        if task.depends_on is not None:
            parent = task.depends_on
            joint = p.scores[parent] * p.scores[task.name]
            out["ctcvr_auc"] = auc(joint, p.labels[task.name])
            if parent in p.oracle and task.name in p.oracle:
                out["oracle_ctcvr_auc"] = auc(p.oracle[parent] * p.oracle[task.name], p.labels[task.name])
        relevance = y
    else:
        err = s - y
        out["rmse"] = float(np.sqrt(np.mean(err**2))) if len(y) else float("nan")
        out["mae"] = float(np.mean(np.abs(err))) if len(y) else float("nan")
        if task.eval_threshold is not None:
            out["auc"] = auc(s, (y > task.eval_threshold).astype(np.float64))
        relevance = y
    if with_user and len(y):
        users = p.user[rows]
        if task.kind == "binary":
            out["gauc"], out["gauc_users"] = grouped_auc(users, s, y)
        for k in NDCG_KS:
            out[f"ndcg@{k}"], skipped = grouped_ndcg(users, s, relevance, k)
        out["ndcg_skipped"] = float(skipped)
    return out


def evaluate(schema: Schema, preds: Predictions) -> Dict[str, float]:
    """Every metric for every task, overall and per scenario / evaluation group (see module docstring)."""
    with_user = schema.user_feature is not None and bool((preds.user >= 0).any())
    slices: List[Tuple[str, np.ndarray]] = [("", np.ones(len(preds), dtype=bool))]
    if schema.num_scenarios > 1:
        slices += [(f"scenario={schema.scenario_name(i)}", preds.scenario == i) for i in range(schema.num_scenarios)]
    for name, values in schema.eval_groups:
        if name in preds.groups:
            slices += [(f"{name}={v}", preds.groups[name] == i) for i, v in enumerate(values)]
    report: Dict[str, float] = {"rows": float(len(preds))}
    for suffix, keep in slices:
        if not keep.any():
            continue
        part = preds if suffix == "" else preds.subset(keep)
        for task in schema.tasks:
            for metric, value in _task_metrics(schema, task, part, with_user).items():
                report[f"{task.name}/{metric}" + (f"/{suffix}" if suffix else "")] = value
    return report


def default_metric(schema: Schema) -> Tuple[str, str]:
    """The early-stopping metric when the config says ``auto``: the first task's AUC (or RMSE)."""
    first = schema.tasks[0]
    if first.kind == "binary" or first.eval_threshold is not None:
        return f"{first.name}/auc", "max"
    return f"{first.name}/rmse", "min"


def undefined_metric(metric: str, tasks: Sequence[Task], has_user: bool, oracle: Iterable[str]) -> Optional[str]:
    """Why report key ``metric`` (``task/name`` or ``task/name/slice``) can never have a value for data with
    these tasks, a user feature or not, and oracle columns for the tasks in ``oracle``; None when it can."""
    parts = metric.split("/")
    by_name = {t.name: t for t in tasks}
    if len(parts) not in (2, 3) or parts[0] not in by_name:
        return f"does not start with a task name ({', '.join(by_name)}) followed by a metric such as '/auc'"
    task, name = by_name[parts[0]], parts[1]
    thresholded = task.kind == "binary" or task.eval_threshold is not None
    per_user = {f"ndcg@{k}" for k in NDCG_KS} | {"gauc", "gauc_users", "ndcg_skipped"}
    if task.kind == "binary":
        known = {"auc", "logloss", "pos_rate", "calibration", "count", "oracle_auc"} | per_user
        if task.depends_on:
            known |= {"ctcvr_auc", "oracle_ctcvr_auc"}
    else:
        known = {"rmse", "mae", "count", "ndcg_skipped"} | {f"ndcg@{k}" for k in NDCG_KS}
        known |= {"auc"} if thresholded else set()
    if name not in known:
        return f"is not a metric of task '{task.name}' ({task.kind}); it has: {', '.join(sorted(known))}"
    if name in per_user and not has_user:
        return "needs a user feature (the spec declares no 'user')"
    if name.startswith("oracle_") and task.name not in set(oracle):
        return f"needs true probabilities (the spec declares no oracle column for task '{task.name}')"
    return None


def metric_mode(metric: str) -> str:
    """Whether larger is better for a report key."""
    name = metric.split("/")[1] if "/" in metric else metric
    return "min" if name in ("logloss", "rmse", "mae") else "max"


TABLE_METRICS = ("auc", "oracle_auc", "gauc", "ctcvr_auc", "logloss", "rmse", "mae", "ndcg@5", "count")


def format_table(schema: Schema, report: Dict[str, float], metrics: Iterable[str] = TABLE_METRICS,
                 title: Optional[str] = None) -> str:
    """A markdown table: one row per task x slice, one column per metric present."""
    metrics = [m for m in metrics if any(k.split("/")[1] == m for k in report if "/" in k)]
    slices = [""]
    for key in report:
        parts = key.split("/")
        if len(parts) == 3 and parts[2] not in slices:
            slices.append(parts[2])
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    lines.append("| task | slice | " + " | ".join(metrics) + " |")
    lines.append("|---|---|" + "---|" * len(metrics))
    for task in schema.task_names:
        for sl in slices:
            cells = []
            for m in metrics:
                v = report.get(f"{task}/{m}" + (f"/{sl}" if sl else ""))
                cells.append("" if v is None or v != v else (f"{int(v)}" if m == "count" else f"{v:.4f}"))
            if any(cells):
                lines.append(f"| {task} | {sl or 'all'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
