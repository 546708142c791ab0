"""SparseArch: every sparse feature of a schema in ONE torchrec EmbeddingBagCollection.

One EBC per model means DistributedModelParallel shards a single module with FBGEMM's fused table-batched
kernels, and TrainPipelineSparseDist can overlap its input distribution with the previous batch. Models pick
feature embeddings by name or group from :class:`Embeddings`; no model creates a second table.

:class:`FeatureInput` is the input block of almost every model: the SparseArch plus the model's main input, the
chosen features' embeddings concatenated with the dense features (``features`` and ``use_dense`` of
:class:`FeatureOptions`). :func:`first_order_logits` (with :func:`dense_first_order`) is the wide (first-order)
part of Wide&Deep, DeepFM and MultiCBMR.

Shapes: B batch, F features, D embedding width, Dd dense features, W wide width, T tasks.
"""

import difflib
import functools
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.schema import Schema, SparseFeature

WIDE_SUFFIX = "__wide"


def check_features(schema: Schema, names: Optional[Sequence[str]], option: str) -> List[str]:
    """``names`` (all sparse features of ``schema`` when None), each checked against the schema.

    Raises:
        ConfigError: naming ``model.params.<option>`` and the closest feature name.
    """
    known = schema.feature_names
    if names is None:
        return known
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"model.params.{option}: '{n}' is not a sparse feature{hint}")
    return list(names)


def table_width(dim: int) -> int:
    """The width a table of embedding width ``dim`` is created at: the next multiple of 4 (FBGEMM's TBE kernels
    take no other widths); :class:`SparseArch` shows models only the first ``dim`` columns."""
    return -(-dim // 4) * 4


def wide_width(num_tasks: int) -> int:
    """Width of the wide tables: one column per task, rounded up to FBGEMM's multiple of 4."""
    return max(4, -(-num_tasks // 4) * 4)


def _column_runs(names: List[str], widths: List[int], wanted: List[str]) -> List[Tuple[int, int]]:
    """Column ranges ``(start, end)`` of a KeyedTensor laid out as ``names`` / ``widths`` that hold ``wanted`` in
    order, adjacent keys merged into one range (TorchScript-compatible: exported programs run it).

    Raises:
        KeyError: a wanted key is not in ``names``.
    """
    starts: Dict[str, Tuple[int, int]] = {}
    at = 0
    for i in range(len(names)):
        starts[names[i]] = (at, at + widths[i])
        at += widths[i]
    runs: List[Tuple[int, int]] = []
    for key in wanted:
        a, b = starts[key]
        if len(runs) > 0 and runs[-1][1] == a:
            runs[-1] = (runs[-1][0], b)
        else:
            runs.append((a, b))
    return runs


@functools.lru_cache(maxsize=256)
def _cached_runs(names: Tuple[str, ...], widths: Tuple[int, ...], wanted: Tuple[str, ...]) -> List[Tuple[int, int]]:
    return _column_runs(list(names), list(widths), list(wanted))  # eager steps: one layout, computed once


@torch.fx.wrap
def keyed_columns(kt: KeyedTensor, keys: List[str]) -> torch.Tensor:
    """[B, sum of widths]: the columns of ``keys`` of ``kt``, in order.

    ``kt.values()`` itself when ``keys`` are all its keys in order, a view of its columns when they are
    adjacent, else one concatenation of the runs of adjacent keys: no per-feature views are made and
    concatenated again. Opaque to FX tracing (one call in a pipeline's traced graph, run on the real KeyedTensor);
    TorchScript compiles it for exported programs.

    Example::

        kt = KeyedTensor(keys=["a", "b", "c"], length_per_key=[2, 2, 4], values=torch.arange(16.).view(2, 8))
        keyed_columns(kt, ["b", "c"])     # kt.values()[:, 2:8]
    """
    values = kt.values()
    if torch.jit.is_scripting():
        runs = _column_runs(kt.keys(), kt.length_per_key(), keys)
    else:
        runs = _cached_runs(tuple(kt.keys()), tuple(kt.length_per_key()), tuple(keys))
    if len(runs) == 1:
        a, b = runs[0]
        return values if a == 0 and b == values.shape[1] else values[:, a:b]
    parts: List[torch.Tensor] = []
    for run in runs:
        parts.append(values[:, run[0] : run[1]])
    return torch.cat(parts, dim=1)


@torch.fx.wrap
def keyed_stack(kt: KeyedTensor, keys: List[str]) -> torch.Tensor:
    """[B, F, D]: the columns of ``keys`` (all of width D) of ``kt`` as one contiguous tensor (a view of
    ``kt.values()`` when ``keys`` are all its keys in order); see :func:`keyed_columns`."""
    x = keyed_columns(kt, keys)
    return x.contiguous().view(x.shape[0], len(keys), -1)


class KeyedColumns(Mapping[str, torch.Tensor]):
    """Name -> [B, D] view of a KeyedTensor's columns (``names`` maps a feature to its key); views are made on
    first access only."""

    def __init__(self, kt: KeyedTensor, names: Mapping[str, str]) -> None:
        self._kt = kt
        self._names = names
        self._views: Dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._views:
            self._views[name] = keyed_columns(self._kt, [self._names[name]])
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Embeddings:
    """Pooled embeddings of one batch.

    Built from per-feature tensors, or with :meth:`keyed` from the one KeyedTensor a lookup returns (what
    :class:`SparseArch` does): then :meth:`concat` and :meth:`stack` read the features' columns of it directly
    (no copy when a model reads every feature in the lookup's order) and ``features[name]`` is a view made on
    first access. The values are the same either way, bit for bit.

    Args:
        features: name -> [B, D_name].
        wide: name -> [B, W] (when the arch has wide tables).

    Shapes: ``features[name]`` is [B, D_name]; ``wide[name]`` is [B, W] (when the arch has wide tables).
    """

    def __init__(self, features: Mapping[str, torch.Tensor], wide: Mapping[str, torch.Tensor]) -> None:
        self.features = features
        self.wide = wide
        self._kt: Optional[KeyedTensor] = None
        self._feature_keys: Mapping[str, str] = {}

    @classmethod
    def keyed(cls, kt: KeyedTensor, feature_keys: Mapping[str, str], wide_keys: Mapping[str, str]) -> "Embeddings":
        """Embeddings over ``kt`` (e.g. an EmbeddingBagCollection's output); ``feature_keys`` / ``wide_keys``
        map each feature to its key in ``kt``."""
        emb = cls(KeyedColumns(kt, feature_keys), KeyedColumns(kt, wide_keys))
        emb._kt = kt
        emb._feature_keys = feature_keys
        return emb

    def concat(self, names: Sequence[str]) -> torch.Tensor:
        """[B, sum of D] for ``names`` in order."""
        if self._kt is not None:
            return keyed_columns(self._kt, [self._feature_keys[n] for n in names])
        return torch.cat([self.features[n] for n in names], dim=1)

    def stack(self, names: Sequence[str]) -> torch.Tensor:
        """[B, F, D] for ``names`` (all of width D)."""
        if self._kt is not None:
            return keyed_stack(self._kt, [self._feature_keys[n] for n in names])
        return torch.stack([self.features[n] for n in names], dim=1)

    def wide_sum(self, names: Sequence[str]) -> torch.Tensor:
        """[B, W]: the wide (first-order) weights of ``names`` summed over features."""
        return torch.stack([self.wide[n] for n in names], dim=0).sum(dim=0)


class SparseArch(nn.Module):
    """Embedding lookup for all sparse features of ``schema``.

    A feature whose ``embedding_dim`` is not a multiple of 4 gets a table of the next multiple of 4
    (:func:`table_width`; checkpoints and sharding plans hold that width) and models see only its first
    ``embedding_dim`` columns, initialised like any table; the extra columns get no gradient from the loss.

    Args:
        schema: the features; features naming the same ``table`` share it.
        wide_dim: if > 0, also a ``wide_dim``-wide table per table (first-order weights for wide/linear parts;
            FBGEMM needs widths divisible by 4, so a linear weight per task is one column of it).
        init_scale: embeddings start uniform in ``[-init_scale, init_scale]``; default ``min(0.05,
            sqrt(1 / rows))`` (torchrec's default is sqrt(1 / rows), large for tiny tables).
        device: build the tables here; ``meta`` (the default) allocates nothing and lets DMP materialise the
            shards on their ranks.

    Attributes:
        features, use_dense, width: the main input :meth:`read` returns (here every feature and no dense
            features, [B, F * D]; :class:`FeatureInput` chooses them).

    Example::

        arch = SparseArch(schema)
        emb = arch(batch.sparse)
        x = emb.concat(schema.feature_names)    # [B, F * D]
    """

    def __init__(
        self,
        schema: Schema,
        wide_dim: int = 0,
        init_scale: Optional[float] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        if wide_dim and wide_dim % 4:
            raise ValueError(f"wide_dim must be a multiple of 4 (FBGEMM), got {wide_dim}")
        self.schema = schema
        self.wide_dim = wide_dim
        by_table: Dict[str, List[str]] = {}
        first: Dict[str, SparseFeature] = {}
        for f in schema.sparse:
            by_table.setdefault(f.table_name, []).append(f.name)
            first.setdefault(f.table_name, f)
        tables = []
        for name, features in by_table.items():
            f = first[name]
            scale = init_scale if init_scale is not None else min(0.05, (1.0 / f.num_embeddings) ** 0.5)
            pooling = PoolingType.MEAN if f.pooling == "mean" else PoolingType.SUM
            tables.append(
                EmbeddingBagConfig(
                    name=name,
                    embedding_dim=table_width(f.embedding_dim),
                    num_embeddings=f.num_embeddings,
                    feature_names=list(features),
                    pooling=pooling,
                    weight_init_min=-scale,
                    weight_init_max=scale,
                )
            )
            if wide_dim:
                tables.append(
                    EmbeddingBagConfig(
                        name=name + WIDE_SUFFIX,
                        embedding_dim=wide_dim,
                        num_embeddings=f.num_embeddings,
                        feature_names=list(features),
                        pooling=pooling,
                        weight_init_min=-1e-3,
                        weight_init_max=1e-3,
                    )
                )
        self.ebc = EmbeddingBagCollection(tables=tables, device=device or torch.device("meta"))
        # torchrec names a feature read by several tables "feature@table"
        shared = bool(wide_dim)
        self._keys = {f.name: (f"{f.name}@{f.table_name}" if shared else f.name) for f in schema.sparse}
        self._wide_keys = {f.name: f"{f.name}@{f.table_name}{WIDE_SUFFIX}" for f in schema.sparse} if wide_dim else {}
        # features whose table is padded to a multiple of 4: the model sees their first embedding_dim columns
        self._padded = {
            f.name: f.embedding_dim for f in schema.sparse if f.embedding_dim != table_width(f.embedding_dim)
        }
        # the main input (:meth:`read`): every feature, no dense features (FeatureInput chooses)
        self.features: List[str] = schema.feature_names
        self.use_dense = False
        self.width = self.output_dim(self.features)

    @property
    def feature_names(self) -> List[str]:
        return self.schema.feature_names

    def names_in(self, groups: Sequence[str]) -> List[str]:
        """Feature names of the given groups (user, host, item, context, scenario)."""
        return [f.name for f in self.schema.features_in(groups)]

    def output_dim(self, names: Sequence[str]) -> int:
        """Width of ``names``' concatenated embeddings."""
        return sum(self.field_dims(names))

    def field_dims(self, names: Optional[Sequence[str]] = None) -> List[int]:
        """The embedding width of each of ``names`` (default: the main input's ``features``)."""
        return [self.schema.feature(n).embedding_dim for n in (self.features if names is None else names)]

    def forward(self, features: KeyedJaggedTensor) -> Embeddings:
        pooled = self.ebc(features)
        if not self._padded:  # the lookup's KeyedTensor as it is (no per-feature views)
            return Embeddings.keyed(pooled, self._keys, self._wide_keys)
        # padded tables: the model sees their first embedding_dim columns
        columns = pooled.to_dict()
        return Embeddings(
            features={
                name: columns[key][:, : self._padded[name]] if name in self._padded else columns[key]
                for name, key in self._keys.items()
            },
            wide={name: columns[key] for name, key in self._wide_keys.items()},
        )

    def read(self, batch: Batch) -> Tuple[torch.Tensor, Embeddings]:
        """(the main input x [B, E]: the embeddings of ``features`` concatenated, then the dense features when
        ``use_dense``; the embeddings of every feature)."""
        emb = self(batch.sparse)
        return self.main_input(emb, batch), emb

    def main_input(self, emb: Embeddings, batch: Batch, calibrate: Optional[nn.Module] = None) -> torch.Tensor:
        """x [B, E] from embeddings already looked up; ``calibrate`` ([B, F * D] -> [B, F * D], e.g. EmbCB)
        rescales the concatenated embeddings before the dense features are appended."""
        x = emb.concat(self.features)
        return self.with_dense(calibrate(x) if calibrate is not None else x, batch)

    def with_dense(self, x: torch.Tensor, batch: Batch) -> torch.Tensor:
        """[B, N] -> [B, N + Dd]: ``x`` (e.g. calibrated embeddings) with the dense features appended if used."""
        return torch.cat([x, batch.dense], dim=1) if self.use_dense else x


@dataclass
class FeatureOptions:
    """What a model's main input reads; flat keys of a model's ``model.params``.

    Args:
        features: sparse features (default: all).
        use_dense: append the dense features.
    """

    features: Optional[List[str]] = None
    use_dense: bool = True


class FeatureInput(SparseArch):
    """A model's :class:`SparseArch` and its main input ``x = [embeddings of features ; dense]``.

    A model assigns it to ``self.sparse_arch`` (the tables keep their checkpoint keys). Called with the batch's
    KeyedJaggedTensor it returns all :class:`Embeddings` like a SparseArch; :meth:`read` gives the main input
    and the embeddings, which further parts of a model read by name (wide weights, bias or gate features).

    Args:
        schema: the features.
        features: the main input's sparse features, in order (None: all); checked against the schema.
        use_dense: append the dense features (when the schema has any).
        option: the config key of ``features`` in error messages.
        wide_dim, init_scale, device: as in :class:`SparseArch`.

    Attributes:
        features: the main input's features. use_dense: whether dense features are appended.
        width: E = sum of their embedding widths (+ Dd).

    Shapes: batch -> (x [B, E], embeddings).

    Example::

        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.mlp = MLP(self.sparse_arch.width, [128, 64])
        ...
        x, emb = self.sparse_arch.read(batch)      # [B, E]
    """

    def __init__(
        self,
        schema: Schema,
        features: Optional[Sequence[str]] = None,
        use_dense: bool = True,
        option: str = "features",
        wide_dim: int = 0,
        init_scale: Optional[float] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        chosen = check_features(schema, features, option)  # before any table is built
        super().__init__(schema, wide_dim=wide_dim, init_scale=init_scale, device=device)
        self.features = chosen
        self.use_dense = use_dense and schema.dense_dim > 0
        self.width = self.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)


def dense_first_order(arch: SparseArch, num_tasks: int) -> Optional[nn.Linear]:
    """The dense features' first-order weights ([B, Dd] -> [B, T]) of a wide part, or None when ``arch``'s main
    input has no dense features."""
    return nn.Linear(arch.schema.dense_dim, num_tasks) if arch.use_dense else None


def first_order_logits(
    emb: Embeddings, names: Sequence[str], num_tasks: int, dense_linear: Optional[nn.Module], dense: torch.Tensor
) -> torch.Tensor:
    """[B, T]: each task's first-order (wide) logit, its column of the wide tables summed over ``names``, plus
    ``dense_linear(dense)`` ([B, Dd] -> [B, T]) when given."""
    wide = emb.wide_sum(names)[:, :num_tasks]
    return wide if dense_linear is None else wide + dense_linear(dense)
