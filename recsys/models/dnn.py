"""DNN: an MLP over concatenated embeddings and dense features, shared by all tasks (one output per task).

The plain deep baseline of CTR prediction (e.g. Covington et al., "Deep Neural Networks for YouTube
Recommendations", RecSys 2016). In multi-scenario comparisons ``dnn`` is MT (one model for every scenario) and
ST (one ``dnn`` per scenario, trained on ``data.scenarios: [s]``); ``dnn_mts`` is MT-S: the shared MLP as a bottom
and one tower per scenario (the shared-bottom structure of Caruana, "Multitask Learning", 1997, over scenarios),
the DNN backbone SSIM wraps.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from recsys.config import Fraction, Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioViews, task_views
from recsys.modules.mlp import Activation, MLP, Norm, TaskHeads
from recsys.modules.scenario import ScenarioMLP
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class DNNConfig:
    """Options of :class:`DNN`: MLP widths and options, the features used, and whether dense features enter."""

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    dropout: Fraction = 0.0
    activation: Activation = "relu"
    norm: Norm = "none"
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


@dataclass
class DNNMTSConfig:
    """Options of :class:`DNNMTS`.

    Args:
        hidden: widths of the shared bottom MLP.
        tower_hidden: widths of each scenario's tower (its output layer has one unit per task).
        dropout, activation, norm: MLP options (norm applies to the bottom).
        features: sparse features read (default: all).
        use_dense: feed dense features.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower_hidden: List[Width] = field(default_factory=lambda: [64])
    dropout: Fraction = 0.0
    activation: Activation = "relu"
    norm: Norm = "none"
    features: Optional[List[str]] = None
    use_dense: bool = True


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
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        in_dim = self.instance_dim = self.sparse_arch.output_dim(self.features) + (
            schema.dense_dim if self.use_dense else 0)
        self.bottom = MLP(in_dim, config.hidden, activation=config.activation, dropout=config.dropout,
                          norm=config.norm)
        self.towers = ScenarioMLP(self.bottom.output_dim, schema.num_scenarios, config.tower_hidden,
                                  output_dim=len(self.tasks), activation=config.activation, dropout=config.dropout)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        return ScenarioViews(task_views(self.towers(self.bottom(x)), self.tasks), x)
