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
        rows, so the value does not depend on row order. torchmetrics 1.0.3's ``RetrievalNormalizedDCG`` (what
        this project pins) orders ties by an unstable ``argsort`` instead, so its value with ties depends on the
        sort; the tests check that ours equals it averaged over all orders of the tied rows, and equals it
        exactly where no scores tie.

Users are told apart by ``Predictions.user_key``, a 64-bit key of the raw user value
(:func:`recsys.data.history.value_keys`, the key the label history uses), not by the encoded user index: every
user unseen in training shares the encoded OOV row, but keeps its own key. Predictions without keys (built by
hand) fall back to the encoded ``user``.

Computation: the report is a function of the set of rows alone (no collective; row order changes float
rounding at most), so it is the same on any number of ranks. Per task and score column the rows are sorted
once, by score or by (user, score), as packed int64 keys that carry the row's slice codes and label (numpy sorts
int64 values several times faster than it argsorts floats, and nothing needs gathering afterwards); each
scenario's and group's rows are split off in that order; every metric is then a handful of segment sums over
runs of equal keys (no per-user Python loop): ties cost extra work only where scores tie, NDCG@k reads only each
user's top k rows. benchmarks/evaluation.py measures it.
"""

import zlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from recsys.data.batch import Batch
from recsys.data.record import EvalFields, RowField, concat_fields, row_field, row_fields, tree_map
from recsys.schema import DataOutline, Schema, Task
from recsys.train.losses import prediction_of

NDCG_KS = (1, 5)
LOGLOSS_EPS = 1e-7


@dataclass(kw_only=True)
class Predictions(EvalFields[np.ndarray]):
    """Rows scored during evaluation (padding removed): the evaluated fields of the row record
    (:class:`~recsys.data.record.EvalFields`) plus ``scores``, {task: [n] float32} in the label's space.

    ``user_key`` ([n] int64, the bits of :func:`recsys.data.history.value_keys`) tells users apart for GAUC and
    NDCG; None when the rows carry no raw-user keys (the encoded ``user`` is used then).
    """

    scores: Dict[str, np.ndarray] = row_field("keyed", np.float32, required=True)

    def __len__(self) -> int:
        return len(self.row_id)

    def subset(self, keep: np.ndarray) -> "Predictions":
        return tree_map(self, lambda a, f: a[keep])

    @property
    def users(self) -> np.ndarray:
        """What tells users apart: the raw-user key when the rows have one, else the encoded user."""
        return self.user if self.user_key is None else self.user_key

    @staticmethod
    def concat(parts: Sequence["Predictions"], consume: bool = False) -> "Predictions":
        """``parts`` joined row-wise; ``consume``: each field is cleared from the parts once joined (see
        :func:`~recsys.data.record.concat_fields`)."""
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if len(parts) == 1:
            return parts[0]
        return concat_fields(parts, lambda arrays, f: np.concatenate(arrays), consume=consume)

    @staticmethod
    def of_batch(
        batch: Batch, keep: torch.Tensor, labels: Sequence[str], scores: Dict[str, torch.Tensor]
    ) -> "Predictions":
        """The rows ``keep`` of ``batch`` with their ``scores``, the labels of tasks ``labels`` only (numpy, on
        the host)."""

        def host(t: torch.Tensor, f: Optional[RowField] = None) -> Optional[np.ndarray]:
            if f is not None and f.optional and t.numel() != batch.size:
                return None  # absent in the batch (an empty tensor)
            return t[keep].detach().cpu().numpy()

        return tree_map(
            batch,
            host,
            into=Predictions,
            labels={t: host(batch.labels[t]) for t in labels},
            scores={t: host(v) for t, v in scores.items()},
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
        scores = {t.name: prediction_of(t, outputs[t.name].float()) for t in self.schema.tasks}
        self._parts.append(Predictions.of_batch(batch, keep, self.schema.task_names, scores))

    def local(self) -> Predictions:
        """This rank's rows. The collected parts are handed over (a second call has none): each field's parts
        are dropped as soon as it is joined, so the peak is the rows once plus one field, not twice the rows."""
        if not self._parts:
            raise ValueError("no evaluation rows")
        parts, self._parts = self._parts, []
        return Predictions.concat(parts, consume=True)

    def gather(self) -> Predictions:
        """This rank's rows joined with every other rank's, in rank order, on every rank.

        Two tensor all-gathers (the integer and the float columns, each padded to the longest rank's rows):
        nothing is pickled. Every rank must have added at least one batch (evaluation loaders pad so that
        every rank runs the same number of batches)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.local()
        return _all_gather(self._parts)


def _columns(p: Predictions) -> Tuple[List[Tuple[str, np.ndarray]], List[Tuple[str, np.ndarray]]]:
    """The integer and the float columns of ``p``, named (``field`` or ``field/key``), in field order."""
    ints: List[Tuple[str, np.ndarray]] = []
    floats: List[Tuple[str, np.ndarray]] = []
    for name, f in row_fields(Predictions):
        value = getattr(p, name)
        named = [(f"{name}/{k}", v) for k, v in value.items()] if f.layout == "keyed" else [(name, value)]
        for item in named:
            if item[1] is not None:
                (ints if item[1].dtype.kind in "biu" else floats).append(item)
    return ints, floats


def _from_columns(columns: Dict[str, np.ndarray]) -> Predictions:
    values: Dict[str, Any] = {}
    for name, f in row_fields(Predictions):
        if f.layout == "keyed":
            values[name] = {k.split("/", 1)[1]: v for k, v in columns.items() if k.startswith(name + "/")}
        else:
            values[name] = columns.get(name) if f.optional else columns[name]
    return Predictions(**values)


def _all_gather(parts: List[Predictions]) -> Predictions:
    world = dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = Predictions.concat(parts) if parts else None
    ints, floats = _columns(mine) if mine is not None else ([], [])
    layout = ";".join(f"{name}:{a.dtype.str}" for name, a in ints + floats)
    # [rows, layout fingerprint, has a layout]: ranks must agree on the columns before their rows travel
    meta = torch.tensor(
        [len(mine) if mine is not None else 0, zlib.crc32(layout.encode()), mine is not None],
        dtype=torch.int64,
        device=device,
    )
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
        if mine is not None and len(mine):
            block[: len(mine)] = torch.from_numpy(np.stack([a.astype(np_dtype) for _, a in cols], axis=1))
        block = block.to(device)
        blocks = [torch.empty_like(block) for _ in range(world)]
        dist.all_gather(blocks, block)
        for r, b in enumerate(blocks):
            values = b[: int(rows[r])].cpu().numpy()
            for j, (name, local) in enumerate(cols):
                gathered[name].append(values[:, j].astype(local.dtype))  # float32 -> float64 -> float32: exact
    return _from_columns({name: np.concatenate(v) for name, v in gathered.items()})


# --- sorting: each score column sorted once, as packed int64 keys ---------------------------------------------
# numpy sorts plain int64 values several times faster than it argsorts floats, and sorted keys that carry the
# row's user, score, slice codes and label need no gather afterwards (random gathers dominate at 10^7 rows)
def _bits(values: np.ndarray) -> int:
    """Bits holding the largest of non-negative ints ``values``."""
    return max(int(values.max()).bit_length(), 1) if len(values) else 1


def _score_key(values: np.ndarray) -> Tuple[np.ndarray, int, Callable[[np.ndarray], np.ndarray]]:
    """(key, bits, decode): an int64 key per value, smaller for larger values and equal for equal values, the
    bits it takes, and the function mapping keys back to values. float32 (models' scores, labels): the float's
    bits made order-preserving (32 bits); other dtypes: dense ranks."""
    if values.dtype == np.float32:
        key = values.view(np.int32).astype(np.int64)
        negative = key < 0
        if negative.any():  # negative floats' bits count backwards; + 1 makes -0.0 (bits -2^31) key 0 like 0.0
            key[negative] = (key[negative] ^ 0x7FFFFFFF) + 1
        np.subtract(0x7FFFFFFF, key, out=key)  # ints in the floats' order, reversed

        def decode(k: np.ndarray) -> np.ndarray:
            ordered = 0x7FFFFFFF - k
            return np.where(ordered < 0, (ordered - 1) ^ 0x7FFFFFFF, ordered).astype(np.int32).view(np.float32)

        return key, 32, decode
    uniques, inverse = np.unique(values, return_inverse=True)
    top = len(uniques) - 1
    return (top - inverse.reshape(-1)).astype(np.int64), _bits(np.array([top])), lambda k: uniques[top - k]


def _pack(fields: Sequence[Tuple[np.ndarray, int]]) -> np.ndarray:
    """One int64 per row holding the fields' bits side by side, the first field most significant (so sorting
    the keys sorts the rows by the fields in turn); at most 63 bits in all."""
    packed = fields[0][0].astype(np.int64)
    for values, bits in fields[1:]:
        packed <<= bits
        packed |= values
    return packed


def _stable_by(codes: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``order`` stably sorted by ``codes[order]`` (non-negative ints): grouped by code, ``order`` kept inside."""
    c = codes[order].astype(np.int64)
    index_bits = _bits(np.array([len(order)]))
    if _bits(c) + index_bits > 63:
        return order[np.argsort(c, kind="stable")]
    packed = _pack([(c, _bits(c)), (np.arange(len(order), dtype=np.int64), index_bits)])
    packed.sort()
    return order[packed & ((1 << index_bits) - 1)]


def _run_starts(keys: np.ndarray) -> np.ndarray:
    """True at row 0 and wherever the (sorted) ``keys`` change."""
    starts = np.ones(len(keys), dtype=bool)
    np.not_equal(keys[1:], keys[:-1], out=starts[1:])
    return starts


class _Rows:
    """Sorted rows as packed keys (fields ``layout``, most significant first) plus ``columns`` read by row."""

    def __init__(
        self,
        keys: np.ndarray,
        layout: Sequence[Tuple[str, int]],
        columns: Dict[str, np.ndarray],
        decode: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        self.keys, self.layout, self.columns, self.decode = keys, layout, columns, decode

    def __len__(self) -> int:
        return len(self.keys)

    def _shift(self, name: str) -> int:
        """Bits below field ``name``."""
        names = [f for f, _ in self.layout]
        return sum(bits for _, bits in self.layout[names.index(name) + 1 :])

    def field(self, name: str) -> np.ndarray:
        bits = dict(self.layout)[name]
        return (self.keys >> self._shift(name)) & ((1 << bits) - 1)

    def starts(self, name: str) -> np.ndarray:
        """Where the fields down to ``name`` (e.g. user, then score) change: segment or tie-run starts."""
        return _run_starts(self.keys >> self._shift(name))

    def take(self, index: Union[np.ndarray, slice]) -> "_Rows":
        return _Rows(self.keys[index], self.layout, {k: v[index] for k, v in self.columns.items()}, self.decode)


class _Order:
    """Rows sorted by score (descending), or by (user, score descending), carrying the rows' partition codes
    and ``positive`` labels in their keys, and ``relevance`` (read by row index) alongside.

    Example::

        view = _Order(scores, {"scenario": codes}, positive=labels > 0.5)
        for code, rows in view.parts("scenario").items(): ...   # each scenario's rows, still by score
    """

    def __init__(
        self,
        scores: np.ndarray,
        codes: Mapping[str, np.ndarray],
        users: Optional[np.ndarray] = None,
        positive: Optional[np.ndarray] = None,
        relevance: Optional[np.ndarray] = None,
    ) -> None:
        key, key_bits, decode = _score_key(scores)
        n = len(key)
        fields = [("user", users, _bits(users))] if users is not None else []
        fields.append(("score", key, key_bits))
        fields += [(f"codes/{name}", c, _bits(c)) for name, c in codes.items()]
        fields += [("positive", positive, 1)] if positive is not None else []
        index = [("row", np.arange(n, dtype=np.int64), _bits(np.array([n])))] if relevance is not None else []
        columns: Dict[str, np.ndarray] = {}
        if sum(bits for _, _, bits in fields + index) <= 63:
            keys = _pack([(values, bits) for _, values, bits in fields + index])
            keys.sort()
            if index and relevance is not None:
                columns["relevance"] = relevance[keys & ((1 << index[0][2]) - 1)]
                keys >>= index[0][2]
        else:  # too wide with the row index: sort row indices, gather, then pack
            if sum(bits for _, _, bits in fields) > 63:
                raise ValueError(
                    f"{n} evaluation rows of {_bits(users) if users is not None else 0}-bit users: "
                    "too many for one 63-bit sort key"
                )
            order = _stable_by(key, np.arange(n, dtype=np.int64))
            order = _stable_by(users, order) if users is not None else order
            keys = _pack([(values[order], bits) for _, values, bits in fields])
            if relevance is not None:
                columns["relevance"] = relevance[order]
        self.rows = _Rows(keys, [(name, bits) for name, _, bits in fields], columns, decode)
        self.codes = list(codes)

    def parts(self, column: Optional[str]) -> Dict[int, _Rows]:
        """The rows of each code of partition ``column`` (all rows under code 0 for None), order kept, as
        contiguous ranges."""
        if column is None:
            return {0: self.rows}
        rows, name = self.rows, f"codes/{column}"
        width, code_bits = sum(bits for _, bits in rows.layout), dict(rows.layout)[name]
        code = rows.field(name)
        if not rows.columns and width + code_bits <= 63:
            # the keys again, the code on top: sorted, the rows are by code and in this order within a code
            # (rows of equal keys are interchangeable); a value sort, faster than an argsort and a gather
            keys = code << width
            keys |= rows.keys
            keys.sort()
            bounds = np.searchsorted(keys, np.arange((1 << code_bits) + 1, dtype=np.int64) << width)
            moved = _Rows(keys, rows.layout, {}, rows.decode)
        else:  # columns to carry along: a stable sort by code (radix for small codes) and a gather
            code = code.astype(np.int16 if code_bits < 16 else np.int64)
            bounds = np.concatenate([[0], np.cumsum(np.bincount(code, minlength=1 << code_bits))])
            moved = rows.take(np.argsort(code, kind="stable"))
        return {
            c: moved.take(slice(bounds[c], bounds[c + 1])) for c in range(len(bounds) - 1) if bounds[c + 1] > bounds[c]
        }


# --- runs of sorted rows: the segment sums every metric is made of ---------------------------------------------
def _discount_sums(k: int) -> np.ndarray:
    """``D[p] = sum of 1 / log2(i + 2) for i < min(p, k)``, for p = 0..k."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k, dtype=np.float64) + 2.0))])


class _Runs:
    """Sorted rows' segments (users; one segment when ``segment_start`` is None) and runs of tied scores, and
    sums over them.

    Args:
        segment_start: True where a segment starts, or None.
        block_start: True where a run of tied scores starts (every segment start is one).
    """

    def __init__(self, segment_start: Optional[np.ndarray], block_start: np.ndarray) -> None:
        n = len(block_start)
        if segment_start is None:
            self.row_segment = None
            self.first = np.zeros(1, dtype=np.int64)
        else:
            self.row_segment = np.cumsum(segment_start) - 1
            self.first = np.flatnonzero(segment_start)
        self.size = np.diff(np.append(self.first, n))
        self.block_first = np.flatnonzero(block_start)
        self.tied = len(self.block_first) < n
        self.block_size = np.diff(np.append(self.block_first, n)) if self.tied else None  # rows per run of ties

    def __len__(self) -> int:
        """Number of segments."""
        return len(self.first)

    def _sum_by_segment(self, rows: np.ndarray, values: Optional[np.ndarray] = None) -> np.ndarray:
        """Per segment, the sum of ``values`` (1 when None) over the rows at indices ``rows``."""
        if self.row_segment is None:
            return np.array([float(len(rows)) if values is None else np.sum(values, dtype=np.float64)])
        return np.bincount(self.row_segment[rows], weights=values, minlength=len(self)).astype(np.float64)

    def positives(self, positive: np.ndarray) -> np.ndarray:
        """Per segment, the number of rows where ``positive`` holds."""
        return self._sum_by_segment(np.flatnonzero(positive))

    def _tied_rows(self) -> Tuple[np.ndarray, np.ndarray]:
        """(rows in runs of two or more tied scores, the middle sorted index of each one's run)."""
        assert self.block_size is not None, "only with ties"
        tied = np.flatnonzero(self.block_size > 1)
        rows = _run_rows(self.block_first[tied], self.block_size[tied])
        middle = np.repeat(self.block_first[tied] + (self.block_size[tied] - 1) / 2.0, self.block_size[tied])
        return rows, middle

    def mann_whitney(self, positive: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per segment: ``U`` (positive-negative pairs ordered right, ties half), positives, negatives.

        ``U = sum over positives of their rank from the segment's bottom - P (P + 1) / 2``; a row at sorted index
        ``i`` of a segment ending before ``end`` has rank ``end - i``, a tied row the mean ``end - middle`` of its
        run (only the rows of tied runs are corrected, so ties cost nothing where there are none)."""
        rows = np.flatnonzero(positive)
        p = self._sum_by_segment(rows)
        index_sum = self._sum_by_segment(rows, rows)
        if self.tied:
            tied, middle = self._tied_rows()
            hit = positive[tied] != 0
            index_sum += self._sum_by_segment(tied[hit], middle[hit] - tied[hit])
        u = p * (self.first + self.size) - index_sum - p * (p + 1) / 2
        return u, p, self.size - p

    def dcg(self, relevance: np.ndarray, ks: Sequence[int]) -> List[np.ndarray]:
        """Per k, each segment's DCG@k, the gains of a run of ties averaged over the positions it covers.

        Only the runs reaching into a segment's top ``max(ks)`` positions are read: O(segments x k), not O(rows)."""
        head = _run_rows(self.first, np.minimum(self.size, max(ks)))  # every segment's top rows
        if self.tied:  # the runs of those rows, each once (a run's head rows are adjacent)
            block = np.searchsorted(self.block_first, head, side="right") - 1
            block = block[_run_starts(block)]
        else:
            block = head
        first = self.block_first[block]
        size = self.block_size[block] if self.block_size is not None else np.ones(len(block), dtype=np.int64)
        segment_first = self.first[self.row_segment[first]] if self.row_segment is not None else 0
        start = first - segment_first  # the run's first position in its segment (0-based, best first)
        rows = _run_rows(first, size) if self.tied else first
        rel = relevance[rows].astype(np.float64)
        out = []
        for k in ks:
            d = _discount_sums(k)
            weight = (d[np.minimum(start + size, k)] - d[np.minimum(start, k)]) / size
            out.append(self._sum_by_segment(rows, rel * (np.repeat(weight, size) if self.tied else weight)))
        return out


def _run_rows(first: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The row indices of runs starting at ``first`` with ``size`` rows each, run after run."""
    offsets = np.cumsum(size) - size
    return np.repeat(first - offsets, size) + np.arange(int(size.sum()), dtype=np.int64)


# --- the metrics, on sorted rows and on plain arrays -----------------------------------------------------------
def _auc_of(rows: Optional[_Rows]) -> float:
    """AUC of rows sorted by score."""
    if rows is None or len(rows) == 0:
        return float("nan")
    u, p, n = _Runs(None, rows.starts("score")).mann_whitney(rows.field("positive"))
    return float(u[0] / (p[0] * n[0])) if p[0] > 0 and n[0] > 0 else float("nan")


def _user_metrics(rows: _Rows, ideal: Optional[_Rows], ks: Sequence[int], with_gauc: bool) -> Dict[str, float]:
    """``gauc`` and ``gauc_users`` (with ``with_gauc``), ``ndcg@k`` and ``ndcg_skipped`` of rows sorted by
    (user, score descending); ``ideal``: the same rows by (user, relevance descending) for graded relevance
    (None: the relevance is ``positive``)."""
    runs = _Runs(rows.starts("user"), rows.starts("score"))
    out: Dict[str, float] = {}
    if with_gauc:
        u, p, n = runs.mann_whitney(rows.field("positive"))
        valid = (p > 0) & (n > 0)
        size = p[valid] + n[valid]
        out["gauc"] = (
            float(np.sum(u[valid] / (p[valid] * n[valid]) * size) / np.sum(size)) if valid.any() else float("nan")
        )
        out["gauc_users"] = int(valid.sum())
    if not ks:
        return out
    relevance = rows.field("positive") if ideal is None else rows.columns["relevance"]
    positives = runs.positives(relevance > 0)
    if ideal is not None:
        ideal_relevance = ideal.decode(ideal.field("score"))
        idcg = _Runs(ideal.starts("user"), ideal.starts("score")).dcg(ideal_relevance, ks)
    else:  # binary relevance: the ideal ranking puts the user's positives first
        idcg = [_discount_sums(k)[np.minimum(positives, k).astype(np.int64)] for k in ks]
    has_positive = positives > 0
    for k, d, i in zip(ks, runs.dcg(relevance, ks), idcg):
        out[f"ndcg@{k}"] = float(np.mean(d[has_positive] / i[has_positive])) if has_positive.any() else float("nan")
    out["ndcg_skipped"] = float((~has_positive).sum())
    return out


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (a tie between a positive and a negative counts half); NaN when only one class is present."""
    return _auc_of(_Order(np.asarray(scores), {}, positive=np.asarray(labels) > 0.5).rows)


def _cross_entropy(probs: np.ndarray, labels: np.ndarray, eps: float = LOGLOSS_EPS) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), eps, 1 - eps)
    return -np.log(np.where(np.asarray(labels) > 0.5, p, 1 - p))


def logloss(probs: np.ndarray, labels: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of ``probs`` clipped to ``[eps, 1 - eps]`` (binary labels); NaN for no rows."""
    if len(labels) == 0:
        return float("nan")
    return float(_cross_entropy(probs, labels, eps).mean())


def _codes(groups: np.ndarray) -> np.ndarray:
    return pd.factorize(np.asarray(groups))[0].astype(np.int64)


def grouped_auc(groups: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Tuple[float, int]:
    """GAUC: the impression-weighted mean of per-group AUC over groups having both classes.
    Returns (gauc, number of groups used)."""
    view = _Order(np.asarray(scores), {}, users=_codes(groups), positive=np.asarray(labels) > 0.5)
    m = _user_metrics(view.rows, None, (), with_gauc=True)
    return m["gauc"], int(m["gauc_users"])


def grouped_ndcg(groups: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int) -> Tuple[float, int]:
    """NDCG@k per group (tie-averaged, see the module docstring), averaged over groups with a positive
    relevance. Returns (ndcg, number of groups skipped for having none)."""
    users, relevance = _codes(groups), np.asarray(relevance)
    view = _Order(np.asarray(scores), {}, users=users, relevance=relevance)
    m = _user_metrics(view.rows, _Order(relevance, {}, users=users).rows, (k,), with_gauc=False)
    return m[f"ndcg@{k}"], int(m["ndcg_skipped"])


# --- one task's rows sorted once, split by scenario / evaluation group -----------------------------------------
@dataclass
class _Partition:
    """The slices of one categorical column (``None``: all rows, one slice): ``{code: key suffix}``."""

    column: Optional[str]
    suffixes: Dict[int, str]


# --- reports -------------------------------------------------------------------------------------------------
def _sums(codes: Optional[np.ndarray], values: np.ndarray, size: int) -> np.ndarray:
    """Sum of ``values`` per code (one code for None)."""
    if codes is None:
        return np.array([np.sum(values, dtype=np.float64)])
    return np.bincount(codes, weights=values, minlength=size)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def _task_reports(
    task: Task,
    p: Predictions,
    users: Optional[np.ndarray],
    partitions: Sequence[_Partition],
    codes: Mapping[str, np.ndarray],
) -> Dict[str, Dict[str, float]]:
    """``{slice suffix: {metric: value}}`` of one task (see the module docstring)."""
    rows = np.flatnonzero(p.labels[task.depends_on] > 0.5) if task.depends_on is not None else None

    def task_rows(a: np.ndarray) -> np.ndarray:
        return a if rows is None else a[rows]

    label = task_rows(p.labels[task.name])
    y = label.astype(np.float64)
    s = task_rows(p.scores[task.name])
    task_codes = {k: task_rows(v) for k, v in codes.items()}
    binary = task.kind == "binary"
    positive = y > 0.5 if binary else (y > task.eval_threshold if task.eval_threshold is not None else None)
    # score orders for the AUCs, each on its rows: the task's rows, or all rows for CTCVR
    aucs: Dict[str, _Order] = {}
    if positive is not None:
        aucs["auc"] = _Order(s, task_codes, positive=positive)
    if binary and task.name in p.oracle:
        aucs["oracle_auc"] = _Order(task_rows(p.oracle[task.name]), task_codes, positive=positive)
    if binary and task.depends_on is not None:
        parent, converted = task.depends_on, p.labels[task.name] > 0.5  # p(parent) * p(task) on all rows
        aucs["ctcvr_auc"] = _Order(p.scores[parent] * p.scores[task.name], codes, positive=converted)
        if parent in p.oracle and task.name in p.oracle:
            aucs["oracle_ctcvr_auc"] = _Order(p.oracle[parent] * p.oracle[task.name], codes, positive=converted)
    by_user = ideal = None
    if users is not None and len(y):
        if binary:
            by_user = _Order(s, task_codes, users=task_rows(users), positive=positive)
        else:  # graded relevance: the label, by score and (for the ideal ranking) by itself
            by_user = _Order(s, task_codes, users=task_rows(users), relevance=label)
            ideal = _Order(label, task_codes, users=task_rows(users))
    # per-row terms of the means
    if binary:
        terms = {"logloss": _cross_entropy(s, y), "pos_rate": y, "score": np.asarray(s, np.float64)}
    else:
        err = np.asarray(s, np.float64) - y
        terms = {"rmse": err * err, "mae": np.abs(err)}

    out: Dict[str, Dict[str, float]] = {}
    for part in partitions:
        column = task_codes.get(part.column) if part.column is not None else None
        width = int(column.max()) + 1 if column is not None and len(column) else 1
        counts = np.bincount(column, minlength=width) if column is not None else np.array([len(y)])
        sums = {k: _sums(column, v, width) for k, v in terms.items()}
        auc_parts = {k: v.parts(part.column) for k, v in aucs.items()}
        user_parts = by_user.parts(part.column) if by_user is not None else {}
        ideal_parts = ideal.parts(part.column) if ideal is not None else {}
        for code, suffix in part.suffixes.items():
            count = float(counts[code]) if code < len(counts) else 0.0
            total = {k: (float(v[code]) if code < len(v) else 0.0) for k, v in sums.items()}
            m: Dict[str, float] = {"count": count}
            if binary:
                m["auc"] = _auc_of(auc_parts["auc"].get(code))
                m["logloss"] = _ratio(total["logloss"], count)
                m["pos_rate"] = _ratio(total["pos_rate"], count)
                m["calibration"] = _ratio(total["score"], total["pos_rate"]) if count else float("nan")
                for name in ("oracle_auc", "ctcvr_auc", "oracle_ctcvr_auc"):
                    if name in auc_parts:
                        m[name] = _auc_of(auc_parts[name].get(code))
            else:
                m["rmse"] = float(np.sqrt(_ratio(total["rmse"], count)))
                m["mae"] = _ratio(total["mae"], count)
                if "auc" in auc_parts:
                    m["auc"] = _auc_of(auc_parts["auc"].get(code))
            if code in user_parts:
                m.update(_user_metrics(user_parts[code], ideal_parts.get(code), NDCG_KS, with_gauc=binary))
            out[suffix] = m
    return out


def evaluate(schema: Schema, preds: Predictions) -> Dict[str, float]:
    """Every metric for every task, overall and per scenario / evaluation group (see module docstring)."""
    with_user = schema.user_feature is not None and bool((preds.user >= 0).any())
    partitions = [_Partition(None, {0: ""})]
    codes: Dict[str, np.ndarray] = {}
    columns: List[Tuple[str, np.ndarray, Sequence[str]]] = [
        ("scenario", preds.scenario, [schema.scenario_name(i) for i in range(schema.num_scenarios)])
    ]
    columns = columns if schema.num_scenarios > 1 else []
    columns += [(name, preds.groups[name], values) for name, values in schema.eval_groups if name in preds.groups]
    for name, column, values in columns:
        column = np.where((column >= 0) & (column < len(values)), column, len(values))  # others: in no slice
        present = np.bincount(column, minlength=len(values) + 1)
        # small codes: the stable sorts splitting rows by code are radix sorts
        codes[name] = column.astype(np.int16 if len(values) < 2**15 else np.int64)
        partitions.append(_Partition(name, {i: f"{name}={v}" for i, v in enumerate(values) if present[i]}))
    users = _codes(preds.users) if with_user else None
    per_task = {t.name: _task_reports(t, preds, users, partitions, codes) for t in schema.tasks}
    report: Dict[str, float] = {"rows": float(len(preds))}
    for part in partitions:
        for suffix in part.suffixes.values():
            for task in schema.tasks:
                for metric, value in per_task[task.name][suffix].items():
                    report[f"{task.name}/{metric}" + (f"/{suffix}" if suffix else "")] = value
    return report


def default_metric(schema: Union[Schema, DataOutline]) -> Tuple[str, str]:
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


def untrained_tasks(task_weights: Mapping[str, float]) -> List[str]:
    """Tasks whose loss weight is 0: their heads never learn, so their metrics are no results."""
    return [name for name, w in task_weights.items() if w == 0]


def without_tasks(report: Mapping[str, float], tasks: Iterable[str]) -> Dict[str, float]:
    """``report`` less the keys of ``tasks``."""
    drop = set(tasks)
    return {k: v for k, v in report.items() if k.split("/")[0] not in drop}


TABLE_METRICS = ("auc", "oracle_auc", "gauc", "ctcvr_auc", "logloss", "rmse", "mae", "ndcg@5", "count")
UNTRAINED = "untrained (loss weight 0)"


def format_table(
    schema: Schema,
    report: Dict[str, float],
    metrics: Iterable[str] = TABLE_METRICS,
    title: Optional[str] = None,
    untrained: Sequence[str] = (),
) -> str:
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
