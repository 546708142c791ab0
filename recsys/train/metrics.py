"""Evaluation: per task, per scenario and per evaluation group (e.g. lifecycle stage).

Metrics by task kind:
    binary: ``auc``, ``logloss``, ``gauc`` (impression-weighted mean of per-user AUC over users that have
        both classes; ``gauc_users`` counts those users), ``ndcg@k`` (per user, averaged over users with at
        least one positive; users without positives are skipped and counted in ``ndcg_skipped``),
        ``oracle_auc`` when the data carries true probabilities, ``pos_rate`` and ``calibration`` (mean
        prediction / mean label).
    a binary task with ``depends_on`` (CVR given click): the metrics above on rows whose parent label is
        positive (CVR on clicked impressions), plus ``ctcvr_auc`` on all rows with the score
        ``p(parent) * p(child)`` and the child's label (and ``oracle_ctcvr_auc``).
    regression: ``rmse`` and ``mae`` in the label's unit, ``auc`` against ``label > eval_threshold`` when
        the task has one, ``ndcg@k`` with the label as graded relevance; restricted to parent-positive rows
        when it ``depends_on`` a parent.

Keys are ``task/metric`` overall and ``task/metric/scenario=name`` or ``task/metric/stage=name`` per slice.
Sample weights only select rows (weight 0 rows such as padding are dropped); metrics are unweighted.

Definitions (the tests check each against torchmetrics on data with many tied scores):
    auc: the Mann-Whitney statistic ``U / (P * N)``, a tie between a positive and a negative counting half; this
        is the area under the ROC curve through the tied points, as ``torchmetrics`` ``binary_auroc`` (and
        sklearn's ``roc_auc_score``) compute it. NaN when only one class is present. Scores are compared as
        they are (torchmetrics first squashes scores outside [0, 1] with a float32 sigmoid, which merges
        distinct large values such as stay seconds into ties).
    logloss: mean binary cross-entropy of the probabilities clipped to ``[1e-7, 1 - 1e-7]``.
    gauc: per user, ``auc`` of the user's rows; averaged with the user's row count as weight over the users
        having both classes.
    ndcg@k: per user, ``DCG@k / IDCG@k`` with linear gain: ``DCG@k = sum over positions i = 1..k of
        rel_i / log2(i + 1)`` in descending score order, ``IDCG@k`` the same in descending relevance order
        (relevance: the binary label, or the regression label, >= 0). Averaged over the users with at least
        one positive relevance; the others have no ideal ranking and are counted in ``ndcg_skipped``.
        **Tied scores** share their positions: each row of a run of tied scores gets the mean gain of the run
        times the discounts of the positions the run covers (sklearn's ``ndcg_score`` default and
        ``_tie_average_dcg`` in current torchmetrics). That is the expected DCG over every order of the tied
        rows, so the value never depends on row order. torchmetrics 1.0.3's ``RetrievalNormalizedDCG`` (what
        this project pins) orders ties by an unstable ``argsort`` instead, so its value with ties depends on the
        sort; the tests check that ours equals it averaged over all orders of the tied rows, and equals it
        exactly where no scores tie.

Users are told apart by ``Predictions.user_key``, a 64-bit key of the raw user value
(:func:`recsys.data.history.value_keys`, the key the label history uses), not by the encoded user index: every
user unseen in training shares the encoded OOV row, but keeps its own key. Predictions without keys (built by
hand) fall back to the encoded ``user``.

Computation: the report is a function of the set of rows alone (no collective, no dependence on row order), so
it is the same on any number of ranks. Per task and score column the rows are sorted once, by score and by
(user, score); every slice is a selection of those sorted rows, and every metric is a handful of segment sums
over runs of equal keys (numpy, no per-user Python loop).
"""

import zlib
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from recsys.data.batch import Batch
from recsys.schema import Schema, Task
from recsys.train.losses import prediction_of

NDCG_KS = (1, 5)
LOGLOSS_EPS = 1e-7


@dataclass
class Predictions:
    """Rows scored during evaluation (padding removed); scores are in the label's space.

    ``user_key`` ([n] int64, the bits of :func:`recsys.data.history.value_keys`) tells users apart for GAUC and
    NDCG; None when the rows carry no raw-user keys (the encoded ``user`` is used then).
    """

    row_id: np.ndarray
    scenario: np.ndarray
    user: np.ndarray
    labels: Dict[str, np.ndarray]
    scores: Dict[str, np.ndarray]
    groups: Dict[str, np.ndarray] = field(default_factory=dict)
    oracle: Dict[str, np.ndarray] = field(default_factory=dict)
    user_key: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.row_id)

    def subset(self, keep: np.ndarray) -> "Predictions":
        return Predictions(
            self.row_id[keep], self.scenario[keep], self.user[keep],
            {k: v[keep] for k, v in self.labels.items()}, {k: v[keep] for k, v in self.scores.items()},
            {k: v[keep] for k, v in self.groups.items()}, {k: v[keep] for k, v in self.oracle.items()},
            None if self.user_key is None else self.user_key[keep],
        )

    @property
    def users(self) -> np.ndarray:
        """What tells users apart: the raw-user key when the rows have one, else the encoded user."""
        return self.user if self.user_key is None else self.user_key

    @staticmethod
    def concat(parts: Sequence["Predictions"]) -> "Predictions":
        parts = [p for p in parts if len(p)] or list(parts[:1])
        with_key = [p.user_key is not None for p in parts]
        if any(with_key) and not all(with_key):
            raise ValueError("some evaluation rows carry raw-user keys and some do not")

        def cat(get):
            return np.concatenate([get(p) for p in parts])

        first = parts[0]
        return Predictions(
            cat(lambda p: p.row_id), cat(lambda p: p.scenario), cat(lambda p: p.user),
            {k: cat(lambda p, k=k: p.labels[k]) for k in first.labels},
            {k: cat(lambda p, k=k: p.scores[k]) for k in first.scores},
            {k: cat(lambda p, k=k: p.groups[k]) for k in first.groups},
            {k: cat(lambda p, k=k: p.oracle[k]) for k in first.oracle},
            cat(lambda p: p.user_key) if all(with_key) else None,
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
            user_key=np_(batch.user_key) if batch.user_key.numel() == batch.size else None,
        ))

    def local(self) -> Predictions:
        if not self._parts:
            raise ValueError("no evaluation rows")
        return Predictions.concat(self._parts)

    def gather(self) -> Predictions:
        """This rank's rows joined with every other rank's, in rank order, on every rank.

        Two tensor all-gathers (the integer and the float columns, each padded to the longest rank's rows):
        nothing is pickled. Every rank must have added at least one batch (evaluation loaders pad so that
        every rank runs the same number of batches)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.local()
        return _all_gather(self._parts)


def _columns(p: Predictions) -> Tuple[List[Tuple[str, np.ndarray]], List[Tuple[str, np.ndarray]]]:
    """The integer and the float columns of ``p``, named, in a fixed order."""
    ints = [("row_id", p.row_id), ("scenario", p.scenario), ("user", p.user)]
    ints += [("user_key", p.user_key)] if p.user_key is not None else []
    ints += [(f"groups/{k}", v) for k, v in p.groups.items()]
    floats = [(f"labels/{k}", v) for k, v in p.labels.items()] + [(f"scores/{k}", v) for k, v in p.scores.items()]
    floats += [(f"oracle/{k}", v) for k, v in p.oracle.items()]
    return ints, floats


def _from_columns(columns: Dict[str, np.ndarray]) -> Predictions:
    def section(prefix: str) -> Dict[str, np.ndarray]:
        return {k.split("/", 1)[1]: v for k, v in columns.items() if k.startswith(prefix + "/")}

    return Predictions(columns["row_id"], columns["scenario"], columns["user"], section("labels"),
                       section("scores"), section("groups"), section("oracle"), columns.get("user_key"))


def _all_gather(parts: List[Predictions]) -> Predictions:
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = Predictions.concat(parts) if parts else None
    ints, floats = _columns(mine) if mine is not None else ([], [])
    layout = ";".join(f"{name}:{a.dtype.str}" for name, a in ints + floats)
    # [rows, layout fingerprint, has a layout]: ranks must agree on the columns before their rows travel
    meta = torch.tensor([len(mine) if mine is not None else 0, zlib.crc32(layout.encode()), mine is not None],
                        dtype=torch.int64, device=device)
    metas = [torch.empty_like(meta) for _ in range(world)]
    dist.all_gather(metas, meta)
    metas_np = torch.stack(metas).cpu().numpy()
    if not metas_np[:, 2].all():
        missing = [int(r) for r in np.flatnonzero(metas_np[:, 2] == 0)]
        raise ValueError(f"rank(s) {missing} collected no evaluation batches (every rank must run the same number)")
    if len(set(metas_np[:, 1].tolist())) > 1:
        raise ValueError("ranks collected different prediction columns; they must evaluate the same schema")
    rows = metas_np[:, 0]
    if rows.sum() == 0:
        raise ValueError("no evaluation rows on any rank")
    longest = int(rows.max())
    gathered: Dict[str, List[np.ndarray]] = {name: [] for name, _ in ints + floats}
    for cols, dtype, np_dtype in ((ints, torch.int64, np.int64), (floats, torch.float64, np.float64)):
        if not cols:
            continue
        block = torch.zeros(longest, len(cols), dtype=dtype)
        if len(mine):
            block[:len(mine)] = torch.from_numpy(np.stack([a.astype(np_dtype) for _, a in cols], axis=1))
        block = block.to(device)
        blocks = [torch.empty_like(block) for _ in range(world)]
        dist.all_gather(blocks, block)
        for r, b in enumerate(blocks):
            values = b[:int(rows[r])].cpu().numpy()
            for j, (name, local) in enumerate(cols):
                gathered[name].append(values[:, j].astype(local.dtype))  # float32 -> float64 -> float32: exact
    return _from_columns({name: np.concatenate(v) for name, v in gathered.items()})


# --- sorting: one order per score column, reused by every slice ----------------------------------------------
def _index_bits(n: int) -> int:
    return max(int(n - 1).bit_length(), 1)


def _descending_order(values: np.ndarray) -> np.ndarray:
    """Row indices by value, largest first (tied values in any order: every metric here treats a run of ties
    as one block).

    float32 values (what models' scores and labels are) are sorted as one int64 array of
    ``order-preserving bits << index bits | index``: numpy sorts plain int64 values several times faster than
    it argsorts floats."""
    n = len(values)
    bits = _index_bits(n)
    if values.dtype == np.float32 and 32 + bits <= 63:
        raw = values.view(np.int32).astype(np.int64)
        ordered = np.where(raw < 0, raw ^ 0x7FFFFFFF, raw)  # signed ints in the floats' order
        packed = ((0x7FFFFFFF - ordered) << bits) | np.arange(n, dtype=np.int64)
        packed.sort()
        return packed & ((1 << bits) - 1)
    return np.ascontiguousarray(np.argsort(np.asarray(values, dtype=np.float64))[::-1])


def _stable_by(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``order`` stably sorted by ``codes[order]`` (non-negative ints): grouped by code, ``order`` kept inside."""
    n = len(order)
    c = codes[order].astype(np.int64)
    bits = _index_bits(n)
    if n and int(c.max()).bit_length() + bits <= 63:
        packed = (c << bits) | np.arange(n, dtype=np.int64)
        packed.sort()
        return order[packed & ((1 << bits) - 1)]
    return order[np.argsort(c, kind="stable")]


def _run_starts(*keys: np.ndarray) -> np.ndarray:
    """True at row 0 and wherever one of the (sorted) key columns changes."""
    n = len(keys[0])
    starts = np.zeros(n, dtype=bool)
    if n:
        starts[0] = True
        for k in keys:
            starts[1:] |= k[1:] != k[:-1]
    return starts


# --- segment kernels on sorted rows ----------------------------------------------------------------------------
def _auc_terms(segment_start: np.ndarray, block_start: np.ndarray,
               positive: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment (rows sorted by score descending within each segment; ``block_start`` marks runs of tied
    scores and includes ``segment_start``): Mann-Whitney ``U`` (ties half), positives ``P`` and negatives ``N``."""
    n = len(positive)
    b0 = np.flatnonzero(block_start)
    size = np.diff(np.append(b0, n)).astype(np.float64)
    pos = np.add.reduceat(positive.astype(np.float64), b0)
    neg = size - pos
    first_block = np.flatnonzero(segment_start[b0])
    segment_of_block = np.cumsum(segment_start[b0]) - 1
    p_seg = np.add.reduceat(pos, first_block)
    n_seg = np.add.reduceat(neg, first_block)
    neg_through = np.cumsum(neg)  # negatives up to and including each block, over all segments
    neg_before_segment = (neg_through - neg)[first_block]
    neg_below = n_seg[segment_of_block] - (neg_through - neg_before_segment[segment_of_block])
    u = np.add.reduceat(pos * (neg_below + 0.5 * neg), first_block)
    return u, p_seg, n_seg


def _discount_sums(k: int) -> np.ndarray:
    """``D[p] = sum of 1 / log2(i + 2) for i < min(p, k)``, for p = 0..k."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0))])


def _dcg(user_start: np.ndarray, block_start: np.ndarray, relevance: np.ndarray,
         ks: Sequence[int]) -> List[np.ndarray]:
    """Per user and k, the tie-averaged DCG@k of rows sorted by score descending within each user
    (``block_start`` marks runs of tied scores and includes ``user_start``)."""
    n = len(relevance)
    b0 = np.flatnonzero(block_start)
    u0 = np.flatnonzero(user_start)
    size = np.diff(np.append(b0, n))
    user_of_block = np.cumsum(user_start[b0]) - 1
    first_block = np.flatnonzero(user_start[b0])
    start = b0 - u0[user_of_block]  # the block's first position in its user's ranking (0-based)
    stop = start + size
    mean_gain = np.add.reduceat(relevance.astype(np.float64), b0) / size
    out = []
    for k in ks:
        d = _discount_sums(k)
        gain = mean_gain * (d[np.minimum(stop, k)] - d[np.minimum(start, k)])
        out.append(np.add.reduceat(gain, first_block))
    return out


# --- the metrics, on plain arrays ------------------------------------------------------------------------------
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (a tie between a positive and a negative counts half); NaN when only one class is present."""
    scores = np.asarray(scores)
    positive = np.asarray(labels) > 0.5
    order = _descending_order(scores)
    return _auc_sorted(scores[order], positive[order])


def _auc_sorted(scores: np.ndarray, positive: np.ndarray) -> float:
    if len(scores) == 0:
        return float("nan")
    segment = np.zeros(len(scores), dtype=bool)
    segment[0] = True
    u, p, n = _auc_terms(segment, _run_starts(scores), positive)
    return float(u[0] / (p[0] * n[0])) if p[0] > 0 and n[0] > 0 else float("nan")


def _cross_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = LOGLOSS_EPS) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    y = np.asarray(labels, np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of ``probs`` clipped to ``[eps, 1 - eps]``; NaN for no rows."""
    if len(labels) == 0:
        return float("nan")
    return float(_cross_entropy(probs, labels, eps).mean())


def _codes(groups: np.ndarray) -> np.ndarray:
    return pd.factorize(np.asarray(groups))[0].astype(np.int64)


def grouped_auc(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
    """GAUC: the impression-weighted mean of per-group AUC over groups having both classes.
    Returns (gauc, number of groups used)."""
    view = _UserOrder(np.asarray(scores), np.asarray(labels) > 0.5, None, _codes(groups), {})
    gauc, used, _ = view.gauc(view.all())
    return gauc, used


def grouped_ndcg(groups: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int) -> Tuple[float, int]:
    """NDCG@k per group (tie-averaged, see the module docstring), averaged over groups with a positive
    relevance. Returns (ndcg, number of groups skipped for having none)."""
    relevance = np.asarray(relevance)
    view = _UserOrder(np.asarray(scores), relevance > 0, relevance, _codes(groups), {})
    values, skipped = view.ndcg(view.all(), (k,))
    return values[0], skipped


# --- sorted views of one task's rows, sliced by scenario / evaluation group ------------------------------------
Slice = Tuple[str, Optional[str], int]  # (key suffix, partition column or None for all rows, value)


class _ScoreOrder:
    """Rows of one score column sorted by score (descending), with their labels and partition columns."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, partitions: Mapping[str, np.ndarray]) -> None:
        order = _descending_order(scores)
        self.scores, self.positive = scores[order], positive[order]
        self.partitions = {k: v[order] for k, v in partitions.items()}

    def auc(self, sl: Slice) -> float:
        _, column, value = sl
        if column is None:
            return _auc_sorted(self.scores, self.positive)
        keep = self.partitions[column] == value
        return _auc_sorted(self.scores[keep], self.positive[keep])


class _UserOrder:
    """Rows of one score column sorted by (user, score descending) and, for graded relevance, also by
    (user, relevance descending); GAUC and NDCG of any slice are segment sums over a selection of them."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, relevance: Optional[np.ndarray],
                 users: np.ndarray, partitions: Mapping[str, np.ndarray]) -> None:
        order = _stable_by(users, _descending_order(scores))
        self.users, self.scores, self.positive = users[order], scores[order], positive[order]
        self.partitions = {k: v[order] for k, v in partitions.items()}
        self.graded = relevance is not None
        if relevance is not None:
            self.relevance = relevance[order].astype(np.float64)
            ideal = _stable_by(users, _descending_order(relevance))
            self.ideal_users, self.ideal_relevance = users[ideal], relevance[ideal].astype(np.float64)
            self.ideal_partitions = {k: v[ideal] for k, v in partitions.items()}

    @staticmethod
    def all() -> Slice:
        return ("", None, 0)

    def _select(self, sl: Slice, ideal: bool = False) -> Optional[np.ndarray]:
        _, column, value = sl
        if column is None:
            return None
        return (self.ideal_partitions if ideal else self.partitions)[column] == value

    def _rows(self, sl: Slice, *names: str) -> List[np.ndarray]:
        keep = self._select(sl)
        arrays = [getattr(self, n) for n in names]
        return arrays if keep is None else [a[keep] for a in arrays]

    def gauc(self, sl: Slice) -> Tuple[float, int, int]:
        """(GAUC, users with both classes, users) of the slice."""
        users, scores, positive = self._rows(sl, "users", "scores", "positive")
        if len(users) == 0:
            return float("nan"), 0, 0
        user_start = _run_starts(users)
        u, p, n = _auc_terms(user_start, _run_starts(users, scores), positive)
        valid = (p > 0) & (n > 0)
        if not valid.any():
            return float("nan"), 0, len(u)
        size = p[valid] + n[valid]
        return float(np.sum(u[valid] / (p[valid] * n[valid]) * size) / np.sum(size)), int(valid.sum()), len(u)

    def ndcg(self, sl: Slice, ks: Sequence[int]) -> Tuple[List[float], int]:
        """([NDCG@k for k in ks], users skipped for having no positive) of the slice."""
        names = ("users", "scores", "relevance") if self.graded else ("users", "scores", "positive")
        users, scores, relevance = self._rows(sl, *names)
        if len(users) == 0:
            return [float("nan")] * len(ks), 0
        user_start = _run_starts(users)
        dcg = _dcg(user_start, _run_starts(users, scores), relevance, ks)
        u0 = np.flatnonzero(user_start)
        positives = np.add.reduceat((relevance > 0).astype(np.int64), u0)
        if self.graded:
            keep = self._select(sl, ideal=True)
            ideal_users = self.ideal_users if keep is None else self.ideal_users[keep]
            ideal_relevance = self.ideal_relevance if keep is None else self.ideal_relevance[keep]
            ideal_start = _run_starts(ideal_users)
            idcg = _dcg(ideal_start, _run_starts(ideal_users, ideal_relevance), ideal_relevance, ks)
        else:  # binary relevance: the ideal ranking puts the user's positives first
            idcg = [_discount_sums(k)[np.minimum(positives, k)] for k in ks]
        has_positive = positives > 0
        skipped = int((~has_positive).sum())
        if not has_positive.any():
            return [float("nan")] * len(ks), skipped
        return [float(np.mean(d[has_positive] / i[has_positive])) for d, i in zip(dcg, idcg)], skipped


# --- reports -------------------------------------------------------------------------------------------------
def _mean(x: np.ndarray) -> float:
    return float(np.mean(x, dtype=np.float64)) if len(x) else float("nan")


def _task_reports(task: Task, p: Predictions, users: Optional[np.ndarray], slices: Sequence[Slice],
                  partitions: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, float]]:
    """``{slice suffix: {metric: value}}`` of one task (see the module docstring)."""
    rows = np.flatnonzero(p.labels[task.depends_on] > 0.5) if task.depends_on is not None else None

    def task_rows(a: np.ndarray) -> np.ndarray:
        return a if rows is None else a[rows]

    y = task_rows(p.labels[task.name]).astype(np.float64)
    s = task_rows(p.scores[task.name])
    parts = {k: task_rows(v) for k, v in partitions.items()}
    binary = task.kind == "binary"
    positive = y > 0.5 if binary else (y > task.eval_threshold if task.eval_threshold is not None else None)
    by_score = _ScoreOrder(s, positive, parts) if positive is not None else None
    oracle = _ScoreOrder(task_rows(p.oracle[task.name]), positive, parts) if binary and task.name in p.oracle else None
    ctcvr = oracle_ctcvr = None
    if binary and task.depends_on is not None:
        parent, converted = task.depends_on, p.labels[task.name] > 0.5  # on all rows: p(parent) * p(task)
        ctcvr = _ScoreOrder(p.scores[parent] * p.scores[task.name], converted, partitions)
        if parent in p.oracle and task.name in p.oracle:
            oracle_ctcvr = _ScoreOrder(p.oracle[parent] * p.oracle[task.name], converted, partitions)
    if binary:
        per_row = _cross_entropy(s, y)
    else:
        per_row = np.asarray(s, np.float64) - y
    by_user = None
    if users is not None and len(y):
        by_user = _UserOrder(s, y > 0.5 if binary else y > 0, None if binary else y, task_rows(users), parts)

    out: Dict[str, Dict[str, float]] = {}
    for sl in slices:
        suffix, column, value = sl
        keep = None if column is None else parts[column] == value
        yk, sk, rk = (y, s, per_row) if keep is None else (y[keep], s[keep], per_row[keep])
        m: Dict[str, float] = {"count": float(len(yk))}
        if binary:
            m["auc"] = by_score.auc(sl)
            m["logloss"] = _mean(rk)
            m["pos_rate"] = _mean(yk)
            m["calibration"] = _mean(sk) / m["pos_rate"] if len(yk) and m["pos_rate"] > 0 else float("nan")
            if oracle is not None:
                m["oracle_auc"] = oracle.auc(sl)
            if ctcvr is not None:
                m["ctcvr_auc"] = ctcvr.auc(sl)
                if oracle_ctcvr is not None:
                    m["oracle_ctcvr_auc"] = oracle_ctcvr.auc(sl)
        else:
            m["rmse"] = float(np.sqrt(_mean(rk**2)))
            m["mae"] = _mean(np.abs(rk))
            if by_score is not None:
                m["auc"] = by_score.auc(sl)
        if by_user is not None and len(yk):
            if binary:
                m["gauc"], used, _ = by_user.gauc(sl)
                m["gauc_users"] = used
            values, skipped = by_user.ndcg(sl, NDCG_KS)
            for k, v in zip(NDCG_KS, values):
                m[f"ndcg@{k}"] = v
            m["ndcg_skipped"] = float(skipped)
        out[suffix] = m
    return out


def evaluate(schema: Schema, preds: Predictions) -> Dict[str, float]:
    """Every metric for every task, overall and per scenario / evaluation group (see module docstring)."""
    with_user = schema.user_feature is not None and bool((preds.user >= 0).any())
    slices: List[Slice] = [("", None, 0)]
    partitions: Dict[str, np.ndarray] = {}
    if schema.num_scenarios > 1:
        partitions["scenario"] = preds.scenario
        slices += [(f"scenario={schema.scenario_name(i)}", "scenario", i) for i in range(schema.num_scenarios)]
    for name, values in schema.eval_groups:
        if name in preds.groups:
            partitions[name] = preds.groups[name]
            slices += [(f"{name}={v}", name, i) for i, v in enumerate(values)]
    slices = [sl for sl in slices if sl[1] is None or bool((partitions[sl[1]] == sl[2]).any())]
    users = _codes(preds.users) if with_user else None
    per_task = {t.name: _task_reports(t, preds, users, slices, partitions) for t in schema.tasks}
    report: Dict[str, float] = {"rows": float(len(preds))}
    for suffix, _, _ in slices:
        for task in schema.tasks:
            for metric, value in per_task[task.name][suffix].items():
                report[f"{task.name}/{metric}" + (f"/{suffix}" if suffix else "")] = value
    return report


def default_metric(schema: Schema) -> Tuple[str, str]:
    """The early-stopping metric when the config says ``auto``: the first task's AUC (or RMSE)."""
    first = schema.tasks[0]
    if first.kind == "binary" or first.eval_threshold is not None:
        return f"{first.name}/auc", "max"
    return f"{first.name}/rmse", "min"


def metric_mode(metric: str) -> str:
    """Whether larger is better for a report key."""
    name = metric.split("/")[1] if "/" in metric else metric
    return "min" if name in ("logloss", "rmse", "mae") else "max"


def untrained_tasks(task_weights: Mapping[str, float]) -> List[str]:
    """Tasks whose loss weight is 0: their heads never learn, so their metrics are no results."""
    return [name for name, w in task_weights.items() if w == 0]


def without_tasks(report: Mapping[str, float], tasks: Iterable[str]) -> Dict[str, float]:
    """``report`` less the keys of ``tasks``."""
    drop = set(tasks)
    return {k: v for k, v in report.items() if k.split("/")[0] not in drop}


TABLE_METRICS = ("auc", "oracle_auc", "gauc", "ctcvr_auc", "logloss", "rmse", "mae", "ndcg@5", "count")
UNTRAINED = "untrained (loss weight 0)"


def format_table(schema: Schema, report: Dict[str, float], metrics: Iterable[str] = TABLE_METRICS,
                 title: Optional[str] = None, untrained: Sequence[str] = ()) -> str:
    """A markdown table: one row per task x slice, one column per metric present; a task in ``untrained``
    gets one row saying so instead of its (meaningless) numbers."""
    report = without_tasks(report, untrained)
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
        if task in untrained:
            lines.append(f"| {task} | all | {UNTRAINED} |" + " |" * max(len(metrics) - 1, 0))
            continue
        for sl in slices:
            cells = []
            for m in metrics:
                v = report.get(f"{task}/{m}" + (f"/{sl}" if sl else ""))
                cells.append("" if v is None or v != v else (f"{int(v)}" if m == "count" else f"{v:.4f}"))
            if any(cells):
                lines.append(f"| {task} | {sl or 'all'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
