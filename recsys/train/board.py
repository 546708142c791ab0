"""TensorBoard for a training run: one named run folder, train/valid/test before the model's internals, per-slice
metrics side by side, hyper-parameters and final metrics for the HParams tab, and the main feature tables in the
embedding projector.

Events go to ``run_dir/tb/<run name>/`` (the run folder's name), so ``tensorboard --logdir runs`` and
``tensorboard --logdir runs/<run>/tb`` both name the run. Tags, in the order TensorBoard sorts them::

    1_train/loss, 1_train/loss/<task or loss term>   the global batch's loss (tasks with weight 0 left out)
    1_train/samples_per_sec                          summed over ranks
    1_train/lr/<optimizer group>                     embedding, embedding_dense, dense, a model's own groups
    1_train/grad_norm/<optimizer group>              L2 norm of the dense gradients a group applied
    1_train/grad_norm/before_clip                    with train.grad_clip_norm: the norm before clipping
    1_train/rows_updated/<table>                     distinct rows a step updated (summed over ranks; one
                                                     table per set of features: wide copies left out)
    2_valid/<task>/<metric>[/<slice>]                every validation; slices: scenario=..., stage=...
    2_valid/best/<early-stopping metric>             the best value so far
    3_test/<task>/<metric>[/<slice>]                 the restored best model, once at the end
    4_model/<module>/<stat>                          what modules expose through tensorboard_stats()

Counts that never change (rows, ``count``, ``gauc_users``, ``ndcg_skipped``, ``pos_rate``) are a text table
(``2_valid/counts``, ``3_test/counts``), not charts. The Custom Scalars tab has one chart per task and metric
with a line per scenario (and per evaluation group), and the train charts with one line per term or group. The
HParams tab lists the config and the final metrics of every run. The projector holds, after each validation, a
sample of the user, item and host tables (the most frequent ids first, labelled with their raw ids), besides
whatever modules expose through ``tensorboard_embeddings()``.
"""

import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
from tensorboard.plugins.hparams import metadata as hp_metadata
from tensorboard.plugins.hparams import summary_v2 as hp
from torchrec.modules.embedding_configs import EmbeddingBagConfig

from recsys.schema import Schema
from recsys.train.metrics import NDCG_KS, undefined_metric
from recsys.train.run_folder import flatten
from recsys.train.sharding import table_state_key

if TYPE_CHECKING:
    from torch.utils.tensorboard.writer import FileWriter

log = logging.getLogger(__name__)

TRAIN, VALID, TEST, MODEL = "1_train", "2_valid", "3_test", "4_model"
# report entries that are properties of the data, the same at every evaluation
CONSTANT_METRICS = ("count", "gauc_users", "ndcg_skipped", "pos_rate")
# metrics charted per slice in the Custom Scalars tab
SLICE_CHART_METRICS = ("auc", "gauc", "logloss", "ctcvr_auc", "rmse")
# metrics of the HParams tab (test split, overall), when a task has them
HPARAM_METRICS = ("auc", "gauc", "logloss", "ctcvr_auc", "rmse", f"ndcg@{NDCG_KS[-1]}")
# feature groups whose largest table goes to the projector, and how many of its rows
PROJECTOR_GROUPS = ("user", "item", "host")
PROJECTOR_ROWS = 500
# config keys that say where things are or how they are shown, not how the model was trained
NOT_HPARAMS = (
    "data.spec",
    "data.path",
    "data.side_columns",
    "run_dir",
    "tensorboard",
    "train.progress",
    "train.log_every_steps",
    "train.keep_checkpoints",
    "train.task_weights",
    "model.params",
)
# what tells runs apart first: listed first, and the five columns shown by default, in the HParams tab
KEY_HPARAMS = ("dataset", "model.embedding_dim", "model.name", "model.params", "train.task_weights")


def run_name(run_dir: str) -> str:
    """The run's name in TensorBoard: its folder's name."""
    return os.path.basename(os.path.normpath(os.path.abspath(run_dir))) or "run"


def event_dir(run_dir: str) -> str:
    """``run_dir/tb/<run name>``: where a run's events, projector files and hparams go."""
    return os.path.join(run_dir, "tb", run_name(run_dir))


def metric_scalars(report: Mapping[str, float], section: str, skip_tasks: Iterable[str] = ()) -> Dict[str, float]:
    """The charted entries of a metric report as ``{tag: value}``: every task (but ``skip_tasks``), metric and
    slice, without the constants (:data:`CONSTANT_METRICS`) and undefined (NaN) values.

    Example::

        metric_scalars({"ctr/auc": 0.7, "ctr/auc/scenario=feed": 0.71, "ctr/count": 600.0}, VALID)
        # {'2_valid/ctr/auc': 0.7, '2_valid/ctr/auc/scenario=feed': 0.71}
    """
    skip = set(skip_tasks)
    out = {}
    for key, value in report.items():
        parts = key.split("/")
        if len(parts) < 2 or parts[0] in skip or parts[1] in CONSTANT_METRICS or value != value:
            continue
        out[f"{section}/{key}"] = float(value)
    return out


def counts_table(schema: Schema, report: Mapping[str, float], skip_tasks: Iterable[str] = ()) -> str:
    """The report's constants (rows, per task and slice :data:`CONSTANT_METRICS`) as a markdown table."""
    skip = set(skip_tasks)
    slices: List[str] = [""]
    present: List[str] = []
    for key in report:
        parts = key.split("/")
        if len(parts) >= 2 and parts[1] in CONSTANT_METRICS:
            if parts[1] not in present:
                present.append(parts[1])
            if len(parts) == 3 and parts[2] not in slices:
                slices.append(parts[2])
    columns = [m for m in CONSTANT_METRICS if m in present]
    lines = [
        f"rows: {int(report.get('rows', 0)):,}",
        "",
        "| task | slice | " + " | ".join(columns) + " |",
        "|---|---|" + "---:|" * len(columns),
    ]
    for task in schema.task_names:
        if task in skip:
            continue
        for sl in slices:
            cells = [report.get(f"{task}/{m}" + (f"/{sl}" if sl else "")) for m in columns]
            if any(c is not None for c in cells):
                text = [
                    "" if c is None or c != c else (f"{c:.4f}" if m == "pos_rate" else f"{int(c):,}")
                    for m, c in zip(columns, cells)
                ]
                lines.append(f"| {task} | {sl or 'all'} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def scalars_layout(schema: Schema, report: Mapping[str, float], skip_tasks: Iterable[str] = ()) -> Dict[str, Any]:
    """The Custom Scalars layout: the train charts (a line per loss term, optimizer group, table), then per
    slice dimension (scenario, each evaluation group) one chart per task and metric with the overall value and a
    line per slice value."""
    layout: Dict[str, Dict[str, List[Any]]] = {
        "train": {
            "loss per term": ["Multiline", [rf"^{TRAIN}/loss(/.*)?$"]],
            "learning rate per optimizer group": ["Multiline", [rf"^{TRAIN}/lr/"]],
            "gradient norm per optimizer group": ["Multiline", [rf"^{TRAIN}/grad_norm/"]],
            "embedding rows updated per step": ["Multiline", [rf"^{TRAIN}/rows_updated/"]],
        }
    }
    skip = set(skip_tasks)
    dimensions: List[str] = []
    for key in report:
        parts = key.split("/")
        if len(parts) == 3 and "=" in parts[2]:
            dim = parts[2].split("=", 1)[0]
            if dim not in dimensions:
                dimensions.append(dim)
    for dim in dimensions:
        charts: Dict[str, List[Any]] = {}
        for task in schema.task_names:
            if task in skip:
                continue
            for metric in SLICE_CHART_METRICS:
                base = f"{task}/{metric}"
                if any(k.startswith(f"{base}/{dim}=") for k in report):
                    pattern = rf"^{VALID}/{re.escape(base)}(/{re.escape(dim)}=.*)?$"
                    charts[f"{task} {metric} by {dim}"] = ["Multiline", [pattern]]
        if charts:
            layout[f"valid by {dim}"] = charts
    return layout


def hparam_values(
    config: Mapping[str, Any], task_weights: Mapping[str, float], dataset: str, world_size: int
) -> Dict[str, Any]:
    """The run's hyper-parameters for the HParams tab: every config key but paths and display keys
    (:data:`NOT_HPARAMS`), the effective task weights and the model's params as one text each (so runs of
    different models share the same columns), the dataset and the world size. Values are numbers, booleans or
    text (lists and None as text)."""
    out: Dict[str, Any] = {"dataset": dataset, "world_size": world_size}
    for key, value in flatten(dict(config)).items():
        if any(key == k or key.startswith(k + ".") for k in NOT_HPARAMS):
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    out["model.params"] = json.dumps(config.get("model", {}).get("params", {}), sort_keys=True)
    out["train.task_weights"] = ", ".join(f"{t}={w:g}" for t, w in task_weights.items())
    return out


def hparam_metrics(schema: Schema, metric: str, skip_tasks: Iterable[str], oracle: Iterable[str]) -> List[str]:
    """Tags of the final metrics the HParams tab shows: the best validation value of the early-stopping
    metric, then the overall test metrics (:data:`HPARAM_METRICS`) each trained task can have."""
    skip = set(skip_tasks)
    tags = [f"{VALID}/best/{metric}"]
    for name in HPARAM_METRICS:  # each task's AUC first: the tab shows five metrics by default
        for task in schema.tasks:
            if (
                task.name not in skip
                and undefined_metric(f"{task.name}/{name}", schema.tasks, schema.user_feature is not None, oracle)
                is None
            ):
                tags.append(f"{TEST}/{task.name}/{name}")
    return tags


def _hparams_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> summary_pb2.Summary:
    summary = summary_pb2.Summary()
    summary.value.add(tag=tag, metadata=hp_metadata.create_summary_metadata(data), tensor=hp_metadata.NULL_TENSOR)
    return summary


def experiment_summary(hparams: Iterable[str], metrics: Sequence[str]) -> summary_pb2.Summary:
    """The HParams tab's experiment: the hyper-parameter names (:data:`KEY_HPARAMS` marked as the ones that
    differ between runs, so the tab lists and shows them first) and the metrics' tags."""
    infos = [api_pb2.HParamInfo(name=name, differs=name in KEY_HPARAMS) for name in hparams]
    shown = {VALID: "valid", TEST: "test"}
    metric_infos = [
        api_pb2.MetricInfo(
            name=api_pb2.MetricName(tag=tag), display_name=" ".join(shown.get(p, p) for p in tag.split("/", 1))
        )
        for tag in metrics
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    return _hparams_summary(hp_metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_end_summary(status: int = api_pb2.STATUS_SUCCESS) -> summary_pb2.Summary:
    """The end of a run's session in the HParams tab (success unless told)."""
    end = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
    return _hparams_summary(hp_metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


# --- the projector's feature tables --------------------------------------------------------------------------
def projector_tables(
    schema: Schema, encodings: Mapping[str, str], tables: Mapping[str, Tuple[str, EmbeddingBagConfig]]
) -> List[Tuple[str, str]]:
    """(feature, table) of the projector: for each group of :data:`PROJECTOR_GROUPS`, the feature with the most
    rows whose rows have names (``vocab`` or ``identity`` encoding; the schema's user feature for ``user``),
    with the widest table it is looked up in.

    Args:
        schema: the features, their groups and sizes.
        encodings: feature name -> encoding policy (``vocab``, ``identity``, ``hash``).
        tables: :func:`recsys.train.sharding.embedding_configs` of the model.
    """
    out = []
    for group in PROJECTOR_GROUPS:
        named = [f for f in schema.sparse if f.group == group and encodings.get(f.name) in ("vocab", "identity")]
        if group == "user" and schema.user_feature in {f.name for f in named}:
            named = [f for f in named if f.name == schema.user_feature]
        if not named:
            continue
        feature = max(named, key=lambda f: (f.num_embeddings, not f.multi_hot))  # first of equals: spec order
        candidates = [
            (cfg.embedding_dim, name) for name, (_, cfg) in tables.items() if feature.name in cfg.feature_names
        ]
        if candidates:
            out.append((feature.name, max(candidates, key=lambda c: c[0])[1]))
    return out


def projector_rows(encoder: Any, limit: int = PROJECTOR_ROWS) -> Tuple[np.ndarray, List[str]]:
    """The rows of a feature's table the projector shows, with their raw ids: a ``vocab`` feature's ``limit``
    most frequent values (rows 1.., row 0 being the out-of-vocabulary bucket), an ``identity`` feature's first
    ``limit`` ids.

    Args:
        encoder: the feature's fitted :class:`~recsys.data.encoding.SparseEncoder`.
    """
    if encoder.spec.encoding == "vocab":
        values = encoder.vocab.slice(0, min(limit, len(encoder.vocab))).to_pylist()
        rows = np.arange(1, len(values) + 1, dtype=np.int64)
    else:
        rows = np.arange(min(limit, encoder.num_embeddings), dtype=np.int64)
        values = rows.tolist()
    # one label per line of the projector's metadata file
    return rows, [re.sub(r"[\t\r\n]", " ", str(v)) for v in values]


def gather_rows(
    state: Mapping[str, Any], fqn: str, table: EmbeddingBagConfig, rows: np.ndarray, world_size: int, rank: int
) -> Optional[np.ndarray]:
    """Rows ``rows`` of a (sharded) embedding table as a float32 [len(rows), dim] array on rank 0, None on the
    other ranks; collective when ``world_size > 1``. Each rank contributes the part of its local shards
    (row-, column- or table-wise) that holds sampled rows; a data-parallel table is read on rank 0.

    Args:
        state: the DistributedModelParallel's ``state_dict()``.
        fqn: the EmbeddingBagCollection's name in the module (see ``embedding_configs``).
        table: the table's config.
        rows: row indices, each in ``[0, num_embeddings)``.
    """
    value = state[table_state_key(state, fqn, table.name)]
    pieces: List[Tuple[np.ndarray, int, np.ndarray]] = []  # (positions in rows, first column, values)
    if hasattr(value, "local_shards"):
        for shard in value.local_shards():
            row0, col0 = (int(x) for x in shard.metadata.shard_offsets)
            inside = np.flatnonzero((rows >= row0) & (rows < row0 + int(shard.metadata.shard_sizes[0])))
            if len(inside):
                index = torch.as_tensor(rows[inside] - row0, device=shard.tensor.device)
                pieces.append((inside, col0, shard.tensor.detach()[index].float().cpu().numpy()))
    elif rank == 0 and isinstance(value, torch.Tensor) and not hasattr(value, "to_local"):  # data-parallel copy
        index = torch.as_tensor(rows, device=value.device)
        pieces.append((np.arange(len(rows)), 0, value.detach()[index].float().cpu().numpy()))
    if world_size > 1:
        everyone: List[Any] = [None] * world_size
        dist.all_gather_object(everyone, pieces)
        pieces = [p for part in everyone for p in part]
    if rank != 0:
        return None
    out = np.zeros((len(rows), table.embedding_dim), dtype=np.float32)
    for positions, col0, values in pieces:
        out[positions, col0 : col0 + values.shape[1]] = values
    return out


class RunBoard:
    """The TensorBoard writer of one training run (rank 0).

    Args:
        run_dir: the run folder (events go to :func:`event_dir`).
        schema: the run's tasks and features.
        untrained: tasks with loss weight 0 (left out of every chart).
        purge_step: after a resume, events a previous attempt wrote from this step on are dropped.

    Example::

        board = RunBoard(run_dir, schema, untrained=["cvr"])
        board.scalars({"1_train/loss": 0.41}, step=10)
    """

    def __init__(
        self, run_dir: str, schema: Schema, untrained: Sequence[str] = (), purge_step: Optional[int] = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.schema = schema
        self.untrained = list(untrained)
        self.writer = SummaryWriter(event_dir(run_dir), purge_step=purge_step)
        self._layout_written = False
        self._counts_written = False

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def _file_writer(self) -> "FileWriter":
        writer = self.writer.file_writer
        if writer is None:
            raise RuntimeError("the TensorBoard writer is closed")
        return writer

    def start(self, hparams: Mapping[str, Any], metrics: Sequence[str], name: str) -> None:
        """The HParams tab's experiment and this run's session (its hyper-parameters)."""
        writer = self._file_writer()
        writer.add_summary(experiment_summary(hparams, metrics))
        writer.add_summary(hp.hparams_pb(dict(hparams), trial_id=name))

    def report(self, report: Mapping[str, float], section: str, step: int) -> None:
        """A metric report: its charted entries as scalars, its constants once as a text table; the Custom
        Scalars layout with the first validation report."""
        if not report:
            return
        self.scalars(metric_scalars(report, section, self.untrained), step)
        if section == VALID and not self._counts_written:
            self._counts_written = True
            self.writer.add_text(f"{VALID}/counts", counts_table(self.schema, report, self.untrained), step)
        if section == TEST:
            self.writer.add_text(f"{TEST}/counts", counts_table(self.schema, report, self.untrained), step)
        if section == VALID and not self._layout_written:
            self._layout_written = True
            self.writer.add_custom_scalars(scalars_layout(self.schema, report, self.untrained))

    def module_stats(self, tag: str, value: torch.Tensor, step: int) -> None:
        """One value a module exposes: a scalar, or a histogram of several."""
        value = value.detach().float().cpu()
        if value.numel() == 1:
            self.writer.add_scalar(f"{MODEL}/{tag}", float(value), step)
        elif value.numel() > 1:
            self.writer.add_histogram(f"{MODEL}/{tag}", value, step)

    def embedding(self, tag: str, rows: Any, labels: Sequence[str], step: int) -> None:
        if len(rows):
            self.writer.add_embedding(rows, metadata=list(labels), tag=tag, global_step=step)

    def finish(self) -> None:
        """The run's session ended (HParams tab) and every event is on disk."""
        self._file_writer().add_summary(session_end_summary())
        self.writer.flush()
