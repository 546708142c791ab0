"""Which columns a dataset spec reads, and where each comes from: the source files, a derived column or a
joined side table. Labels never feed features, not even through a derived column.
"""

from typing import Callable, List, Optional, Set

from recsys.data.spec import DatasetSpec, JoinSpec
from recsys.errors import ConfigError


def label_columns(spec: DatasetSpec) -> Set[str]:
    """The columns holding labels or true probabilities."""
    return {t.source_column for t in spec.tasks} | set(spec.oracle.values())


def check_no_label_leak(spec: DatasetSpec) -> None:
    """Refuse specs where a feature is, or is derived from, a label or oracle column."""
    tainted = set(label_columns(spec))
    for d in spec.derived:
        if ({d.column} | set(d.columns)) & tainted:
            tainted.add(d.name)
    for kind, features in (("sparse", spec.sparse), ("dense", spec.dense)):
        for f in features:
            if f.source_column in tainted:
                raise ConfigError(
                    f"spec '{spec.name}': {kind} feature '{f.name}' reads label column "
                    f"'{f.source_column}' (a label must not leak into features)"
                )


def feature_columns(spec: DatasetSpec) -> Set[str]:
    """The columns a model's inputs come from (sparse and dense features, the scenario), whatever their
    origin: what a file of rows to score must provide."""
    cols = {x.source_column for x in spec.sparse} | {x.source_column for x in spec.dense}
    if spec.scenario:
        cols.add(spec.scenario.column)
    return cols


def used_columns(spec: DatasetSpec) -> Set[str]:
    """Every column the spec maps to the schema (features, labels, scenario, user, time, weight, row id,
    groups), whatever its origin."""
    cols = feature_columns(spec) | label_columns(spec)
    cols |= {c for c in (spec.time, spec.weight, spec.row_id) if c}
    cols |= {g.column for g in spec.eval_groups.values()}
    return cols


def source_columns(
    spec: DatasetSpec, join_columns: Callable[[JoinSpec], List[str]], need: Optional[Set[str]] = None
) -> Set[str]:
    """Columns the source files must provide for ``need`` (default: :func:`used_columns` and the filters'
    columns): derived ones are replaced by their inputs, joined ones (``join_columns(join)`` are a side table's
    columns) by the join key."""
    need = set(used_columns(spec) | {f.column for f in spec.filter} if need is None else need)
    for d in reversed(spec.derived):
        if d.name in need:
            need.discard(d.name)
            need |= {d.column} if d.column else set()
            need |= set(d.columns)
    for j in spec.joins:
        cols = join_columns(j)
        need -= set(cols) - {j.on}
        need.add(j.on)
    return need
