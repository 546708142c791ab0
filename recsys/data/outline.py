"""What a dataset spec promises models: its :class:`~recsys.schema.DataOutline` (tasks, scenarios, user, time;
known without reading data) and its :class:`~recsys.schema.Schema` once table sizes are known."""

from typing import List, Sequence, Tuple

from recsys.data.spec import DatasetSpec
from recsys.errors import ConfigError
from recsys.schema import DataOutline, DenseFeature, Schema, SparseFeature, Task


def tasks_of(spec: DatasetSpec) -> Tuple[Task, ...]:
    """The spec's tasks as the schema's."""
    return tuple(Task(t.name, t.kind, t.depends_on, t.loss, t.weight, t.eval_threshold) for t in spec.tasks)


def num_scenarios(spec: DatasetSpec) -> int:
    """Scenarios the spec declares (1 without a scenario column)."""
    return spec.scenario.size() if spec.scenario else 1


def outline_of(spec: DatasetSpec) -> DataOutline:
    """What the spec promises (tasks, scenarios, user, time) without reading any data."""
    return DataOutline(
        name=spec.name,
        tasks=tasks_of(spec),
        num_scenarios=num_scenarios(spec),
        user_feature=spec.user,
        has_time=spec.time is not None,
    )


def declared_sizes(spec: DatasetSpec) -> List[int]:
    """Every sparse feature's table size from the spec alone (``num_embeddings``; a ``vocab`` feature's cap
    counts as its size); a feature without one is an error."""
    missing = [s.name for s in spec.sparse if not s.num_embeddings]
    if missing:
        raise ConfigError(
            f"spec '{spec.name}': sparse feature(s) {', '.join(repr(m) for m in missing)} declare no "
            "num_embeddings; table sizes are needed to build the model without data (give num_embeddings, "
            "or use the hash/identity encodings)"
        )
    return [int(s.num_embeddings or 0) for s in spec.sparse]  # every one is set (checked above)


def schema_of(spec: DatasetSpec, sizes: Sequence[int], default_dim: int, history_tasks: Sequence[str]) -> Schema:
    """The schema of ``spec`` with table sizes ``sizes`` (one per sparse feature, in order); features without an
    ``embedding_dim`` get ``default_dim``."""
    scenario_features = [s.name for s in spec.sparse if s.group == "scenario"]
    return Schema(
        sparse=tuple(
            SparseFeature(
                name=s.name,
                num_embeddings=size,
                embedding_dim=s.embedding_dim or default_dim,
                group=s.group,
                multi_hot=s.multi_hot,
                pooling=s.pooling,
                table=s.table,
            )
            for s, size in zip(spec.sparse, sizes)
        ),
        dense=tuple(DenseFeature(d.name) for d in spec.dense),
        tasks=tasks_of(spec),
        num_scenarios=num_scenarios(spec),
        scenario_names=tuple(spec.scenario.display_names()) if spec.scenario else (),
        user_feature=spec.user,
        scenario_feature=scenario_features[0] if len(scenario_features) == 1 else None,
        eval_groups=tuple((k, tuple(v.display_names())) for k, v in spec.eval_groups.items()),
        history_tasks=tuple(history_tasks),
    )
