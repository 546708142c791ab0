"""Scoring new files with a trained run (``recsys predict --input``): streamed, one Parquet part per rank,
atomic, resumable.

The input rows (every input file in order, each file's rows in order) are cut into one contiguous share per
rank, as training shares its source. Each rank reads its share chunk by chunk (Parquet row groups outside it
are not decoded), encodes the rows with the run's fitted encoders (unseen ids go to their out-of-vocabulary
rows, as in training), scores them with the sharded model and streams them into ``OUT/part-<rank>.parquet``:
memory stays that of one chunk whatever the input's size. A part is written under a temporary name and renamed
when complete, and records the job that wrote it (input files' names, sizes and modification times, checkpoint,
world size, columns): a rerun of the same job skips the parts already complete and scores only the others.
Rank 0 then writes ``OUT/predict.json`` (parts, rows, metrics when asked).

Output columns, per row in input order: the ``keep`` columns as the input has them (raw ids, exact), then
``score_<task>`` (probability for binary tasks, the prediction in the label's space for regression tasks);
with ``emit_indices`` also the encoded ``row_id``, ``scenario`` and ``user`` that the model saw.

Example::

    trainer = Trainer(cfg, fit_data=False)
    trainer.load(checkpoint, restore_loop=False, model_only=True)
    summary = score_files(trainer, ["new/*.parquet"], "scores", keep=["user_id", "item_id"],
                          checkpoint=checkpoint)
"""

import collections
import dataclasses
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.console import Progress
from recsys.data.columns import Columns
from recsys.data.fingerprint import fingerprint
from recsys.data.loader import padding_columns
from recsys.data.reader import SourceReader, list_files
from recsys.data.spec import FileSpec
from recsys.data.splits import rank_range
from recsys.errors import RecsysError
from recsys.io import atomic_path, write_json_atomic
from recsys.train.assembly import eval_batches
from recsys.train.dist import all_reduce_int, barrier, on_main
from recsys.train.metrics import PredictionCollector, evaluate

log = logging.getLogger(__name__)

PART = "part-{:05d}.parquet"
SUMMARY = "predict.json"
JOB_KEY = b"recsys.predict"  # Parquet key-value metadata of a part: the job that wrote it
INDEX_COLUMNS = ("row_id", "scenario", "user")


def input_files(patterns: Sequence[str]) -> List[str]:
    """The files of ``--input``: each a file, a folder (its data files) or a glob, expanded in order (a
    folder's or glob's files sorted); a file given twice is refused."""
    files: List[str] = []
    for pattern in patterns:
        files += [os.path.abspath(f) for f in list_files(FileSpec(path=pattern), os.getcwd())]
    seen = set()
    for f in files:
        if f in seen:
            raise RecsysError(f"{f}: given twice in --input (its rows would be scored twice)")
        seen.add(f)
    return files


def _count_rows(readers: Sequence[SourceReader], files: Sequence[str]) -> List[int]:
    """Rows of every input file (Parquet: its metadata; CSV: a pass over the columns read), every file's
    columns checked first, so that a missing column is reported before any row is scored."""
    for reader, path in zip(readers, files):
        reader.check_columns(path)
    return [reader.count_rows(path) for reader, path in zip(readers, files)]


def output_names(tasks: Sequence[str], keep: Sequence[str], emit_indices: bool) -> List[str]:
    """The columns of a part, in order; a kept column named like a score or index column is refused."""
    names = list(keep) + (list(INDEX_COLUMNS) if emit_indices else []) + [f"score_{t}" for t in tasks]
    seen = set()
    for name in names:
        if name in seen:
            raise RecsysError(
                f"--keep-columns: column '{name}' is given twice or is also an output column "
                f"({', '.join(names[len(keep) :])})"
            )
        seen.add(name)
    return names


@dataclasses.dataclass
class _Share:
    """One input file's part of a rank's share: rows ``[start, stop)`` of the file, the first of which is row
    ``offset + start`` over all input files."""

    reader: SourceReader
    path: str
    offset: int
    start: int
    stop: int


def _shares(
    readers: Sequence[SourceReader], paths: Sequence[str], counts: Sequence[int], rank: int, world_size: int
) -> List[_Share]:
    start, stop = rank_range(sum(counts), rank, world_size)
    out, offset = [], 0
    for reader, path, n in zip(readers, paths, counts):
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            out.append(_Share(reader, path, offset, lo, hi))
        offset += n
    return out


def _part_job(path: str) -> Optional[Dict[str, Any]]:
    """The job recorded in an existing part (None when it is no part of ours)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[JOB_KEY])
    except (OSError, pa.ArrowInvalid, KeyError, ValueError):
        return None


def _check_out_folder(out_dir: str, job: Dict[str, Any], rows: List[int], overwrite: bool) -> List[bool]:
    """Which ranks' parts are complete already (rank 0, before anything is written). Parts of another job are
    refused unless ``overwrite`` (then they are removed, as is an earlier summary)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RecsysError(f"{out_dir}: --out is a file; with --input it is a folder that receives part files")
    os.makedirs(out_dir, exist_ok=True)
    done, stale = [], []
    for rank, n in enumerate(rows):
        path = os.path.join(out_dir, PART.format(rank))
        if not os.path.exists(path):
            done.append(False)
            continue
        recorded = _part_job(path)
        same = recorded is not None and recorded.get("job") == job and recorded.get("rows") == n
        done.append(same)
        if not same:
            stale.append(path)
    parts = {PART.format(r) for r in range(len(rows))}
    stale += sorted(
        os.path.join(out_dir, f)
        for f in os.listdir(out_dir)
        if f.startswith("part-") and f.endswith(".parquet") and f not in parts
    )
    if stale and not overwrite:
        raise RecsysError(
            f"{stale[0]}: a part of another scoring job (other inputs, checkpoint, columns or "
            f"world size); give a new --out or --overwrite to replace it"
        )
    for path in stale + [os.path.join(out_dir, SUMMARY)]:
        if os.path.exists(path) and (path in stale or not all(done)):
            os.remove(path)
    return done


class _PartWriter:
    """Streams score tables into one Parquet file under a temporary name; :meth:`close` renames it into
    place."""

    def __init__(self, path: str, job: Dict[str, Any], rows: int) -> None:
        self.path = path
        self.metadata = {JOB_KEY: json.dumps({"job": job, "rows": rows}).encode()}
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        self._writer: Optional[pq.ParquetWriter] = None

    def write(self, table: pa.Table, source: str) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema.with_metadata(self.metadata))
        schema = self._writer.schema.remove_metadata()
        if not table.schema.equals(schema):
            try:
                table = table.cast(schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                name = next(f.name for f in schema if f.type != table.schema.field(f.name).type)
                raise RecsysError(
                    f"{source}: column '{name}' is {table.schema.field(name).type} here but "
                    f"{schema.field(name).type} in the files before it; a part holds one type "
                    "per column"
                ) from None
        self._writer.write_table(table)

    def close(self, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()
        if ok:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(RecsysError, RecsysError("stopped"), None)


def score_files(
    trainer: Any,
    inputs: Sequence[str],
    out_dir: str,
    keep: Sequence[str] = (),
    emit_indices: bool = False,
    checkpoint: str = "",
    overwrite: bool = False,
    metrics: bool = False,
) -> Dict[str, Any]:
    """Score the rows of ``inputs`` with ``trainer``'s model into ``out_dir`` (see the module docstring);
    collective: every rank calls it. Returns the summary rank 0 writes to ``predict.json``.

    Args:
        trainer: a :class:`~recsys.train.trainer.Trainer` with the checkpoint loaded (its dataset's encoders
            fitted).
        inputs: files, folders or globs (see :func:`input_files`).
        out_dir: the folder of the part files.
        keep: input columns copied next to the scores.
        emit_indices: also write the encoded row id, scenario and user.
        checkpoint: the checkpoint scored with (recorded in each part: a part of another checkpoint is stale).
        overwrite: replace parts of another job in ``out_dir``.
        metrics: also evaluate the scores (every input file labelled, no part skipped): AUC etc. as ``recsys
            eval`` reports them. The rows' scores are then gathered in memory.

    Raises:
        RecsysError: one line for a bad input file, column or value (no part is written half-way).
    """
    dataset, schema, dist = trainer.dataset, trainer.schema, trainer.dist
    tasks = schema.task_names
    files = input_files(inputs)
    names = output_names(tasks, keep, emit_indices)
    readers = [dataset.scoring_reader(f, keep) for f in files]
    counts = on_main(lambda: _count_rows(readers, files))
    world = dist.world_size
    job = {
        "inputs": fingerprint(files),
        "keep": list(keep),
        "emit_indices": emit_indices,
        "checkpoint": os.path.abspath(checkpoint) if checkpoint else "",
        "world_size": world,
        "columns": names,
    }
    rows = [rank_range(sum(counts), r, world)[1] - rank_range(sum(counts), r, world)[0] for r in range(world)]
    done = on_main(lambda: _check_out_folder(out_dir, job, rows, overwrite))
    if metrics and any(done):
        log.warning(
            "predict --metrics: parts %s were complete and are not scored again; the metrics cover the "
            "rows scored now only",
            [r for r, d in enumerate(done) if d],
        )
    rank = dist.rank
    shares = [] if done[rank] else _shares(readers, files, counts, rank, world)
    collector = PredictionCollector(schema) if metrics else None
    writer = _PartWriter(os.path.join(out_dir, PART.format(rank)), job, rows[rank]) if shares else None
    labelled = [True]
    pending: collections.deque = collections.deque()
    padding = padding_columns(dataset.empty()).to_batch(schema.feature_names)
    batch_size = trainer.cfg.data.eval_batch_size or trainer.cfg.data.batch_size
    ok = False
    try:
        with Progress(
            "predict",
            sum(rows[r] for r in range(world) if not done[r]),
            unit="row",
            enabled=trainer.cfg.train.progress and trainer.is_main,
            unit_scale=True,
        ) as bar:
            steps = _in_step(_batches(dataset, shares, keep, schema.feature_names, batch_size, labelled), padding)
            for batch, out in eval_batches(trainer.dmp, _queued(steps, pending), trainer.device):
                kept, size, source = pending.popleft()
                if collector is not None:
                    collector.add(out.outputs, batch)
                if size and writer is not None:
                    writer.write(_score_table(kept, batch, out.outputs, schema, size, emit_indices), source)
                bar.update(all_reduce_int(size, "sum"))
        ok = True
    finally:
        if writer is not None:
            writer.close(ok)
    every_labelled = all_reduce_int(int(labelled[0]), "min") == 1
    barrier()
    summary: Dict[str, Any] = {
        "parts": [PART.format(r) for r in range(world) if rows[r]],
        "rows": sum(rows),
        "rows_per_part": rows,
        "skipped": [PART.format(r) for r, d in enumerate(done) if d],
        "inputs": files,
        "columns": names,
        "checkpoint": job["checkpoint"],
    }
    if collector is not None:
        if not every_labelled:
            log.warning("predict --metrics: some input files have no label columns; no metrics")
        else:
            summary["metrics"] = evaluate(schema, collector.gather())
    if trainer.is_main:
        write_json_atomic(os.path.join(out_dir, SUMMARY), summary)
    barrier()
    return summary


def _batches(
    dataset: Any,
    shares: Sequence[_Share],
    keep: Sequence[str],
    feature_names: Sequence[str],
    batch_size: int,
    labelled: List[bool],
) -> Iterator[Tuple[Any, Optional[pa.Table], int, str]]:
    """``(batch, kept raw columns, real rows, file)`` of this rank's share, chunk by chunk; ``labelled[0]``
    turns False at the first chunk without labels."""
    for share in shares:
        for chunk in share.reader.chunks(share.start, share.stop):
            chunk = dataclasses.replace(chunk, global_row=share.offset + chunk.file_row)
            cols, has_labels = dataset.encode_for_scoring(chunk)
            labelled[0] = labelled[0] and has_labels
            kept = chunk.table.select(list(keep))
            for lo in range(0, len(cols), batch_size):
                hi = min(lo + batch_size, len(cols))
                part: Columns = cols.take(np.arange(lo, hi))
                yield part.to_batch(feature_names), kept.slice(lo, hi - lo), hi - lo, share.path


def _in_step(
    batches: Iterator[Tuple[Any, Optional[pa.Table], int, str]], padding: Any
) -> Iterator[Tuple[Any, Optional[pa.Table], int, str]]:
    """``batches`` kept in step with the other ranks' (sharded forward passes are collective): a rank whose
    share is done runs placeholder batches until every share is; a rank whose input fails stops every rank
    (each raises: the failing one its own one-line error)."""
    while True:
        error: Optional[RecsysError] = None
        try:
            item = next(batches, None)
        except RecsysError as e:
            item, error = None, e
        state = all_reduce_int(2 if error is not None else (1 if item is not None else 0), "max")
        if state == 2:
            raise error or RecsysError(
                "predict: another rank stopped on an input error (its message is in "
                "that rank's log); nothing of this run was kept"
            )
        if state == 0:
            return
        yield item if item is not None else (padding, None, 0, "")


def _queued(steps: Iterator[Tuple[Any, Optional[pa.Table], int, str]], pending: collections.deque) -> Iterator[Any]:
    """The batches of ``steps``; the rest of each step waits in ``pending`` for its batch's outputs."""
    for batch, kept, size, source in steps:
        pending.append((kept, size, source))
        yield batch


def _score_table(
    kept: pa.Table, batch: Any, outputs: Dict[str, Any], schema: Any, size: int, emit_indices: bool
) -> pa.Table:
    """One batch's output rows: kept columns, indices when asked, scores."""
    from recsys.train.losses import prediction_of

    columns: Dict[str, Any] = {name: kept.column(name) for name in kept.column_names}
    if emit_indices:
        for name in INDEX_COLUMNS:
            columns[name] = getattr(batch, name)[:size].cpu().numpy()
    for t in schema.tasks:
        columns[f"score_{t.name}"] = prediction_of(t, outputs[t.name].float())[:size].cpu().numpy().astype(np.float32)
    return pa.table(columns)
