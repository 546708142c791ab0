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

from dataclasses import dataclass

import torch

from recsys.data.batch import Batch
from recsys.models.base import register_model
from recsys.models.multi_scenario import MultiScenarioModel, ScenarioTowerOptions, ScenarioViews, task_views
from recsys.modules.experts import MMoE, MMoEOptions
from recsys.modules.scenario import LabelSpaceMixer
from recsys.modules.sparse import FeatureInput, FeatureOptions
from recsys.schema import Schema


@dataclass
class HMoEConfig(MMoEOptions, ScenarioTowerOptions, FeatureOptions):
    """Options of :class:`HMoE`.

    Args:
        num_experts, expert_hidden: the MMoE's shared experts (:class:`~recsys.modules.experts.MMoEOptions`).
        tower_hidden: widths of each scenario's tower (its output layer has one unit per task).
        dropout, activation: MLP options.
        features, use_dense: the input (:class:`~recsys.modules.sparse.FeatureOptions`).
    """


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
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        in_dim = self.instance_dim = self.sparse_arch.width
        self.scenario_keys = [f"scenario{s}" for s in range(schema.num_scenarios)]
        self.mmoe = MMoE.from_options(in_dim, self.scenario_keys, config)
        # each scenario's tower reads its own mixture of the experts (unlike the MT-S towers on one input)
        self.towers = torch.nn.ModuleList(
            config.mlp(self.mmoe.output_dim, config.tower_hidden, output_dim=len(self.tasks))
            for _ in self.scenario_keys
        )
        self.mixer = LabelSpaceMixer(in_dim, schema.num_scenarios)

    def scenario_views(self, batch: Batch) -> ScenarioViews:
        x, _ = self.sparse_arch.read(batch)
        reps = self.mmoe(x)
        towers = torch.stack([tower(reps[key]) for tower, key in zip(self.towers, self.scenario_keys)], dim=1)
        return ScenarioViews(task_views(self.mixer(x, towers), self.tasks), x)
