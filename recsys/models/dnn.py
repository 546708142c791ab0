"""DNN: an MLP over concatenated embeddings and dense features, shared by all tasks (one output per task).

The plain deep baseline of CTR prediction (e.g. Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016); also the single-scenario backbone of the multi-scenario issue.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.modules.mlp import MLP, TaskHeads
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class DNNConfig:
    """Options of :class:`DNN`: MLP widths and options, the features used, and whether dense features enter."""

    hidden: List[int] = field(default_factory=lambda: [256, 128, 64])
    dropout: float = 0.0
    activation: str = "relu"
    norm: str = "none"
    features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("dnn")
class DNN(RankingModel):
    """MLP over [B, F * D + Dd] -> [B, H] -> one linear head per task.

    Example::

        logits = DNN(schema, DNNConfig())(batch)   # {"ctr": [B]}
    """

    Config = DNNConfig

    def __init__(self, schema: Schema, config: DNNConfig) -> None:
        super().__init__(schema, config)
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        in_dim = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.mlp = MLP(in_dim, config.hidden, activation=config.activation, dropout=config.dropout, norm=config.norm)
        self.heads = TaskHeads(self.mlp.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        return self.heads(self.mlp(x))
