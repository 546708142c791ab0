"""The comparison points of the throughput benchmark, built from the very same registry model.

* :class:`PlainSparseArch` with ``sparse=True`` - the best plain-PyTorch practice: one
  ``nn.EmbeddingBag(sparse=True)`` per table, so a step's gradient holds only the rows of the batch, trained with
  sparse ``torch.optim.Adagrad`` (the dense parameters with fused Adam).
* :class:`PlainSparseArch` with ``sparse=False`` - the embedding part as common CTR libraries write it
  (DeepCTR-Torch, FuxiCTR and the like): one ``nn.Embedding`` per table (``nn.EmbeddingBag`` where a table has
  multi-hot features), dense gradients, ``torch.optim.Adam`` over every row of every table.
* :class:`TbeSparseArch` - the bare kernel inside the model: the tables in FBGEMM's table-batched kernel
  (``SplitTableBatchedEmbeddingBagsCodegen``, the kernel torchrec's fused compute kernel runs) with row-wise
  Adagrad fused into its backward, fed the batch's ids directly; no torchrec module, no input or output
  distribution, no DistributedModelParallel. What recsys's step would cost without any overhead of its own.
* :class:`FixedSparseArch` - no embeddings at all: fixed pooled vectors of the right shapes stand in for the
  lookups, so a step costs the model's MLPs (forward, backward down to the embedding outputs, Adam), the loss and
  the concatenations: the "MLP alone" cost.

All keep :class:`~recsys.modules.sparse.SparseArch`'s contract (``forward(kjt) -> Embeddings`` and the look-up
helpers), so :func:`swap_sparse_arch` turns any registered model into its twin with the same dense layers, the
same loss and the same inputs. ``tests/test_benchmarks.py`` checks that every twin computes the same function as
the sharded recsys model given the same weights, for every model in the registry.
"""

import copy
from typing import Callable, Dict, List, Optional

import torch
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode
from torch import nn
from torchrec.modules.embedding_configs import PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from benchmarks.kernels import Slot, kernel_inputs, make_tbe, table_groups
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
    """The tables of ``arch`` as plain PyTorch modules.

    Args:
        arch: the SparseArch to mirror (its EBC may be on the meta device: only its table configs are read).
        weights: initial table weights by table name (e.g. copied from the sharded model); tables not given
            start uniform in ``[-0.05, 0.05]``.
        device: where to allocate the tables.
        sparse: one ``nn.EmbeddingBag(sparse=True)`` per table (sparse gradients: the batch's rows only); else
            dense gradients, ``nn.Embedding`` for one-hot tables and ``nn.EmbeddingBag`` for multi-hot ones.

    Shapes: the same :class:`~recsys.modules.sparse.Embeddings` as ``arch``: ``features[name]`` [B, D].
    """

    def __init__(
        self,
        arch: SparseArch,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        device: Optional[torch.device] = None,
        sparse: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        _copy_contract(self, arch)
        multi_hot = {f.table_name for f in arch.schema.sparse if f.multi_hot}
        self.tables = nn.ModuleDict()
        self._modes: Dict[str, str] = {}
        for cfg in arch.ebc.embedding_bag_configs():
            base = cfg.name.removesuffix(WIDE_SUFFIX)
            mode = "mean" if cfg.pooling == PoolingType.MEAN else "sum"
            if sparse or base in multi_hot:
                table: nn.Module = nn.EmbeddingBag(
                    cfg.num_embeddings, cfg.embedding_dim, mode=mode, device=device, sparse=sparse
                )
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


class TbeSparseArch(SparseArch):
    """The tables of ``arch`` as bare FBGEMM table-batched kernels inside the model (one per pooling mode, as
    torchrec groups them), with exact row-wise Adagrad fused into their backward.

    A forward hands each kernel the batch's ids and offsets (the KJT's own tensors when the kernel reads every
    feature in the KJT's order) and the kernels' outputs to the model as one KeyedTensor, which is what the
    model reads through :class:`~recsys.modules.sparse.Embeddings`.

    Args:
        arch: the SparseArch to mirror.
        lr, eps, bounds_check: row-wise Adagrad and FBGEMM's bounds check (those of the recsys path).
        weights: initial table weights by table name; tables not given start as :func:`make_tbe` leaves them.
        device: where the kernels run.
    """

    def __init__(
        self,
        arch: SparseArch,
        lr: float,
        eps: float,
        bounds_check: BoundsCheckMode,
        weights: Optional[Dict[str, torch.Tensor]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        nn.Module.__init__(self)
        _copy_contract(self, arch)
        device = device or torch.device("cpu")
        self.tbes = nn.ModuleList()
        self.slots: List[List[Slot]] = []
        for mode, cfgs in table_groups(arch):
            tbe, slots = make_tbe(cfgs, mode, lr, eps, bounds_check, device)
            with torch.no_grad():
                for w, cfg in zip(tbe.split_embedding_weights(), cfgs):
                    if weights is not None and cfg.name in weights:
                        w.copy_(weights[cfg.name].reshape(w.shape))
            self.tbes.append(tbe)
            self.slots.append(slots)
        # the KeyedTensor's keys are those torchrec gives the features ("feature@table" when tables share one)
        shared = bool(arch.wide_dim)
        self._out_keys = [f"{f}@{t}" if shared else f for group in self.slots for f, t, _ in group]
        self._out_widths = [d for group in self.slots for _, _, d in group]

    def forward(self, features: KeyedJaggedTensor) -> Embeddings:
        pooled = [tbe(*kernel_inputs(features, slots)) for tbe, slots in zip(self.tbes, self.slots)]
        values = pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)
        kt = KeyedTensor(keys=self._out_keys, length_per_key=self._out_widths, values=values)
        return Embeddings.keyed(kt, self._keys, self._wide_keys)

    def kernel_parameters(self) -> List[nn.Parameter]:
        """The kernels' tables and momenta (updated in backward: no other optimizer must step them)."""
        return list(self.tbes.parameters())


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
                self.register_buffer(
                    f"wide_{i}", (torch.randn(batch_size, arch.wide_dim, generator=g) * 1e-3).to(device)
                )

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
        wide = (
            {n: getattr(self, f"wide_{i}").detach().requires_grad_() for i, n in enumerate(self._names)}
            if self.wide_dim
            else {}
        )
        return Embeddings(features=emb, wide=wide)


TWINS = (PlainSparseArch, TbeSparseArch, FixedSparseArch)


def swap_sparse_arch(model: nn.Module, make: Callable[[SparseArch], nn.Module]) -> nn.Module:
    """A deep copy of ``model`` with every SparseArch replaced by ``make(arch)`` (shared references stay shared).

    Raises:
        ValueError: the model has no SparseArch (the comparison needs the model to use one).
    """
    twin = copy.deepcopy(model)
    replaced: Dict[int, nn.Module] = {}
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, SparseArch) and not isinstance(child, TWINS):
                if id(child) not in replaced:
                    replaced[id(child)] = make(child)
                setattr(parent, name, replaced[id(child)])
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no SparseArch: no plain-PyTorch twin can be built")
    return twin


def plain_twin(
    model: nn.Module,
    weights: Optional[Dict[str, torch.Tensor]] = None,
    device: Optional[torch.device] = None,
    sparse: bool = False,
) -> nn.Module:
    """``model`` with plain-PyTorch embedding tables (sparse or dense gradients), starting from ``weights`` by
    table."""
    return swap_sparse_arch(model, lambda arch: PlainSparseArch(arch, weights, device, sparse)).to(device)


def tbe_twin(
    model: nn.Module,
    lr: float,
    eps: float,
    bounds_check: BoundsCheckMode,
    weights: Optional[Dict[str, torch.Tensor]] = None,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """``model`` with its tables in bare FBGEMM kernels (:class:`TbeSparseArch`), starting from ``weights``."""
    return swap_sparse_arch(model, lambda arch: TbeSparseArch(arch, lr, eps, bounds_check, weights, device)).to(device)


def mlp_twin(model: nn.Module, batch_size: int, device: Optional[torch.device] = None) -> nn.Module:
    """``model`` without embeddings: fixed pooled vectors replace the lookups (the MLP-alone cost)."""
    return swap_sparse_arch(model, lambda arch: FixedSparseArch(arch, batch_size, device)).to(device)
