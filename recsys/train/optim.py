"""Optimizers: the embedding optimizer is fused into FBGEMM's backward (applied in backward, no gradient
materialises); dense parameters get a regular torch optimizer; torchrec's CombinedOptimizer joins them."""

from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn
from torchrec.distributed.composable.table_batched_embedding_slice import TableBatchedEmbeddingSlice
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.config import EmbeddingOptimizerConfig, OptimizerConfig
from recsys.console import quiet_library
from recsys.errors import ConfigError
from recsys.train.sharding import embedding_tables


def embedding_optimizer_class(cfg: EmbeddingOptimizerConfig, device_type: str) -> Tuple[Type, Dict[str, float]]:
    if cfg.name == "adam" and device_type != "cuda":
        raise ConfigError(
            "train.embedding_optimizer.name: fused 'adam' needs CUDA; on CPU use rowwise_adagrad, adagrad or sgd"
        )
    if cfg.name == "rowwise_adagrad":
        return RowWiseAdagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adagrad":
        return torch.optim.Adagrad, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    if cfg.name == "adam":
        return torch.optim.Adam, {"lr": cfg.lr, "eps": cfg.eps, "weight_decay": cfg.weight_decay}
    return torch.optim.SGD, {"lr": cfg.lr}


def fuse_embedding_optimizer(module: nn.Module, cfg: EmbeddingOptimizerConfig, device_type: str) -> None:
    """Attach the embedding optimizer to every EmbeddingBagCollection's parameters (before sharding)."""
    cls, kwargs = embedding_optimizer_class(cfg, device_type)
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            with quiet_library():
                apply_optimizer_in_backward(cls, m.parameters(), kwargs)
    assert embedding_tables(module), "the model has no embedding tables"


def dense_optimizer(params: Iterable[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """The dense optimizer ``cfg`` names over ``params``, with torch's multi-tensor (``foreach``) kernels: one op
    per update term for all parameters instead of one per parameter (torch's default on CPU), the same values
    bit for bit (``tests/test_optim.py``) and about half the step time of a DNN's update."""
    plist = list(params)
    if cfg.name == "adam":
        return torch.optim.Adam(plist, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "adamw":
        return torch.optim.AdamW(plist, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(plist, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(plist, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


class ClippedOptimizer(CombinedOptimizer):
    """CombinedOptimizer that clips the dense gradients' global norm before stepping (the fused embedding
    update already happened in backward, so there is nothing to clip there)."""

    def __init__(self, optimizers, clip_params, max_norm: Optional[float]) -> None:
        super().__init__(optimizers)
        self._clip_params = list(clip_params)
        self._max_norm = max_norm
        self.norm_before_clip: Optional[torch.Tensor] = None  # the last step's, when clipping is on

    def step(self, closure=None) -> None:
        if self._max_norm is not None and self._clip_params:
            self.norm_before_clip = torch.nn.utils.clip_grad_norm_(self._clip_params, self._max_norm)
        super().step(closure)


def _unfused_trainable(dmp: nn.Module) -> Dict[str, nn.Parameter]:
    """Trainable parameters with no optimizer in their backward (everything but the fused tables)."""
    return {k: v for k, v in in_backward_optimizer_filter(dmp.named_parameters()) if v.requires_grad}


def dense_kernel_tables(dmp: nn.Module) -> Dict[str, nn.Parameter]:
    """The embedding tables that sharding left as ordinary parameters: data-parallel replicas and any table
    planned on the ``dense`` kernel. No optimizer runs in their backward; they appear as FBGEMM table slices."""
    return {k: v for k, v in _unfused_trainable(dmp).items() if isinstance(v, TableBatchedEmbeddingSlice)}


def build_optimizer(
    dmp: DistributedModelParallel,
    cfg: OptimizerConfig,
    grad_clip_norm: Optional[float],
    groups: Optional[Mapping[str, Tuple[Sequence[nn.Parameter], OptimizerConfig]]] = None,
    *,
    embedding: EmbeddingOptimizerConfig,
) -> CombinedOptimizer:
    """Fused embedding optimizer (from DMP) + one dense optimizer per parameter group a model declares
    (``groups``: name -> (parameters, optimizer config); see ``RankingModel.optimizer_groups``) + the dense
    optimizer ``cfg`` over every other trainable parameter.

    Tables on the dense kernel (data-parallel ones) get ``embedding``, the optimizer the fused tables got from
    :func:`fuse_embedding_optimizer`, as a regular optimizer stepping after DDP's all-reduce, and stay out of
    gradient clipping like the fused ones: a table trains the same whatever its sharding type."""
    dense = _unfused_trainable(dmp)
    parts = [("embedding", dmp.fused_optimizer)]
    tables = {k: v for k, v in dense.items() if isinstance(v, TableBatchedEmbeddingSlice)}
    if tables:
        cls, kwargs = embedding_optimizer_class(embedding, dmp.device.type)
        parts.append(("embedding_dense", KeyedOptimizerWrapper(tables, lambda ps: cls(list(ps), **kwargs))))
    claimed: Dict[str, nn.Parameter] = dict(tables)
    grouped = []
    for name, (params, group_cfg) in (groups or {}).items():
        if name in ("embedding", "embedding_dense", "dense"):
            raise ConfigError(f"optimizer group name '{name}' is reserved")
        ids = {id(p) for p in params}
        mine = {k: v for k, v in dense.items() if id(v) in ids}
        if len(mine) != len(ids) or set(mine) & set(claimed):
            raise ConfigError(
                f"optimizer group '{name}': its parameters must be distinct trainable dense parameters of the model"
            )
        claimed.update(mine)
        grouped.append((name, KeyedOptimizerWrapper(mine, lambda ps, c=group_cfg: dense_optimizer(ps, c))))
    rest = {k: v for k, v in dense.items() if k not in claimed}
    if rest:
        parts.append(("dense", KeyedOptimizerWrapper(rest, lambda ps: dense_optimizer(ps, cfg))))
    clipped = [v for k, v in dense.items() if k not in tables]
    return ClippedOptimizer(parts + grouped, clipped, grad_clip_norm)
