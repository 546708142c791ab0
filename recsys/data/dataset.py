"""From a dataset spec to encoded columns: the passes over the files, and the fitted state.

Two passes over the files:

1. :meth:`Dataset.fit` (rank 0 only in distributed runs; the state is broadcast) reads every row once, checks it
   (labels, dense values, ids under the ``identity`` policy, scenario values) and fits the vocabularies and
   dense statistics on the training split. Nothing is written before the whole pass succeeded.
2. :meth:`Dataset.read` (in memory) or :meth:`Dataset.stream` (chunk by chunk) encodes the rows of a rank's
   contiguous share of the files and routes them to train/valid/test.

Rows carry their per-user label history only when asked (``history=True``: the trainer asks when the model's
requirements say it reads ``Batch.history``, only STAN does); that adds one pass over the training rows
(:meth:`Dataset.label_history`). The spec's ``history`` section only chooses its tasks.

The concerns live in their own modules, which this class wires together: which columns are read
(:mod:`~recsys.data.lineage`), side tables and side columns (:mod:`~recsys.data.joins`), derived columns
(:mod:`~recsys.data.derived`), splits and rank shares (:mod:`~recsys.data.splits`), checks of labels, weights,
oracle values and timestamps (:mod:`~recsys.data.validation`), id and dense encoders
(:mod:`~recsys.data.encoding`), label history (:mod:`~recsys.data.history`), the schema a spec promises
(:mod:`~recsys.data.outline`) and file fingerprints (:mod:`~recsys.data.fingerprint`).
"""

import dataclasses
import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from recsys.config import SideColumnsConfig, SplitConfig
from recsys.console import Progress
from recsys.data import validation
from recsys.data.columns import Columns, ColumnsFiller, Ragged
from recsys.data.derived import add_derived, filter_mask
from recsys.data.encoding import (
    CategoryEncoder,
    DenseEncoder,
    SparseEncoder,
    Where,
    load_encoders,
    save_encoders,
    to_int,
)
from recsys.data.fingerprint import Fingerprint, check_unchanged, fingerprint
from recsys.data.history import (
    HistoryBuilder,
    LabelHistory,
    TimeBuckets,
    ValueKeys,
    history_buckets,
    history_events,
    history_keys,
    history_possible,
    history_tasks,
)
from recsys.data.joins import Joins, SideColumns
from recsys.data.lineage import check_no_label_leak, feature_columns, source_columns
from recsys.data.outline import declared_sizes, outline_of, schema_of
from recsys.data.parallel import ordered_map
from recsys.data.reader import DATA_EXTENSIONS, RawChunk, SourceReader, list_files
from recsys.data.record import RecordLayout
from recsys.data.spec import DatasetSpec, FileSpec, FilterSpec, spec_of
from recsys.data.split_cache import SplitCache, array_digest
from recsys.data.splits import SPLITS, TEST_ROW_OFFSET, Splitter, hash_uniform, rank_range, row_offset, splitmix64
from recsys.errors import ConfigError, DataError
from recsys.schema import DataOutline, Schema

if TYPE_CHECKING:  # only for from_config's signature: the data layer does not depend on run configs
    from recsys.config import Config

__all__ = ["SPLITS", "TEST_ROW_OFFSET", "Dataset", "hash_uniform", "rank_range", "splitmix64"]

log = logging.getLogger(__name__)


class Dataset:
    """A dataset spec bound to its files, with fitted encoders.

    Args:
        spec: the dataset spec.
        root: data root overriding the spec's.
        split: train/valid/test split policy.
        chunk_rows: rows per read chunk.
        max_rows: read only the first ``max_rows`` rows of the source.
        progress: show the progress of passes over the files (bars on a terminal, see recsys.console.Progress).
        scenarios: keep only the rows of these scenario indices (every split, and the fitting of encoders).
        side_columns: per-row side columns joined by row id into ``Columns.extras`` (see
            :class:`~recsys.config.SideColumnsConfig`); rows the side table does not list get its ``fill``.
        history: rows carry their label history (``Columns.history``): True when a model reads it, False
            never, None as the spec says (its ``history`` section); see :meth:`use_history`.
        workers: threads that decode chunks (reads and streams; default: the cores, at most 4).

    Example::

        ds = Dataset(load_spec("configs/datasets/movielens-100k.yaml"), root="../shared/data/ml-100k")
        ds.fit()
        schema = ds.schema(default_dim=16)
        parts = ds.read()        # {"train": Columns, "valid": Columns, "test": Columns}
    """

    def __init__(
        self,
        spec: DatasetSpec,
        root: Optional[str] = None,
        split: Optional[SplitConfig] = None,
        chunk_rows: int = 262144,
        max_rows: Optional[int] = None,
        progress: bool = False,
        scenarios: Optional[Sequence[int]] = None,
        side_columns: Sequence[SideColumnsConfig] = (),
        history: Optional[bool] = None,
        workers: Optional[int] = None,
    ) -> None:
        self.spec = spec
        self.workers = workers
        self.root = spec.data_root(root)
        self.split = split or SplitConfig()
        self.splitter = Splitter(self.split, separate=[s for s, _ in spec.split_sources() if s is not None])
        self.chunk_rows = chunk_rows
        self.max_rows = max_rows
        self.progress = progress
        self.sparse = [SparseEncoder(s) for s in spec.sparse]
        self.dense = [DenseEncoder(d) for d in spec.dense]
        self.scenario = CategoryEncoder(spec.scenario, "scenario") if spec.scenario else None
        self.groups = {k: CategoryEncoder(v, k) for k, v in spec.eval_groups.items()}
        self.fitted = False
        # rows of each file set (None: the main one, 1: a separate validation set, 2: a separate test set)
        self.rows: Dict[Optional[int], int] = {}
        self.filtered_out: Dict[Optional[int], int] = {}  # rows the spec's filter dropped, per file set
        self.split_counts: Dict[str, int] = {}
        self.joins = Joins(spec.joins, self.root, chunk_rows)
        self._history: Optional[LabelHistory] = None
        self._history_lock = threading.Lock()  # streams encode in loader threads
        self._value_keys = ValueKeys()
        check_no_label_leak(spec)
        self.scenarios = None if scenarios is None else sorted(set(int(s) for s in scenarios))
        if self.scenarios is not None:
            if self.scenario is None:
                raise ConfigError(f"data.scenarios: dataset '{spec.name}' has no scenario column")
            bad = [s for s in self.scenarios if not 0 <= s < self.scenario.size]
            if bad or not self.scenarios:
                raise ConfigError(
                    f"data.scenarios: {bad or 'an empty list'} is not a list of scenario indices in "
                    f"[0, {self.scenario.size})"
                )
        self.side_columns = list(side_columns)
        self.side = SideColumns(self.side_columns, chunk_rows)
        self._fit_files: Optional[Fingerprint] = None  # the files the fit pass read
        self.with_history = False
        self.use_history(history)

    def use_history(self, wanted: Optional[bool]) -> None:
        """Whether encoded rows carry their per-user label history: ``True`` when the model reads it (and the
        spec has ``user`` and ``time``, without which there is none to build), ``False`` never (no extra pass,
        no per-row state), ``None`` when the spec has a ``history`` section."""
        if wanted is None:
            wanted = self.spec.history is not None
        self.with_history = bool(wanted) and history_possible(self.spec)

    @classmethod
    def from_config(
        cls, cfg: "Config", progress: bool = False, spec: Optional[DatasetSpec] = None, history: Optional[bool] = None
    ) -> "Dataset":
        """The dataset of a run config's ``data`` section; ``spec`` (a spec built in code, checked here) instead
        of the YAML file ``data.spec`` names (with ``data.spec_overrides`` applied); ``history``: see
        :meth:`use_history`."""
        if spec is not None:
            spec.validate("dataset spec")
        else:
            spec = spec_of(cfg)
        root = cfg.resolve(cfg.data.path) if cfg.data.path else None
        side = [
            SideColumnsConfig(cfg.resolve(sc.path), list(sc.columns), sc.key, sc.fill) for sc in cfg.data.side_columns
        ]
        return cls(
            spec,
            root,
            cfg.data.split,
            cfg.data.chunk_rows,
            cfg.data.max_rows,
            progress,
            scenarios=cfg.data.scenarios,
            side_columns=side,
            history=history,
            workers=cfg.data.decode_workers,
        )

    @property
    def valid_from(self) -> Optional[float]:
        """Timestamp from which rows are validation rows (time splits; see :class:`Splitter`)."""
        return self.splitter.valid_from

    @property
    def test_from(self) -> Optional[float]:
        """Timestamp from which rows are test rows (time splits)."""
        return self.splitter.test_from

    @property
    def history_tasks(self) -> List[str]:
        """Tasks whose per-user label history rows carry (``Columns.history``; none without history)."""
        return history_tasks(self.spec) if self.with_history else []

    # --- per chunk ---------------------------------------------------------------------------------------
    def _reader(self, fs: FileSpec, columns: Optional[set] = None) -> SourceReader:
        cols = source_columns(self.spec, self.joins.columns_of) if columns is None else columns
        return SourceReader(fs, self.root, columns=cols, chunk_rows=self.chunk_rows, string_columns=sorted(cols))

    def _prepare(self, chunk: RawChunk, scoring: bool = False) -> Tuple[pa.Table, Where]:
        """The spec's filter, joins and derived columns, vectorised. A filter on a column of the files applies
        first (so a row it drops is never joined or derived), one on a joined or derived column after them;
        ``where.kept`` then holds the positions of the chunk's rows that passed. Rows to score (``scoring``)
        are not filtered (every given row gets a score) and get only the derived columns whose inputs the file
        has (the others feed labels, groups or times it need not have)."""
        where = Where(chunk.file, chunk.file_row)
        filters = [] if scoring else self.spec.filter
        early = [f for f in filters if f.column in chunk.table.column_names]
        late = [f for f in filters if f.column not in chunk.table.column_names]
        table, where = _filtered(early, chunk.table, where)
        table = self.joins.apply(table, where)
        derived = self.spec.derived
        if scoring:
            have, derived = set(table.column_names), []
            for d in self.spec.derived:
                if ({d.column} if d.column else set()) | set(d.columns) <= have:
                    derived.append(d)
                    have.add(d.name)
        return _filtered(late, add_derived(derived, table, where), where)

    def _scenario_keep(self, table: pa.Table, where: Where) -> Optional[np.ndarray]:
        """Rows of the kept scenarios (None when every row is kept)."""
        if self.scenarios is None:
            return None
        assert self.scenario is not None
        codes = self.scenario.transform(table.column(self.scenario.spec.column), where)
        return np.isin(codes, self.scenarios)

    def _row_ids(self, chunk: RawChunk, table: pa.Table, where: Where, fixed: Optional[int]) -> np.ndarray:
        """Row ids of a prepared chunk (their global row number in their file set, so rows a filter dropped
        change no other row's id and split); the spec's row-id column when the rows have it (rows to score
        need not)."""
        if self.spec.row_id and self.spec.row_id in table.column_names:
            return to_int(table.column(self.spec.row_id), where, self.spec.row_id)
        positions = np.arange(table.num_rows, dtype=np.int64) if where.kept is None else where.kept.astype(np.int64)
        return positions + (chunk.global_row + row_offset(fixed))

    def _time(self, table: pa.Table, where: Where) -> Optional[np.ndarray]:
        return validation.timestamps(self.spec.time, table, where, self.spec.time_format)

    def _labels(self, table: pa.Table, where: Where) -> Dict[str, np.ndarray]:
        return validation.labels(self.spec.tasks, table, where)

    def _split_of(self, row_ids: np.ndarray, time: Optional[np.ndarray], fixed: Optional[int]) -> np.ndarray:
        """0 = train, 1 = valid, 2 = test."""
        return self.splitter.split_of(row_ids, time, fixed)

    def _check_rows(self, table: pa.Table, where: Where) -> None:
        """Validation of everything that does not need fitted state (used by the fit pass)."""
        self._labels(table, where)
        validation.weights(self.spec.weight, table, where)
        validation.oracle(self.spec.oracle, self.spec.tasks, table, where)
        self._time(table, where)
        if self.scenario:
            self.scenario.transform(table.column(self.scenario.spec.column), where)
        for enc in self.groups.values():
            enc.transform(table.column(enc.spec.column), where)

    def _encode(self, table: pa.Table, where: Where, row_ids: np.ndarray, scoring: bool = False) -> Columns:
        """The encoded rows of ``table``; with ``scoring`` only the features are required: labels, weights,
        oracle values, evaluation groups and times are read (and checked) when the table has their columns and
        placeholders otherwise, and no label history is looked up (a training target, never an input)."""
        n = table.num_rows
        blank = Columns.blank(self.layout(), n if scoring else 0)  # placeholders, read only when scoring
        has = set(table.column_names).__contains__ if scoring else (lambda column: True)
        labelled = not scoring or self._labelled(table)  # training rows must have labels (checked by _labels)
        sparse = {e.name: e.transform(table.column(e.column), where) for e in self.sparse}
        dense = (
            np.stack([e.transform(table.column(e.column), where) for e in self.dense], axis=1)
            if self.dense
            else np.zeros((n, 0), dtype=np.float32)
        )
        if self.spec.user:
            user_col = sparse[self.spec.user]
            user = user_col if not isinstance(user_col, Ragged) else user_col.values[user_col.offsets[:-1]]
            user_key = self._user_keys(table, where)
        else:
            user, user_key = np.full(n, -1, dtype=np.int64), None
        return Columns(  # in this order: with several bad values in a row, the first check here names it
            dense=dense,
            sparse=sparse,
            labels=self._labels(table, where) if labelled else blank.labels,
            scenario=(
                self.scenario.transform(table.column(self.scenario.spec.column), where)
                if self.scenario
                else np.zeros(n, dtype=np.int64)
            ),
            user=np.asarray(user, dtype=np.int64),
            weights=validation.weights(self.spec.weight if has(self.spec.weight) else None, table, where),
            row_id=row_ids,
            groups={
                k: e.transform(table.column(e.spec.column), where) if has(e.spec.column) else blank.groups[k]
                for k, e in self.groups.items()
            },
            oracle={
                **(blank.oracle if scoring else {}),
                **validation.oracle(
                    {t: c for t, c in self.spec.oracle.items() if has(c)}, self.spec.tasks, table, where
                ),
            },
            time=self._time(table, where) if has(self.spec.time) else blank.time,
            history=blank.history if scoring else self._history_of(table, where, user_key),
            extras=self.side.of(row_ids),
            user_key=None if user_key is None else user_key.view(np.int64),
        )

    def _labelled(self, table: pa.Table) -> bool:
        """Whether ``table`` has every task's label column."""
        return all(t.source_column in table.column_names for t in self.spec.tasks)

    def layout(self) -> RecordLayout:
        """The keys, optional fields, widths and sparse features of this dataset's encoded rows."""
        s = self.spec
        return RecordLayout(
            keys={
                "labels": [t.name for t in s.tasks],
                "groups": list(self.groups),
                "oracle": list(s.oracle),
                "history": history_keys(self.history_tasks) if self.with_history else [],
                "extras": self.side.names,
            },
            present=frozenset(name for name, wanted in (("time", s.time), ("user_key", s.user)) if wanted),
            widths={"dense": len(self.dense)},
            sparse=[(e.name, e.spec.multi_hot) for e in self.sparse],
        )

    def empty(self) -> Columns:
        """A zero-row Columns with the right fields."""
        return Columns.blank(self.layout(), 0)

    # --- label history (recsys.data.history) -------------------------------------------------------------
    def _times(self, table: pa.Table, where: Where) -> np.ndarray:
        """The time column of rows that need one (history, time-split cuts; both check the spec has it)."""
        time = self._time(table, where)
        if time is None:
            raise ConfigError(f"spec '{self.spec.name}': this needs 'time' (a timestamp column)")
        return time

    def _user_keys(self, table: pa.Table, where: Where) -> np.ndarray:
        enc = next(e for e in self.sparse if e.name == self.spec.user)
        return self._value_keys(enc.normalised(table.column(enc.column), where))

    def label_history(self) -> LabelHistory:
        """The training events of every rank's rows (one pass over the source, built once and cached)."""
        self._require_fitted()
        with self._history_lock:
            if self._history is None:
                self._history = self._build_history()
        return self._history

    def _build_history(self) -> LabelHistory:
        """The bounded per-user state of every training row of the source (all ranks' shares; see
        :mod:`recsys.data.history`): one pass for the time buckets, one for the events."""
        buckets = TimeBuckets.fit(self._source_times(), history_buckets(self.spec))
        builder = HistoryBuilder(buckets, self.history_tasks)
        reader = self._reader(self.spec.main_source)  # a separate valid or test file set holds no training rows
        with self._bar("label history", self.rows.get(None)) as bar:
            for chunk in reader.chunks(0, self.max_rows):
                table, where = self._prepare(chunk)
                time = self._times(table, where)
                train = self._split_of(self._row_ids(chunk, table, where, None), time, None) == 0
                bar.update(table.num_rows)
                if not train.any():
                    continue
                events = history_events(self.spec.tasks, self.history_tasks, self._labels(table, where), table.num_rows)
                builder.add(
                    self._user_keys(table, where)[train],
                    time[train],
                    {name: (applies[train], positive[train]) for name, (applies, positive) in events.items()},
                )
        history = builder.finish()
        log.info(
            "label history: %d entries (%s) of %d users, %.1f MB",
            len(history),
            "exact" if history.exact else f"{buckets.size} time buckets",
            len(history.users),
            history.nbytes / 1e6,
        )
        return history

    def _history_of(self, table: pa.Table, where: Where, user_keys: Optional[np.ndarray]) -> Dict[str, np.ndarray]:
        if not self.with_history or user_keys is None:  # the history needs a user (history_possible)
            return {}
        return self.label_history().query(user_keys, self._times(table, where))

    # --- passes ------------------------------------------------------------------------------------------
    def _sources(self) -> List[Tuple[FileSpec, Optional[int]]]:
        """(files, split) of every file set: split None for the main one, else the split it is as a whole."""
        return [(fs, split) for split, fs in self.spec.split_sources()]

    def _bar(self, desc: str, total: Optional[int], estimated: bool = False) -> Progress:
        return Progress(desc, total, unit="row", enabled=self.progress, unit_scale=True, estimated=estimated)

    def _fit_time_cuts(self) -> None:
        if not self.splitter.needs_cuts():
            return
        if not self.spec.time:
            raise ConfigError(f"spec '{self.spec.name}': a time split needs 'time' (a timestamp column)")
        self.splitter.fit_cuts(np.concatenate(list(self._source_times())))

    def _source_times(self) -> Iterator[np.ndarray]:
        """The timestamps of the main file set's rows the spec's filter keeps, chunk by chunk (only the time
        column is read when no filter, join or derived column is involved)."""
        if self.spec.filter or self.spec.derived or self.spec.joins:
            for chunk in self._reader(self.spec.main_source).chunks(0, self.max_rows):
                yield self._times(*self._prepare(chunk))
        else:
            reader = self._reader(self.spec.main_source, {self.spec.time})
            for chunk in reader.chunks(0, self.max_rows):
                yield self._times(chunk.table, Where(chunk.file, chunk.file_row))

    def fit(self) -> None:
        """One pass: validate every row and fit encoders on the training split."""
        self._fit_time_cuts()
        if self.spec.user is not None:
            user_spec = next(s for s in self.spec.sparse if s.name == self.spec.user)
            if user_spec.multi_hot:
                raise ConfigError(f"spec '{self.spec.name}': the user feature '{self.spec.user}' must be single-hot")
        files = fingerprint(self.files())
        counts = {s: 0 for s in SPLITS}
        rows, dropped = {}, {}
        for fs, fixed in self._sources():
            reader = self._reader(fs)
            stop = self.max_rows if fixed is None else None
            seen = kept = 0
            with self._bar(
                "fit" + ("" if fixed is None else f" {SPLITS[fixed]} files"), *reader.quick_rows(stop)
            ) as bar:
                for chunk in reader.chunks(0, stop):
                    table, where = self._prepare(chunk)
                    self._check_rows(table, where)
                    row_ids = self._row_ids(chunk, table, where, fixed)
                    split = self._split_of(row_ids, self._time(table, where), fixed)
                    keep = self._scenario_keep(table, where)
                    if keep is not None:
                        split = np.where(keep, split, -1)  # rows of other scenarios belong to no split
                    for i, name in enumerate(SPLITS):
                        counts[name] += int((split == i).sum())
                    train = split == 0
                    for enc in self.sparse:
                        enc.fit(table.column(enc.column), where, train)
                    for dense in self.dense:
                        dense.fit(table.column(dense.column), where, train, encoded=split >= 0)
                    seen += chunk.table.num_rows
                    kept += table.num_rows
                    bar.update(chunk.table.num_rows)
            rows[fixed], dropped[fixed] = seen, seen - kept
            if self.spec.filter:
                log.info(
                    "filter: dropped %d of %d rows of %s",
                    seen - kept,
                    seen,
                    fs.path if os.path.isabs(fs.path) else os.path.join(self.root, fs.path),
                )
        if counts["train"] == 0:
            raise DataError(f"dataset '{self.spec.name}': the training split is empty")
        for enc in self.sparse:
            enc.finalize()
        for dense in self.dense:
            dense.finalize()
        self.rows, self.filtered_out = rows, dropped
        self.split_counts = counts
        self._fit_files = files
        self.fitted = True

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("Dataset.fit() or Dataset.load() first")

    @property
    def source_rows(self) -> Optional[int]:
        """Rows of the main file set (before the filter; None until counted)."""
        return self.rows.get(None)

    @property
    def test_rows(self) -> Optional[int]:
        """Rows of a separate test file set (None without one, or until counted)."""
        return self.rows.get(2)

    def _rows_of(self, fs: FileSpec, fixed: Optional[int]) -> int:
        """Rows of a file set: from the fit when the files are unchanged, otherwise counted again."""
        if fixed not in self.rows:
            counted = self._reader(fs).total_rows()
            self.rows[fixed] = counted if fixed is not None or self.max_rows is None else min(counted, self.max_rows)
        return self.rows[fixed]

    def _rank_chunks(self, rank: int, world_size: int) -> Iterator[Tuple[RawChunk, Optional[int]]]:
        self._require_fitted()
        if self._fit_files is not None:
            check_unchanged(self._fit_files, fingerprint(self.files()))
        for fs, fixed in self._sources():
            start, stop = rank_range(self._rows_of(fs, fixed), rank, world_size)
            for chunk in self._reader(fs).chunks(start, stop):
                yield chunk, fixed

    def _encoded_chunks(
        self, rank: int, world_size: int, desc: str, only: Optional[int] = None
    ) -> Iterator[Tuple[Columns, np.ndarray]]:
        """Encoded chunks of this rank with each row's split, in file order, decoded on ``workers`` threads
        (:func:`~recsys.data.parallel.ordered_map`); with ``only``, rows of other splits are dropped before
        encoding (the fit pass has already validated them)."""
        total = 0
        for fs, fixed in self._sources():
            start, stop = rank_range(self._rows_of(fs, fixed), rank, world_size)
            total += stop - start

        def encode(item: Tuple[RawChunk, Optional[int]]) -> Tuple[int, Optional[Tuple[Columns, np.ndarray]]]:
            chunk, fixed = item
            table, where = self._prepare(chunk)
            row_ids = self._row_ids(chunk, table, where, fixed)
            split = self._split_of(row_ids, self._time(table, where), fixed)
            keep = self._scenario_keep(table, where)
            if only is not None:
                keep = (split == only) if keep is None else keep & (split == only)
            if keep is not None:
                if not keep.any():
                    return chunk.table.num_rows, None
                if not keep.all():
                    table, row_ids, split = table.filter(pa.array(keep)), row_ids[keep], split[keep]
                    where = _kept_where(where, keep)  # errors name file rows
            return chunk.table.num_rows, (self._encode(table, where, row_ids).pack(), split)

        with self._bar(desc, total) as bar:
            for rows, encoded in ordered_map(encode, self._rank_chunks(rank, world_size), self.workers):
                bar.update(rows)
                if encoded is not None:
                    yield encoded

    def read(self, rank: int = 0, world_size: int = 1, splits: Sequence[str] = SPLITS) -> Dict[str, Columns]:
        """All of this rank's rows, encoded, per split (one pass over the files)."""
        fillers = {s: ColumnsFiller(self._expected_rows(s, rank, world_size)) for s in splits}
        for cols, split in self._encoded_chunks(rank, world_size, "read"):
            for name in splits:
                keep = split == SPLITS.index(name)
                if keep.all():
                    fillers[name].add(cols)
                elif keep.any():
                    fillers[name].add(cols, np.flatnonzero(keep))
        return {s: filler.finish() or self.empty() for s, filler in fillers.items()}

    def _expected_rows(self, split: str, rank: int, world_size: int) -> int:
        """Rows of ``split`` a rank's read should hold: the fit pass's count of the split (all ranks), times the
        rank's share of the rows plus some slack on several ranks (only the arrays' first size depends on it)."""
        count = self.split_counts.get(split, 0)
        if world_size == 1:
            return count
        return int(count / world_size * 1.02) + self.chunk_rows

    def stream(self, split: str, rank: int = 0, world_size: int = 1) -> Iterator[Columns]:
        """This rank's rows of one split, chunk by chunk (for data larger than memory)."""
        for cols, _ in self._encoded_chunks(rank, world_size, f"stream {split}", only=SPLITS.index(split)):
            yield cols

    def cached_stream(self, split: str, folder: str, rank: int = 0, world_size: int = 1) -> Iterator[Columns]:
        """:meth:`stream`, encoded once: the first pass writes the rows through to ``folder`` (see
        :class:`~recsys.data.split_cache.SplitCache`), later passes read them back; a cache of other files,
        encoders or settings is rebuilt."""
        cache = SplitCache(folder, self.cache_key(split, rank, world_size))
        return cache.chunks(lambda: self.stream(split, rank, world_size), self.chunk_rows)

    def cache_key(self, split: str, rank: int = 0, world_size: int = 1) -> Dict[str, Any]:
        """Everything the encoded rows of ``split`` on ``rank`` depend on: the files (fingerprint), the spec, the
        fitted encoders (their vocabularies by digest), the split and share, scenarios, side columns, history."""
        self._require_fitted()
        side = [dataclasses.asdict(sc) for sc in self.side_columns]
        return {
            "split": split,
            "rank": rank,
            "world_size": world_size,
            "max_rows": self.max_rows,
            "files": fingerprint(self.files()),
            "side_files": fingerprint([sc.path for sc in self.side_columns]),
            "spec": dataclasses.asdict(self.spec),
            "split_config": dataclasses.asdict(self.split),
            "cuts": [self.valid_from, self.test_from],
            "scenarios": self.scenarios,
            "side": side,
            "history": {"tasks": self.history_tasks, "buckets": history_buckets(self.spec)},
            "encoders": {
                "sparse": {e.name: e.state() for e in self.sparse},
                "dense": {e.spec.name: e.state() for e in self.dense},
            },
            "vocabularies": array_digest([e.vocab for e in self.sparse]),
        }

    # --- rows to score -----------------------------------------------------------------------------------
    def scoring_reader(self, path: str, keep: Sequence[str] = ()) -> SourceReader:
        """A reader of one file of new rows to score (``recsys predict --input``), read like the spec's source
        (delimiter, header; the format from the file's extension). The file must have the columns the features
        come from (before joins and derived columns) and ``keep``; the spec's other columns (labels, weights,
        times, groups, row ids) are read when the file has them."""
        self._require_fitted()
        source = self.spec.main_source
        fmt = "auto" if path.endswith(DATA_EXTENSIONS) else source.format  # CSV rows for a Parquet source
        fs = dataclasses.replace(source, path=os.path.abspath(path), format=fmt)
        required = source_columns(self.spec, self.joins.columns_of, feature_columns(self.spec))
        optional = source_columns(self.spec, self.joins.columns_of) - required
        names = set(SourceReader(fs, self.root).column_names(fs.path))
        cols = required | (optional & names) | set(keep)
        return SourceReader(fs, self.root, columns=cols, chunk_rows=self.chunk_rows, string_columns=sorted(cols))

    def encode_for_scoring(self, chunk: RawChunk) -> Tuple[Columns, bool]:
        """A chunk of a :meth:`scoring_reader` encoded with the fitted encoders (unseen ids go to their
        out-of-vocabulary rows, as in training), and whether it is labelled (has every task's label column;
        labels are checked then, and are 0 otherwise). Row ids: the spec's row-id column when the file has
        it, else the chunk's row numbers over all the files read."""
        table, where = self._prepare(chunk, scoring=True)
        row_ids = self._row_ids(chunk, table, where, None)
        return self._encode(table, where, row_ids, scoring=True).pack(), self._labelled(table)

    # --- schema and state --------------------------------------------------------------------------------
    def outline(self) -> DataOutline:
        """What the spec promises (tasks, scenarios, user, time) without reading any data."""
        return outline_of(self.spec)

    def schema(self, default_dim: int = 16) -> Schema:
        self._require_fitted()
        return schema_of(self.spec, [e.num_embeddings for e in self.sparse], default_dim, self.history_tasks)

    def declared_schema(self, default_dim: int = 16) -> Schema:
        """The schema from the spec alone, without reading or fitting data: every sparse feature must declare
        ``num_embeddings`` (``hash`` and ``identity`` encodings always do; a ``vocab`` feature's cap counts as
        its size). Used to plan sharding for data that is not at hand (``recsys plan``).

        Example::

            schema = Dataset(load_spec("configs/datasets/billion.yaml")).declared_schema()
            schema.feature("user_id").num_embeddings     # 1000000000
        """
        return schema_of(self.spec, declared_sizes(self.spec), default_dim, self.history_tasks)

    def save(self, path: str) -> None:
        self._require_fitted()
        save_encoders(path, self.sparse, self.dense, self._extra_state())

    def _extra_state(self) -> Dict[str, Any]:
        return {
            "dataset": self.spec.name,
            "valid_from": self.valid_from,
            "test_from": self.test_from,
            "source_rows": self.source_rows,
            "test_rows": self.test_rows,
            "valid_rows": self.rows.get(1),
            "split_counts": self.split_counts,
            "files": fingerprint(self.files()),
            "max_rows": self.max_rows,
        }

    def load(self, path: str) -> None:
        extra = load_encoders(path, self.sparse, self.dense)
        try:
            self._load_extra(extra)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"corrupt fitted encoders (entry {e})", file=os.path.join(path, "encoders.json")) from None

    def state_dict(self) -> Dict[str, Any]:
        """Fitted state as plain objects (for broadcasting from rank 0)."""
        self._require_fitted()
        return {
            "sparse": {e.name: (e.state(), e.vocab) for e in self.sparse},
            "dense": {e.spec.name: e.state() for e in self.dense},
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for e in self.sparse:
            enc_state, vocab = state["sparse"][e.name]
            e.load_state(enc_state, vocab)
        for d in self.dense:
            d.load_state(state["dense"][d.spec.name])
        self._load_extra(state["extra"])

    def _load_extra(self, extra: Dict[str, Any]) -> None:
        self.splitter.valid_from, self.splitter.test_from = extra["valid_from"], extra["test_from"]
        try:
            now: Optional[Fingerprint] = fingerprint(self.files())
        except DataError:  # the training files are not here (scoring new files): reading them says so
            now = None
        same_files = now is not None and extra.get("files") == now and extra.get("max_rows") == self.max_rows
        # encoders fitted on other files (scoring new data with a trained model): count the new files' rows
        counted = {None: extra["source_rows"], 1: extra.get("valid_rows"), 2: extra["test_rows"]} if same_files else {}
        self.rows = {k: v for k, v in counted.items() if v is not None}
        self.split_counts = extra.get("split_counts", {}) if same_files else {}
        self._fit_files = extra.get("files") if same_files else None
        self.fitted = True

    def files(self) -> List[str]:
        return [f for fs, _ in self._sources() for f in list_files(fs, self.root)]


def _kept_where(where: Where, keep: np.ndarray) -> Where:
    """The location of the rows of a chunk that ``keep`` ([n] bool) selects (``where`` may already be a subset)."""
    positions = np.flatnonzero(keep)
    return Where(where.file, where.first_row, positions if where.kept is None else where.kept[positions])


def _filtered(filters: Sequence[FilterSpec], table: pa.Table, where: Where) -> Tuple[pa.Table, Where]:
    """The rows of ``table`` that pass every filter, and their location."""
    if not filters or table.num_rows == 0:
        return table, where
    keep = np.ones(table.num_rows, dtype=bool)
    for f in filters:
        keep &= filter_mask(f, table, where)
    if keep.all():
        return table, where
    return table.filter(pa.array(keep)), _kept_where(where, keep)
