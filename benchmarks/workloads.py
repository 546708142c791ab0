"""Benchmark workloads: a schema plus batches of samples held in memory (no files in the timed region).

* ``criteo``: a Criteo-like workload (Criteo 1TB Click Logs shape: 13 dense features, 26 categorical features
  with the real per-feature cardinalities, capped at ``vocab_cap`` rows per table like DLRM's
  ``--max-ind-range``), ids drawn from a bounded Zipf law and spread over the table by a fixed bijection,
  one-hot (``hot=1``) or multi-hot (``hot=L``: each sample carries 1..2L-1 ids per feature, mean L,
  sum-pooled); one binary task.
* ``live``: the synthetic live-streaming world of :mod:`recsys.data.synthetic` (3 tasks, 4 scenarios, 16 sparse
  features, one of them multi-hot), generated to a temporary folder, read through the real dataset spec and
  encoders; batches are shuffled slices of the training split (rows are reused when a batch size exceeds it).
"""

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import List

import numpy as np

from recsys.data.batch import Batch
from recsys.data.columns import Columns, Ragged
from recsys.data.synthetic import _permute, _zipf_ranks
from recsys.schema import DenseFeature, Schema, SparseFeature, Task

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Rows per categorical feature of the Criteo 1TB Click Logs data set (as in torchrec's DLRM example,
# torchrec/inference/dlrm_packager.py, --num_embeddings_per_feature).
CRITEO_1TB_CARDINALITIES = (
    45833188,
    36746,
    17245,
    7413,
    20243,
    3,
    7114,
    1441,
    62,
    29275261,
    1572176,
    345138,
    10,
    2209,
    11267,
    128,
    4,
    974,
    14,
    48937457,
    11316796,
    40094537,
    452104,
    12606,
    104,
    35,
)
CRITEO_DENSE = 13
# Criteo's features are anonymous; groups are assigned so that models selecting features by group
# (user / item / context ...) have something to select. Which feature is in which group does not change cost.
_CRITEO_GROUPS = ("user",) * 9 + ("item",) * 9 + ("host",) * 2 + ("context",) * 6


@dataclass
class Workload:
    """A schema and a few batches per batch size, ready to time.

    Args:
        name: short label (``criteo-1hot``, ``criteo-8hot``, ``live``).
        schema: what models are built from.
        description: one line for result tables.
    """

    name: str
    schema: Schema
    description: str

    def batches(self, batch_size: int, count: int, seed: int = 0) -> List[Batch]:  # pragma: no cover
        raise NotImplementedError


def criteo_schema(vocab_cap: int, dim: int = 16, hot: int = 1) -> Schema:
    """The Criteo-like schema: 26 sparse features ``C1..C26`` (rows = Criteo 1TB cardinality capped at
    ``vocab_cap``), 13 dense features ``I1..I13``, one binary task ``ctr``.

    Args:
        vocab_cap: the most rows of any table (1 .. 10^8).
        dim: embedding width (a multiple of 4).
        hot: mean ids per sample and feature; 1 is one-hot, more is multi-hot (sum pooling).
    """
    if vocab_cap < 1:
        raise ValueError(f"vocab_cap must be >= 1, got {vocab_cap}")
    return Schema(
        sparse=tuple(
            SparseFeature(f"C{i + 1}", min(n, vocab_cap), dim, group=_CRITEO_GROUPS[i], multi_hot=hot > 1)
            for i, n in enumerate(CRITEO_1TB_CARDINALITIES)
        ),
        dense=tuple(DenseFeature(f"I{i + 1}") for i in range(CRITEO_DENSE)),
        tasks=(Task("ctr"),),
    )


class CriteoWorkload(Workload):
    """Criteo-like batches generated in memory.

    Args:
        vocab_cap: the most rows of any table.
        dim: embedding width.
        hot: mean ids per sample and feature (1: one-hot).
        zipf_a: exponent of the id distribution, P(rank r) ~ (r + 1)^-a.
    """

    def __init__(self, vocab_cap: int, dim: int = 16, hot: int = 1, zipf_a: float = 1.05) -> None:
        if hot < 1:
            raise ValueError(f"hot must be >= 1, got {hot}")
        schema = criteo_schema(vocab_cap, dim, hot)
        rows = sum(f.num_embeddings for f in schema.sparse)
        super().__init__(
            name=f"criteo-{hot}hot",
            schema=schema,
            description=(
                f"Criteo-like: 26 sparse ({'one-hot' if hot == 1 else f'multi-hot, mean {hot} ids'}), "
                f"13 dense, tables capped at {vocab_cap:,} rows ({rows:,} rows in all), dim {dim}, "
                f"Zipf a={zipf_a}"
            ),
        )
        self.vocab_cap = vocab_cap
        self.hot = hot
        self.zipf_a = zipf_a

    def columns(self, n: int, seed: int = 0) -> Columns:
        """``n`` samples: Zipf ids per feature (a fixed bijection spreads the popular ids over the table),
        standard-normal dense features, Bernoulli(0.25) clicks."""
        rng = np.random.default_rng(seed)
        sparse = {}
        for j, f in enumerate(self.schema.sparse):
            rows = f.num_embeddings
            if self.hot == 1:
                sparse[f.name] = _permute(_zipf_ranks(rng, rows, n, self.zipf_a), rows, j + 1)
            else:
                lengths = rng.integers(1, 2 * self.hot, n)
                offsets = np.zeros(n + 1, np.int64)
                np.cumsum(lengths, out=offsets[1:])
                ids = _permute(_zipf_ranks(rng, rows, int(offsets[-1]), self.zipf_a), rows, j + 1)
                sparse[f.name] = Ragged(ids.astype(np.int64), offsets)
        return Columns(
            dense=rng.standard_normal((n, CRITEO_DENSE)).astype(np.float32),
            sparse=sparse,
            labels={"ctr": (rng.random(n) < 0.25).astype(np.float32)},
            scenario=np.zeros(n, np.int64),
            user=np.full(n, -1, np.int64),
            weights=np.ones(n, np.float32),
            row_id=np.arange(n, dtype=np.int64),
        )

    def batches(self, batch_size: int, count: int, seed: int = 0) -> List[Batch]:
        """``count`` distinct batches of ``batch_size`` samples."""
        names = self.schema.feature_names
        return [self.columns(batch_size, seed * 1000 + i).to_batch(names) for i in range(count)]


class LiveWorkload(Workload):
    """The synthetic live-streaming world, read through its dataset spec.

    Args:
        rows: impressions to generate (the default world's users, hosts and items; fewer rows only means
            fewer distinct batches).
        dim: embedding width of every feature.
        seed: the world's seed.
    """

    def __init__(self, rows: int = 100_000, dim: int = 16, seed: int = 0) -> None:
        from recsys.data.dataset import Dataset
        from recsys.data.spec import load_spec
        from recsys.data.synthetic import WorldConfig, generate

        tmp = tempfile.mkdtemp(prefix="recsys-bench-live-")
        try:
            generate(WorldConfig(rows=rows, seed=seed, rows_per_file=max(rows, 1)), tmp, progress=False)
            ds = Dataset(load_spec(os.path.join(REPO, "configs", "datasets", "synthetic.yaml")), root=tmp)
            ds.fit()
            self.train = ds.read(splits=("train",))["train"]
            schema = ds.schema(dim)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        super().__init__(
            name="live",
            schema=schema,
            description=(
                f"live-streaming world: {len(schema.sparse)} sparse (1 multi-hot), {schema.dense_dim} "
                f"dense, {len(schema.tasks)} tasks, {schema.num_scenarios} scenarios, "
                f"{sum(f.num_embeddings for f in schema.sparse):,} rows in all, dim {dim}"
            ),
        )

    def batches(self, batch_size: int, count: int, seed: int = 0) -> List[Batch]:
        """``count`` batches of ``batch_size`` rows drawn without replacement within a batch where possible."""
        rng = np.random.default_rng(seed)
        n = len(self.train)
        names = self.schema.feature_names
        out = []
        for _ in range(count):
            idx = rng.choice(n, batch_size, replace=batch_size > n)
            out.append(self.train.take(idx).to_batch(names))
        return out


def make_workload(name: str, vocab_cap: int, dim: int, zipf_a: float, live_rows: int) -> Workload:
    """A workload by name: ``live``, ``criteo-1hot`` or ``criteo-<L>hot`` (multi-hot, mean L ids).

    Args:
        name: the workload.
        vocab_cap, zipf_a: Criteo-like table cap and id distribution.
        dim: embedding width.
        live_rows: impressions generated for the live-streaming world.
    """
    if name == "live":
        return LiveWorkload(rows=live_rows, dim=dim)
    if name.startswith("criteo-") and name.endswith("hot"):
        hot = int(name[len("criteo-") : -len("hot")])
        return CriteoWorkload(vocab_cap, dim=dim, hot=hot, zipf_a=zipf_a)
    raise ValueError(f"unknown workload '{name}' (live, criteo-1hot, criteo-<L>hot)")
