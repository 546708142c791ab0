"""DNN: an MLP over concatenated embeddings and dense features, shared by all tasks (one output per task).

The plain deep baseline of CTR prediction (e.g. Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016). In multi-scenario comparisons ``dnn`` is MT (one model for every scenario) and
ST (one ``dnn`` per scenario, trained on ``data.scenarios: [s]``); ``dnn_mts`` is MT-S: the shared MLP as a bottom
and one tower per scenario (the shared-bottom structure of Caruana, "Multitask Learning", 1997, over scenarios),
the DNN backbone SSIM wraps.
"""

from dataclasses import dataclass, field
from typing import Dict, List

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioTowerOptions, ScenarioViews, task_views
from recsys.modules.mlp import MLPOptions, NormOptions
from recsys.modules.multitask import TaskHeads
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class DNNConfig(MLPOptions, NormOptions, FeatureOptions):
    """Options of :class:`DNN`.

    Args:
        hidden: widths of the MLP.
        activation, dropout, norm: MLP options (:class:`~recsys.modules.mlp.MLPOptions`, ``NormOptions``).
        features, use_dense: its input (:class:`~recsys.modules.sparse.FeatureOptions`).
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])


@register_model("dnn")
class DNN(RankingModel):
    """MLP over [B, F * D + Dd] -> [B, H] -> one linear head per task.

    Example::

        logits = DNN(schema, DNNConfig())(batch)   # {"ctr": [B]}
    """

    Config = DNNConfig

    def __init__(self, schema: Schema, config: DNNConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.mlp = config.mlp(self.sparse_arch.width, config.hidden, norm=config.norm)
        self.heads = TaskHeads(self.mlp.output_dim, self.tasks)

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, _ = self.sparse_arch.read(batch)
        return self.heads(self.mlp(x))


@dataclass
class DNNMTSConfig(DNNConfig, ScenarioTowerOptions):
    """Options of :class:`DNNMTS`: those of :class:`DNNConfig` (``hidden`` and ``norm`` are the shared bottom's)
    plus ``tower_hidden`` (:class:`~recsys.models.multi_scenario.ScenarioTowerOptions`)."""

    hidden: List[Width] = field(default_factory=lambda: [256, 128])


@register_model("dnn_mts")
class DNNMTS(MultiScenarioModel):
    """DNN with scenario-specific towers (MT-S).

    Shapes: x [B, F * D + Dd] -> bottom [B, H] -> towers [B, S, T] -> ``{task: [B]}`` (own scenario).

    Example::

        model = DNNMTS(schema, DNNMTSConfig(hidden=[128], tower_hidden=[32]))
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
        model(batch)["ctr"]                             # [B]
    """

    Config = DNNMTSConfig

    def __init__(self, schema: Schema, config: DNNMTSConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.instance_dim = self.sparse_arch.width
        self.bottom = config.mlp(self.instance_dim, config.hidden, norm=config.norm)
        self.towers = self.scenario_towers(self.bottom.output_dim, config)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, _ = self.sparse_arch.read(batch)
        return ScenarioViews(task_views(self.towers(self.bottom(x)), self.tasks), x)
