"""The bare FBGEMM kernels: the model's embedding tables in ``SplitTableBatchedEmbeddingBagsCodegen`` (the
table-batched embedding kernel torchrec's fused compute kernel runs), with the same row-wise Adagrad applied in
backward, fed precomputed indices and offsets and a fixed output gradient. No KJT handling, no input
distribution, no model: what a step's embedding part costs on this machine. :func:`make_tbe`,
:func:`table_groups` and :func:`kernel_inputs` also build the one-module TBE + MLP twin (benchmarks/plain.py).
"""

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
    ComputeDevice,
    SplitTableBatchedEmbeddingBagsCodegen,
)
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.modules.sparse import WIDE_SUFFIX, SparseArch

FLOAT_BYTES = 4
INDEX_BYTES = 8


@dataclass
class TbeInput:
    """Precomputed kernel inputs of one batch: per TBE group (indices, offsets, output gradient) and the bytes
    the lookup moves (see :meth:`BareTbe.prepare`)."""

    groups: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    forward_bytes: int
    backward_bytes: int


# one TBE group: the kernel and its features in the kernel's order, as (KJT feature, table, width)
Slot = Tuple[str, str, int]


def table_groups(arch: SparseArch) -> List[Tuple[str, List[EmbeddingBagConfig]]]:
    """The tables of ``arch`` by pooling mode (``sum`` / ``mean``), as torchrec groups them into kernels; within
    a mode the main tables come before the wide ones, so a kernel's output holds the features' embeddings first,
    then their wide weights."""
    by_mode: Dict[str, List[EmbeddingBagConfig]] = {}
    configs = sorted(arch.ebc.embedding_bag_configs(), key=lambda c: c.name.endswith(WIDE_SUFFIX))
    for cfg in configs:
        by_mode.setdefault("mean" if cfg.pooling == PoolingType.MEAN else "sum", []).append(cfg)
    return list(by_mode.items())


def make_tbe(
    cfgs: Sequence[EmbeddingBagConfig],
    mode: str,
    lr: float,
    eps: float,
    bounds_check: BoundsCheckMode,
    device: torch.device,
) -> Tuple[SplitTableBatchedEmbeddingBagsCodegen, List[Slot]]:
    """One table-batched kernel over ``cfgs`` with exact row-wise Adagrad fused into its backward, and its
    features in order. Tables start uniform in SparseArch's ranges (``[-0.05, 0.05]``, wide ``[-1e-3, 1e-3]``).

    Args:
        cfgs: the tables (one pooling mode).
        mode: ``sum`` or ``mean``.
        lr, eps: row-wise Adagrad settings.
        bounds_check: FBGEMM bounds-check mode.
        device: ``cpu`` (HOST location, CPU kernels) or ``cuda`` (tables in HBM).
    """
    on_cuda = device.type == "cuda"
    location = EmbeddingLocation.DEVICE if on_cuda else EmbeddingLocation.HOST
    compute = ComputeDevice.CUDA if on_cuda else ComputeDevice.CPU
    specs, feature_table_map, slots = [], [], []
    for t, cfg in enumerate(cfgs):
        specs.append((cfg.num_embeddings, cfg.embedding_dim, location, compute))
        for feature in cfg.feature_names:
            feature_table_map.append(t)
            slots.append((feature, cfg.name, cfg.embedding_dim))
    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=specs,
        feature_table_map=feature_table_map,
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        learning_rate=lr,
        eps=eps,
        pooling_mode=PoolingMode.MEAN if mode == "mean" else PoolingMode.SUM,
        bounds_check_mode=bounds_check,
        device=device,
    )
    with torch.no_grad():
        for w, cfg in zip(tbe.split_embedding_weights(), cfgs):
            scale = 1e-3 if cfg.name.endswith(WIDE_SUFFIX) else 0.05  # SparseArch's wide / default init
            w.uniform_(-scale, scale)
    return tbe, slots


def kernel_inputs(features: KeyedJaggedTensor, slots: Sequence[Slot]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(indices, offsets) of one kernel's features, in its order, from a batch's KJT (int64, as torchrec's
    kernel wrapper hands them over): the KJT's own values and offsets when the kernel reads every feature in
    the KJT's order, repeated when it reads them several times in that order (main and wide tables), else the
    features' segments gathered.

    Shapes: indices [nnz], offsets [F_kernel * B + 1].
    """
    names = [f for f, _, _ in slots]
    keys = features.keys()
    copies, rest = divmod(len(names), len(keys)) if keys else (0, 1)
    if not rest and names == keys * copies:
        values, offsets = features.values().long(), features.offsets().long()
        if copies == 1:
            return values, offsets
        total = offsets[-1:]
        return (values.repeat(copies), torch.cat([offsets[:-1] + k * total for k in range(copies)] + [copies * total]))
    jt = features.to_dict()
    indices = torch.cat([jt[n].values() for n in names]).long()
    lengths = torch.cat([jt[n].lengths() for n in names]).long()
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long, device=lengths.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    return indices, offsets


class BareTbe(nn.Module):
    """The tables of ``arch`` in one TBE per pooling mode (sum / mean), as torchrec groups them.

    Args:
        arch: the model's SparseArch (its EBC may be on the meta device: only the table configs are read).
        lr, eps: row-wise Adagrad settings (those of the recsys path).
        bounds_check: FBGEMM bounds-check mode (that of the recsys path, so the same kernel work is timed).
        device: ``cpu`` (HOST location, CPU kernels) or ``cuda`` (tables in HBM).

    Example::

        bound = BareTbe(model.sparse_arch, lr=0.05, eps=1e-8, bounds_check=BoundsCheckMode.FATAL, device=cpu)
        inp = bound.prepare(batch.sparse)
        bound.train_step(inp)   # forward + backward with the fused update
    """

    def __init__(
        self, arch: SparseArch, lr: float, eps: float, bounds_check: BoundsCheckMode, device: torch.device
    ) -> None:
        super().__init__()
        self.device = device
        self.tbes = nn.ModuleList()
        # per group: [(KJT feature, table, width)] in the kernel's feature order
        self.slots: List[List[Slot]] = []
        for mode, cfgs in table_groups(arch):
            tbe, slots = make_tbe(cfgs, mode, lr, eps, bounds_check, device)
            self.tbes.append(tbe)
            self.slots.append(slots)

    def prepare(self, features: KeyedJaggedTensor) -> TbeInput:
        """Kernel inputs for one batch (outside the timed region): indices and offsets in each kernel's
        feature order, a fixed random output gradient, and the bytes moved."""
        jt = features.to_dict()
        batch = features.stride()
        groups = []
        fwd = bwd = 0
        g = torch.Generator().manual_seed(0)
        for slots in self.slots:
            indices, offsets = kernel_inputs(features, slots)
            width = sum(d for _, _, d in slots)
            grad = torch.randn(batch, width, generator=g) * 1e-3
            groups.append((indices.to(self.device), offsets.to(self.device), grad.to(self.device)))
            rows_bytes = sum(int(jt[name].values().numel()) * d * FLOAT_BYTES for name, _, d in slots)
            nnz = int(indices.numel())
            # forward: read every looked-up row, read indices and offsets, write the pooled output
            fwd += rows_bytes + (nnz + len(offsets)) * INDEX_BYTES + batch * width * FLOAT_BYTES
            # backward with the fused row-wise Adagrad: read the output gradient and the indices, read and
            # write every looked-up row and its one-float momentum
            bwd += (
                batch * width * FLOAT_BYTES
                + (nnz + len(offsets)) * INDEX_BYTES
                + 2 * rows_bytes
                + 2 * nnz * FLOAT_BYTES
            )
        return TbeInput(groups, fwd, bwd)

    def forward(self, inp: TbeInput) -> List[torch.Tensor]:
        return [tbe(indices, offsets) for tbe, (indices, offsets, _) in zip(self.tbes, inp.groups)]

    def train_step(self, inp: TbeInput) -> None:
        """Forward and backward; the backward applies row-wise Adagrad to the rows it touched."""
        outs = self(inp)
        torch.autograd.backward(outs, [grad for _, _, grad in inp.groups])

    @torch.no_grad()
    def infer_step(self, inp: TbeInput) -> None:
        self(inp)


# HBM peak bandwidth (bytes/s) by device name, from the vendors' data sheets; the first match wins.
HBM_PEAK = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("A10", 0.6e12),
)


def hbm_peak(device_name: str) -> float:
    """Peak memory bandwidth of a GPU by name (bytes/s), or NaN when unknown."""
    for key, peak in HBM_PEAK:
        if key in device_name:
            return peak
    return float("nan")
