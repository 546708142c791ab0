"""Wide & Deep.

Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016 (arXiv:1606.07792).

The wide part is a linear model over the sparse features (a first-order weight per id and task, looked up in
the same EmbeddingBagCollection as the deep embeddings) and the dense features; the deep part is an MLP over
the concatenated embeddings and dense features. Their logits add. With several tasks the deep MLP is shared
and each task has its own output layer and its own wide weights (the CBMR paper's baseline).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.modules.mlp import MLPOptions, NormOptions
from recsys.modules.multitask import TaskHeads
from recsys.modules.sparse import (
    Embeddings,
    FeatureInput,
    check_features,
    dense_first_order,
    first_order_logits,
    wide_width,
)
from recsys.schema import Schema


@dataclass
class WideDeepConfig(MLPOptions, NormOptions):
    """Options of :class:`WideDeep`.

    Args:
        hidden: widths of the deep MLP.
        dropout, activation, norm: deep MLP options (see :class:`~recsys.modules.mlp.MLP`).
        deep_features: sparse features of the deep part (default: all).
        wide_features: sparse features of the wide part (default: all).
        use_dense: feed dense features to both parts.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    deep_features: Optional[List[str]] = None
    wide_features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("wide_deep")
class WideDeep(RankingModel):
    """Wide & Deep over a schema.

    Shapes: B = batch, F = deep features, D = embedding dim, Dd = dense features, T = tasks.
    deep input [B, F * D + Dd] -> MLP -> [B, H] -> T heads; wide: [B, T] from the wide tables + dense linear.

    Example::

        model = WideDeep(schema, WideDeepConfig(hidden=[128, 64]))
        logits = model(batch)         # {"ctr": [B], ...}
    """

    Config = WideDeepConfig

    def __init__(self, schema: Schema, config: WideDeepConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(
            schema, config.deep_features, config.use_dense, option="deep_features", wide_dim=wide_width(len(self.tasks))
        )
        self.wide_features = check_features(schema, config.wide_features, "wide_features")
        self.deep = config.mlp(self.sparse_arch.width, config.hidden, norm=config.norm)
        self.heads = TaskHeads(self.deep.output_dim, self.tasks)
        self.wide_dense = dense_first_order(self.sparse_arch, len(self.tasks))

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        deep = self.heads(self.deep_forward(emb, batch))
        wide = self.wide_logits(emb, batch)
        return {t: deep[t] + wide[:, i] for i, t in enumerate(self.tasks)}

    def deep_forward(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """The deep part up to the task heads: [B, H] (subclasses change it, e.g. CBMR's calibrations)."""
        return self.deep(self.sparse_arch.main_input(emb, batch))

    def wide_logits(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        """The wide part: [B, T], column i is task i's first-order logit."""
        return first_order_logits(emb, self.wide_features, len(self.tasks), self.wide_dense, batch.dense)
