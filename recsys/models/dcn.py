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
from typing import Dict, List, Literal, Optional, Tuple

import torch

from recsys.config import PositiveInt, Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioTowerOptions, ScenarioViews, task_views
from recsys.modules.interaction import cross_network
from recsys.modules.mlp import MLPOptions, NormOptions
from recsys.modules.multitask import TaskHeads
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class DCNConfig(MLPOptions, NormOptions, FeatureOptions):
    """Options of :class:`DCN`.

    Args:
        cross_layers: layers of the cross network.
        version: ``v1`` (DCN) or ``v2`` (DCN-V2).
        low_rank: rank of DCN-V2's low-rank cross weights (None: full rank).
        hidden: widths of the deep MLP.
        dropout, activation, norm: MLP options.
        features, use_dense: x_0 (:class:`~recsys.modules.sparse.FeatureOptions`).
    """

    cross_layers: PositiveInt = 3
    version: Literal["v1", "v2"] = "v1"
    low_rank: Optional[Width] = None
    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])


@dataclass
class DCNMTSConfig(DCNConfig, ScenarioTowerOptions):
    """Options of :class:`DCNMTS`: those of DCN (``hidden`` is the deep part of the shared bottom) plus
    ``tower_hidden``, the widths of each scenario's tower."""

    hidden: List[Width] = field(default_factory=lambda: [256, 128])


class CrossDeepModel(RankingModel):
    """What DCN and DCN MT-S share: x_0, and a cross network and an MLP reading it in parallel.

    Shapes: x_0 [B, E] -> ``bottom``: [cross(x_0) [B, E] ; deep(x_0) [B, H]] = [B, E + H] (``bottom_dim``).
    """

    def __init__(self, schema: Schema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        in_dim = self.instance_dim = self.sparse_arch.width
        self.cross = cross_network(in_dim, config.cross_layers, config.version, config.low_rank)
        self.deep = config.mlp(in_dim, config.hidden, norm=config.norm)
        self.bottom_dim = in_dim + self.deep.output_dim

    def bottom(self, batch: Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x_0 [B, E], the concatenated cross and deep outputs [B, E + H])."""
        x, _ = self.sparse_arch.read(batch)
        return x, torch.cat([self.cross(x), self.deep(x)], dim=1)


@register_model("dcn")
class DCN(CrossDeepModel):
    """DCN / DCN-V2 over a schema.

    Shapes: x_0 [B, E] -> cross [B, E] | deep [B, H] -> heads -> ``{task: [B]}``.

    Example::

        model = DCN(schema, DCNConfig(version="v2", low_rank=32))
        logits = model(batch)       # {"ctr": [B], ...}
    """

    Config = DCNConfig

    def __init__(self, schema: Schema, config: DCNConfig) -> None:
        super().__init__(schema, config)
        self.heads = TaskHeads(self.bottom_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        return self.heads(self.bottom(batch)[1])


@register_model("dcn_mts")
class DCNMTS(CrossDeepModel, MultiScenarioModel):
    """DCN with scenario-specific towers over the cross and deep outputs (MT-S).

    Shapes: [B, E + H] -> towers [B, S, T] -> ``{task: [B, S]}``.

    Example::

        model = DCNMTS(schema, DCNMTSConfig(version="v2"))
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
    """

    Config = DCNMTSConfig

    def __init__(self, schema: Schema, config: DCNMTSConfig) -> None:
        super().__init__(schema, config)
        self.towers = self.scenario_towers(self.bottom_dim, config)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, h = self.bottom(batch)
        return ScenarioViews(task_views(self.towers(h), self.tasks), x)
