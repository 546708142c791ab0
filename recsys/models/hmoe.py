"""HMoE: multi-scenario learning with task relationships in the label space.

Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting Task Relationships in the Label
Space", CIKM 2020.

* Feature space: an MMoE over the scenarios (shared experts, one softmax gate per scenario;
  :class:`~recsys.modules.experts.MMoE`) feeds one tower per scenario, ``t_j``.
* Label space: scenario i predicts ``w_ii * t_i + sum_{j != i} w_ij * stopgrad(t_j)`` with ``w_i`` a softmax
  over the input (:class:`~recsys.modules.scenario.LabelSpaceMixer`): the other scenarios' predictions help
  scenario i without being trained by scenario i's rows.

Towers have one output per task and the mixing acts on logits (binary) or predictions (regression), so the loss
stays a BCE on logits.
"""

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from recsys.config import Fraction, Width
from recsys.data.batch import Batch
from recsys.models.base import register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioViews, task_views
from recsys.modules.experts import MMoE
from recsys.modules.mlp import Activation, MLP
from recsys.modules.scenario import LabelSpaceMixer
from recsys.modules.sparse import SparseArch
from recsys.schema import Schema


@dataclass
class HMoEConfig:
    """Options of :class:`HMoE`.

    Args:
        num_experts: shared experts of the MMoE.
        expert_hidden: widths of each expert MLP.
        tower_hidden: widths of each scenario's tower (its output layer has one unit per task).
        dropout, activation: MLP options.
        features: sparse features read (default: all).
        use_dense: feed dense features.
    """

    num_experts: Width = 4
    expert_hidden: List[Width] = field(default_factory=lambda: [256, 128])
    tower_hidden: List[Width] = field(default_factory=lambda: [64])
    dropout: Fraction = 0.0
    activation: Activation = "relu"
    features: Optional[List[str]] = None
    use_dense: bool = True


@register_model("hmoe")
class HMoE(MultiScenarioModel):
    """HMoE over a schema.

    Shapes: x [B, E] -> MMoE {scenario: [B, H]} -> towers [B, S, T] -> label-space mix [B, S, T].

    Example::

        model = HMoE(schema, HMoEConfig(num_experts=4))
        model.scenario_views(batch).outputs["ctr"]      # [B, S]
    """

    Config = HMoEConfig

    def __init__(self, schema: Schema, config: HMoEConfig) -> None:
        super().__init__(schema, config)
        self.features = self.check_features(config.features, "features")
        self.sparse_arch = SparseArch(schema)
        self.use_dense = config.use_dense and schema.dense_dim > 0
        in_dim = self.instance_dim = self.sparse_arch.output_dim(self.features) + (
            schema.dense_dim if self.use_dense else 0)
        self.scenario_keys = [f"scenario{s}" for s in range(schema.num_scenarios)]
        self.mmoe = MMoE(in_dim, self.scenario_keys, num_experts=config.num_experts,
                         expert_hidden=config.expert_hidden, activation=config.activation, dropout=config.dropout)
        self.towers = torch.nn.ModuleList(
            MLP(self.mmoe.output_dim, config.tower_hidden, output_dim=len(self.tasks), activation=config.activation,
                dropout=config.dropout)
            for _ in self.scenario_keys
        )
        self.mixer = LabelSpaceMixer(in_dim, schema.num_scenarios)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x = self.sparse_arch(batch.sparse).concat(self.features)
        if self.use_dense:
            x = torch.cat([x, batch.dense], dim=1)
        reps = self.mmoe(x)
        towers = torch.stack([tower(reps[key]) for tower, key in zip(self.towers, self.scenario_keys)], dim=1)
        return ScenarioViews(task_views(self.mixer(x, towers), self.tasks), x)
