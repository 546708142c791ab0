"""The model-facing schema: which sparse and dense features exist, which tasks are predicted, and the
scenario and user columns.

The schema is what models read. It is built from a dataset spec after the id encoders are fitted (so table
sizes are known), or directly in Python. Nothing downstream hard-codes a column name.

Example::

    schema = Schema(
        sparse=(SparseFeature("user_id", 1000, 16, group="user"),
                SparseFeature("item_id", 500, 16, group="item")),
        dense=(DenseFeature("price"),),
        tasks=(Task("ctr"), Task("cvr", depends_on="ctr")),
        num_scenarios=3,
        user_feature="user_id",
    )
"""

from dataclasses import dataclass, replace
from typing import Dict, List, Literal, Optional, Sequence, Tuple, get_args

from recsys.errors import ConfigError

# --- shared vocabularies: dataset specs (recsys.data.spec) and run configs (recsys.config) type their keys with
# these, so each list of names lives here once ---------------------------------------------------------------
FeatureGroup = Literal["user", "host", "item", "context", "scenario"]  # what models select features by
Pooling = Literal["sum", "mean"]  # over a multi-hot sample's ids
TaskKind = Literal["binary", "regression"]
BinaryLoss = Literal["bce"]  # every binary task's loss, on logits
RegressionLoss = Literal["mse", "log_mse", "huber"]  # a regression task's ``loss``
# how the planner may place an embedding table, and the kernels that run it (``sharding`` in a run config)
ShardingType = Literal["table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise", "data_parallel"]
ComputeKernel = Literal["fused", "dense", "fused_uvm_caching", "fused_uvm"]

GROUPS: Tuple[str, ...] = get_args(FeatureGroup)
POOLINGS: Tuple[str, ...] = get_args(Pooling)
TASK_KINDS: Tuple[str, ...] = get_args(TaskKind)
BINARY_LOSS: str = get_args(BinaryLoss)[0]
REGRESSION_LOSSES: Tuple[str, ...] = get_args(RegressionLoss)
SHARDING_TYPES: Tuple[str, ...] = get_args(ShardingType)
COMPUTE_KERNELS: Tuple[str, ...] = get_args(ComputeKernel)
GPU_SHARDING_TYPES = ("row_wise", "table_row_wise")  # need CUDA/NCCL
GPU_COMPUTE_KERNELS = ("fused_uvm_caching", "fused_uvm")  # need CUDA (host memory addressed by the GPU)


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature looked up in an embedding table.

    Args:
        name: feature name; also the KJT key.
        num_embeddings: rows of its table (ids are guaranteed in ``[0, num_embeddings)``).
        embedding_dim: width of its embedding, any width >= 1 (FBGEMM tables take multiples of 4: the model's
            SparseArch pads the table and shows the model this width).
        group: semantic group (user, host, item, context, scenario) models select features by.
        multi_hot: whether a sample may carry several ids (pooled with ``pooling``).
        pooling: ``sum`` or ``mean`` over a sample's ids.
        table: name of the embedding table; features naming the same table share it.
    """

    name: str
    num_embeddings: int
    embedding_dim: int = 16
    group: FeatureGroup = "context"
    multi_hot: bool = False
    pooling: Pooling = "sum"
    table: Optional[str] = None

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ConfigError(f"feature '{self.name}': group '{self.group}' is not one of {GROUPS}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"feature '{self.name}': pooling '{self.pooling}' is not one of {POOLINGS}")
        if self.num_embeddings < 1:
            raise ConfigError(f"feature '{self.name}': num_embeddings must be >= 1, got {self.num_embeddings}")
        if self.embedding_dim < 1:
            raise ConfigError(f"feature '{self.name}': embedding_dim must be >= 1, got {self.embedding_dim}")

    @property
    def table_name(self) -> str:
        return self.table or self.name


@dataclass(frozen=True)
class DenseFeature:
    """A numeric feature; the reader has already transformed and validated it."""

    name: str


@dataclass(frozen=True)
class Task:
    """A prediction target.

    Args:
        name: task name; models return one output per task under this key.
        kind: ``binary`` (logit, BCE with logits) or ``regression`` (raw prediction).
        depends_on: parent task of a funnel (CVR depends on CTR): the label is only defined where the parent's
            label is positive, so losses and metrics restrict to those rows unless a model asks otherwise.
        loss: for regression, ``mse`` on the label, ``log_mse`` on ``log1p(label)`` or ``huber`` (binary tasks
            always use ``bce``); each loss's forward, inverse link and label domain are in
            :data:`recsys.task_losses.TASK_LOSSES`.
        weight: the task's weight in the total loss.
        eval_threshold: for regression, the label threshold that defines positives for AUC (e.g. a long view).
    """

    name: str
    kind: TaskKind = "binary"
    depends_on: Optional[str] = None
    loss: RegressionLoss = "mse"
    weight: float = 1.0
    eval_threshold: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ConfigError(f"task '{self.name}': kind '{self.kind}' is not one of {TASK_KINDS}")
        if self.kind == "regression" and self.loss not in REGRESSION_LOSSES:
            raise ConfigError(f"task '{self.name}': loss '{self.loss}' is not one of {REGRESSION_LOSSES}")

    @property
    def loss_name(self) -> str:
        """The key of this task's loss in :data:`recsys.task_losses.TASK_LOSSES` (``bce`` for binary tasks)."""
        return loss_name(self.kind, self.loss)


def loss_name(kind: str, loss: str) -> str:
    """The loss of a task of ``kind`` declaring ``loss``: ``bce`` for binary tasks, else ``loss``."""
    return BINARY_LOSS if kind == "binary" else loss


@dataclass(frozen=True)
class DataOutline:
    """What a dataset offers, known from its spec alone (models check their requirements against it before any
    data is read)."""

    name: str
    tasks: Tuple[Task, ...]
    num_scenarios: int
    user_feature: Optional[str]
    has_time: bool


@dataclass(frozen=True)
class Schema:
    """Features, tasks and the scenario/user columns of one dataset.

    Args:
        sparse: sparse features, in KJT key order.
        dense: dense features, in column order of ``Batch.dense``.
        tasks: prediction targets, in output order.
        num_scenarios: number of scenarios (1 when the data has none).
        scenario_names: display names of the scenarios.
        user_feature: the sparse feature holding the user id (GAUC grouping, per-user state), if any.
        scenario_feature: the sparse feature holding the scenario id, if the scenario is also a feature.
        eval_groups: extra columns evaluation breaks metrics down by (e.g. a lifecycle stage), with their value
            names.
        history_tasks: tasks whose per-user label history batches carry (``Batch.history``, see
            :mod:`recsys.data.history`).
    """

    sparse: Tuple[SparseFeature, ...]
    dense: Tuple[DenseFeature, ...] = ()
    tasks: Tuple[Task, ...] = (Task("ctr"),)
    num_scenarios: int = 1
    scenario_names: Tuple[str, ...] = ()
    user_feature: Optional[str] = None
    scenario_feature: Optional[str] = None
    eval_groups: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    history_tasks: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [f.name for f in self.sparse]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"schema: sparse feature names repeat: {sorted(dup)}")
        task_names = [t.name for t in self.tasks]
        if len(set(task_names)) != len(task_names):
            raise ConfigError(f"schema: task names repeat: {task_names}")
        if not self.tasks:
            raise ConfigError("schema: at least one task is needed")
        for t in self.tasks:
            if t.depends_on is not None:
                if t.depends_on not in task_names:
                    raise ConfigError(f"task '{t.name}': depends_on '{t.depends_on}' is not a task")
                if self.task(t.depends_on).kind != "binary":
                    raise ConfigError(f"task '{t.name}': depends_on '{t.depends_on}' must be a binary task")
        for ref in (self.user_feature, self.scenario_feature):
            if ref is not None and ref not in names:
                raise ConfigError(f"schema: '{ref}' is not a sparse feature")
        tables: Dict[str, SparseFeature] = {}
        for f in self.sparse:
            other = tables.setdefault(f.table_name, f)
            if (other.num_embeddings, other.embedding_dim) != (f.num_embeddings, f.embedding_dim):
                raise ConfigError(
                    f"features '{other.name}' and '{f.name}' share table '{f.table_name}' but differ in size"
                )
        for name in self.history_tasks:
            if name not in task_names:
                raise ConfigError(f"schema: history task '{name}' is not a task")
        if self.num_scenarios < 1:
            raise ConfigError("schema: num_scenarios must be >= 1")
        if self.scenario_names and len(self.scenario_names) != self.num_scenarios:
            raise ConfigError("schema: scenario_names must have num_scenarios entries")

    # --- look-ups -------------------------------------------------------------------------------------------
    @property
    def feature_names(self) -> List[str]:
        return [f.name for f in self.sparse]

    @property
    def dense_dim(self) -> int:
        return len(self.dense)

    @property
    def task_names(self) -> List[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> Task:
        for t in self.tasks:
            if t.name == name:
                return t
        raise ConfigError(f"schema: no task '{name}' (tasks: {self.task_names})")

    def feature(self, name: str) -> SparseFeature:
        for f in self.sparse:
            if f.name == name:
                return f
        raise ConfigError(f"schema: no sparse feature '{name}' (features: {self.feature_names})")

    def features_in(self, groups: Sequence[str]) -> List[SparseFeature]:
        """Sparse features whose group is in ``groups``, in schema order."""
        unknown = set(groups) - set(GROUPS)
        if unknown:
            raise ConfigError(f"schema: unknown feature groups {sorted(unknown)}; groups are {GROUPS}")
        return [f for f in self.sparse if f.group in groups]

    def scenario_name(self, index: int) -> str:
        return self.scenario_names[index] if self.scenario_names else str(index)

    def with_embedding_dim(self, dim: int) -> "Schema":
        """The same schema with every feature at ``dim`` (for models that need equal widths)."""
        return replace(self, sparse=tuple(replace(f, embedding_dim=dim) for f in self.sparse))

    def summary(self) -> str:
        rows = [
            f"  {f.name:<20} {f.group:<9} rows={f.num_embeddings:<10} dim={f.embedding_dim}"
            + (" multi-hot" if f.multi_hot else "")
            for f in self.sparse
        ]
        tasks = ", ".join(
            t.name + (f"|{t.depends_on}" if t.depends_on else "") + ("" if t.kind == "binary" else " (reg)")
            for t in self.tasks
        )
        return "\n".join(
            [
                f"sparse features ({len(self.sparse)}):",
                *rows,
                f"dense features: {self.dense_dim}",
                f"tasks: {tasks}",
                f"scenarios: {self.num_scenarios}",
            ]
        )
