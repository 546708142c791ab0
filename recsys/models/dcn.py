"""Deep & Cross Network (DCN) and DCN-V2.

Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017 (arXiv:1708.05123), and Wang et al.,
"DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale Learning to Rank Systems", WWW 2021
(arXiv:2008.13535).

``x_0 = [v_1, ..., v_F, dense]``; a cross network (torchrec's ``VectorCrossNet`` for v1, ``CrossNet`` or
``LowRankCrossNet`` for v2) and an MLP read ``x_0`` in parallel; their outputs are concatenated and a linear
layer per task gives the logits (the parallel structure of both papers).

* ``dcn`` - one model for every scenario (MT; ST when trained per scenario).
* ``dcn_mts`` - MT-S: cross network and MLP form a shared bottom, one tower per scenario reads their concatenation
  (the DCN backbone SSIM wraps).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import torch

from recsys.config import Fraction, PositiveInt, Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioViews, task_views
from recsys.modules.interaction import cross_network
from recsys.modules.mlp import Activation, MLP, Norm, TaskHeads
from recsys.modules.scenario import ScenarioMLP
from recsys.schema import Schema
from recsys.modules.sparse import SparseArch


@dataclass
class DCNConfig:
    """Options of :class:`DCN`.

    Args:
        cross_layers: layers of the cross network.
        version: ``v1`` (DCN) or ``v2`` (DCN-V2).
        low_rank: rank of DCN-V2's low-rank cross weights (None: full rank).
        hidden: widths of the deep MLP.
        dropout, activation, norm: MLP options.
        features: sparse features read (default: all).
        use_dense: feed dense features.
    """

    cross_layers: PositiveInt = 3
    version: Literal["v1", "v2"] = "v1"
    low_rank: Optional[Width] = None
    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    dropout: Fraction = 0.0
    activation: Activation = "relu"
    norm: Norm = "none"
    features: Optional[List[str]] = None
    use_dense: bool = True


@dataclass
class DCNMTSConfig(DCNConfig):
    """Options of :class:`DCNMTS`: those of DCN (``hidden`` is the deep part of the shared bottom) plus
    ``tower_hidden``, the widths of each scenario's tower."""

    hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower_hidden: List[Width] = field(default_factory=lambda: [64])


class _DCNBottom:
    """Embeddings, cross network and deep MLP in parallel: [B, F * D + Dd] -> [B, F * D + Dd + H]."""

    def _build_bottom(self, schema: Schema, config: DCNConfig) -> int:
        self.features = self.check_features(config.features, "features")  # type: ignore[attr-defined]
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        in_dim = self.sparse_arch.output_dim(self.features) + (schema.dense_dim if self.use_dense else 0)
        self.cross = cross_network(in_dim, config.cross_layers, config.version, config.low_rank)
        self.deep = MLP(in_dim, config.hidden, activation=config.activation, dropout=config.dropout,
                        norm=config.norm)
        self.instance_dim = in_dim
        return in_dim + self.deep.output_dim

    def _bottom(self, batch: Batch):
        """(x_0 [B, E], concatenated cross and deep outputs [B, E + H])."""
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        return x, torch.cat([self.cross(x), self.deep(x)], dim=1)


@register_model("dcn")
class DCN(_DCNBottom, RankingModel):
    """DCN / DCN-V2 over a schema.

    Shapes: x_0 [B, E] -> cross [B, E] | deep [B, H] -> heads -> ``{task: [B]}``.

    Example::

        model = DCN(schema, DCNConfig(version="v2", low_rank=32))
        logits = model(batch)       # {"ctr": [B], ...}
    """

    Config = DCNConfig

    def __init__(self, schema: Schema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        self.heads = TaskHeads(self._build_bottom(schema, config), self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        return self.heads(self._bottom(batch)[1])


@register_model("dcn_mts")
class DCNMTS(_DCNBottom, MultiScenarioModel):
    """DCN with scenario-specific towers over the cross and deep outputs (MT-S).

    Shapes: [B, E + H] -> towers [B, S, T] -> ``{task: [B, S]}``.

    Example::

        model = DCNMTS(schema, DCNMTSConfig(version="v2"))
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
    """

    Config = DCNMTSConfig

    def __init__(self, schema: Schema, config: DCNMTSConfig) -> None:
        super().__init__(schema, config)
        width = self._build_bottom(schema, config)
        self.towers = ScenarioMLP(width, schema.num_scenarios, config.tower_hidden, output_dim=len(self.tasks),
                                  activation=config.activation, dropout=config.dropout)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, h = self._bottom(batch)
        return ScenarioViews(task_views(self.towers(h), self.tasks), x)
