"""The comparison points of the throughput benchmark, built from the very same registry model.

* :class:`PlainSparseArch` - the embedding part as common CTR libraries write it in plain PyTorch: one
  ``nn.Embedding`` per table (``nn.EmbeddingBag`` where a table has multi-hot features), dense gradients, trained
  with ``torch.optim.Adam`` together with the dense parameters (DeepCTR-Torch, FuxiCTR and the like).
* :class:`FixedSparseArch` - no embeddings at all: fixed pooled vectors of the right shapes stand in for the
  lookups, so a step costs the model's MLPs (forward, backward down to the embedding outputs, Adam), the loss and
  the concatenations: the "MLP alone" cost.

Both keep :class:`~recsys.modules.sparse.SparseArch`'s contract (``forward(kjt) -> Embeddings`` and the look-up
helpers), so :func:`swap_sparse_arch` turns any registered model into its plain-PyTorch or MLP-only twin with the
same dense layers, the same loss and the same inputs. ``tests/test_benchmarks.py`` checks that a twin computes
the same function as the sharded recsys model given the same weights, for every model in the registry.
"""

import copy
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.modules.sparse import WIDE_SUFFIX, Embeddings, SparseArch


def _copy_contract(target: SparseArch, arch: SparseArch) -> None:
    """Give ``target`` (built without SparseArch.__init__) the attributes SparseArch's helpers read."""
    target.schema = arch.schema
    target.wide_dim = arch.wide_dim
    target._keys = dict(arch._keys)
    target._wide_keys = dict(arch._wide_keys)
    target.features = list(arch.features)  # the main input (FeatureInput's choice of features and dense)
    target.use_dense = arch.use_dense
    target.width = arch.width


class PlainSparseArch(SparseArch):
    """The tables of ``arch`` as plain PyTorch modules with dense gradients.

    Args:
        arch: the SparseArch to mirror (its EBC may be on the meta device: only its table configs are read).
        weights: initial table weights by table name (e.g. copied from the sharded model); tables not given
            start uniform in ``[-0.05, 0.05]``.
        device: where to allocate the tables.

    Shapes: the same :class:`~recsys.modules.sparse.Embeddings` as ``arch``: ``features[name]`` [B, D].
    """

    def __init__(
        self,
        arch: SparseArch,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        nn.Module.__init__(self)
        _copy_contract(self, arch)
        multi_hot = {f.table_name for f in arch.schema.sparse if f.multi_hot}
        self.tables = nn.ModuleDict()
        self._modes: Dict[str, str] = {}
        for cfg in arch.ebc.embedding_bag_configs():
            base = cfg.name.removesuffix(WIDE_SUFFIX)
            mode = "mean" if cfg.pooling == PoolingType.MEAN else "sum"
            if base in multi_hot:
                table: nn.Module = nn.EmbeddingBag(cfg.num_embeddings, cfg.embedding_dim, mode=mode, device=device)
            else:
                table = nn.Embedding(cfg.num_embeddings, cfg.embedding_dim, device=device)
            with torch.no_grad():
                if weights is not None and cfg.name in weights:
                    table.weight.copy_(weights[cfg.name])
                else:
                    table.weight.uniform_(-0.05, 0.05)
            self.tables[cfg.name] = table
            self._modes[cfg.name] = mode
        self._lookups = [(f.name, f.table_name) for f in arch.schema.sparse]

    def _lookup(self, table: str, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        module = self.tables[table]
        if isinstance(module, nn.EmbeddingBag):
            return module(values, offsets[:-1].long())
        return module(values)  # single-hot: one id per sample

    def forward(self, features: KeyedJaggedTensor) -> Embeddings:
        jt = features.to_dict()
        out: Dict[str, torch.Tensor] = {}
        wide: Dict[str, torch.Tensor] = {}
        for name, table in self._lookups:
            values, offsets = jt[name].values(), jt[name].offsets()
            out[name] = self._lookup(table, values, offsets)
            if self.wide_dim:
                wide[name] = self._lookup(table + WIDE_SUFFIX, values, offsets)
        return Embeddings(features=out, wide=wide)


class FixedSparseArch(SparseArch):
    """Stand-in pooled embeddings of ``arch``'s shapes for batches of ``batch_size`` rows: no tables, no lookups.

    Each forward returns fresh leaves (requiring grad) over fixed random buffers, so the backward pass computes
    the gradient with respect to the embedding outputs, as in the real model, and stops there.

    Args:
        arch: the SparseArch to mirror.
        batch_size: rows of every batch it will see.
        device: where to allocate the buffers.
    """

    def __init__(self, arch: SparseArch, batch_size: int, device: Optional[torch.device] = None) -> None:
        nn.Module.__init__(self)
        _copy_contract(self, arch)
        self.batch_size = batch_size
        g = torch.Generator().manual_seed(0)
        self._names: List[str] = arch.schema.feature_names
        for i, f in enumerate(arch.schema.sparse):
            self.register_buffer(f"emb_{i}", (torch.randn(batch_size, f.embedding_dim, generator=g) * 0.05).to(device))
            if arch.wide_dim:
                self.register_buffer(f"wide_{i}", (torch.randn(batch_size, arch.wide_dim, generator=g) * 1e-3).to(device))

    @torch.no_grad()
    def load(self, embeddings: Embeddings) -> None:
        """Serve ``embeddings`` (e.g. a real lookup's output for one batch) from now on."""
        for i, n in enumerate(self._names):
            getattr(self, f"emb_{i}").copy_(embeddings.features[n])
            if self.wide_dim:
                getattr(self, f"wide_{i}").copy_(embeddings.wide[n])

    def forward(self, features: KeyedJaggedTensor) -> Embeddings:
        if features.stride() != self.batch_size:
            raise ValueError(f"FixedSparseArch was built for batches of {self.batch_size}, got {features.stride()}")
        emb = {n: getattr(self, f"emb_{i}").detach().requires_grad_() for i, n in enumerate(self._names)}
        wide = ({n: getattr(self, f"wide_{i}").detach().requires_grad_() for i, n in enumerate(self._names)}
                if self.wide_dim else {})
        return Embeddings(features=emb, wide=wide)


def swap_sparse_arch(model: nn.Module, make: Callable[[SparseArch], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with every SparseArch replaced by ``make(arch)`` (shared references stay shared).

    Raises:
        ValueError: the model has no SparseArch (the comparison needs the model to use one).
    """
    twin = copy.deepcopy(model)
    replaced: Dict[int, nn.Module] = {}
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SparseArch) and not isinstance(child, (PlainSparseArch, FixedSparseArch)):
                if id(child) not in replaced:
                    replaced[id(child)] = make(child)
                setattr(parent, name, replaced[id(child)])
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no SparseArch: no plain-PyTorch twin can be built")
    return twin


def plain_twin(model: nn.Module, weights: Optional[Dict[str, torch.Tensor]] = None,
               device: Optional[torch.device] = None) -> nn.Module:
    """``model`` with plain-PyTorch embedding tables (dense gradients), starting from ``weights`` by table."""
    return swap_sparse_arch(model, lambda arch: PlainSparseArch(arch, weights, device)).to(device)


def mlp_twin(model: nn.Module, batch_size: int, device: Optional[torch.device] = None) -> nn.Module:
    """``model`` without embeddings: fixed pooled vectors replace the lookups (the MLP-alone cost)."""
    return swap_sparse_arch(model, lambda arch: FixedSparseArch(arch, batch_size, device)).to(device)
