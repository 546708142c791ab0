"""STAR: Star Topology Adaptive Recommender.

Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR Prediction",
CIKM 2021 (arXiv:2101.11427).

* Partitioned normalisation (PN) of the input: per-scenario statistics (kept separately for evaluation) and
  ``gamma * gamma_s``, ``beta + beta_s`` affine parameters (:class:`~recsys.modules.scenario.PartitionedNorm`).
* Star-topology FC network: scenario s's layer uses ``W_shared * W_s`` (element-wise) and ``b_shared + b_s``
  (:class:`~recsys.modules.scenario.StarMLP`); its output layer has one unit per task.
* Auxiliary network: a small MLP over the scenario embedding and the features that describe the scenario context
  (default: the ``scenario`` and ``context`` groups) whose output adds to the logits.

The scenario embedding of the auxiliary network is a per-scenario parameter like STAR's other partitioned
parameters, so every scenario's view of a row can be computed (``scenario_views``, what SSIM trains); the
scenario feature of the data (if any) still enters the main network as a feature.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch
from torch import nn

from recsys.config import Probability, Width
from recsys.data.batch import Batch
from recsys.models.base import register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioViews, task_views
from recsys.modules.mlp import MLP, MLPOptions
from recsys.modules.scenario import PartitionedNorm, StarMLP
from recsys.modules.sparse import FeatureInput, FeatureOptions, check_features
from recsys.schema import Schema


@dataclass
class STARConfig(MLPOptions, FeatureOptions):
    """Options of :class:`STAR`.

    Args:
        hidden: widths of the star-topology FC network.
        dropout, activation: FC options.
        aux_hidden: widths of the auxiliary network (its output layer has one unit per task).
        aux_features: sparse features of the auxiliary network besides the scenario embedding (default: the
            ``scenario`` and ``context`` groups).
        scenario_dim: width of the auxiliary network's scenario embedding.
        features: sparse features of the main network (default: all).
        use_dense: feed dense features to the main network.
        pn_momentum: running-statistics rate of the partitioned normalisation.
    """

    hidden: List[Width] = field(default_factory=lambda: [256, 128, 64])
    aux_hidden: List[Width] = field(default_factory=lambda: [32])
    aux_features: Optional[List[str]] = None
    scenario_dim: Width = 8
    pn_momentum: Probability = 0.1


@register_model("star")
class STAR(MultiScenarioModel):
    """STAR over a schema.

    Shapes: x [B, E] -> PN [B, S, E] -> star FC [B, S, T]; aux [B, S, T]; views = sum -> ``{task: [B]}`` (own).

    Example::

        model = STAR(schema, STARConfig(hidden=[128, 64]))
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
        model(batch)["ctr"]                             # [B]
    """

    Config = STARConfig

    def __init__(self, schema: Schema, config: STARConfig) -> None:
        super().__init__(schema, config)
        s, t = schema.num_scenarios, len(self.tasks)
        default_aux = [f.name for f in schema.features_in(["scenario", "context"])]
        self.aux_features = check_features(
            schema, config.aux_features if config.aux_features is not None else default_aux, "aux_features"
        )
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        in_dim = self.instance_dim = self.sparse_arch.width
        self.norm = PartitionedNorm(in_dim, s, momentum=config.pn_momentum)
        self.star = StarMLP(
            in_dim, config.hidden, s, output_dim=t, activation=config.activation, dropout=config.dropout
        )
        self.scenario_embedding = nn.Parameter(torch.randn(s, config.scenario_dim) * 0.05)
        self.aux = MLP(
            config.scenario_dim + self.sparse_arch.output_dim(self.aux_features),
            config.aux_hidden,
            output_dim=t,
            activation=config.activation,
        )

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, emb = self.sparse_arch.read(batch)
        main = self.star(self.norm(x, batch.scenario, batch.weights))  # [B, S, T]
        b, s = x.shape[0], self.num_scenarios
        aux_in = self.scenario_embedding.unsqueeze(0).expand(b, -1, -1)  # [B, S, Ds]
        if self.aux_features:
            context = emb.concat(self.aux_features).unsqueeze(1).expand(-1, s, -1)
            aux_in = torch.cat([aux_in, context], dim=2)
        return ScenarioViews(task_views(main + self.aux(aux_in), self.tasks), x)
