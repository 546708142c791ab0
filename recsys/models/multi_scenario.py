"""The multi-scenario contract that SSIM (and any scenario-level training scheme) wraps.

A multi-scenario model predicts every task with one tower per scenario. ``scenario_views(batch)`` returns what
EVERY scenario's tower predicts for every row, ``{task: [B, S]}``, together with the instance embedding the
towers start from; the normal ``forward`` picks each row's own scenario. Towers are generalised to all schema
tasks: each tower has one output per task (CTR, and e.g. stay time and CVR on the synthetic world), so a
scenario-level scheme treats every task alike.

Models following it: ``dnn_mts``, ``deepfm_mts``, ``dcn_mts`` (shared bottom, scenario towers), ``star`` and
``hmoe``. DFFM has no per-scenario towers (the scenario enters through the interaction weights) and is not
one; neither are MT models (``dnn``, ``deepfm``, ``dcn``), whose prediction ignores the scenario identity.
"""

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple

import torch

from recsys.config import Width
from recsys.data.batch import Batch
from recsys.models.base import RankingModel, Requirements
from recsys.modules.mlp import MLPOptions
from recsys.modules.scenario import ScenarioMLP, select_scenario


@dataclass
class ScenarioTowerOptions(MLPOptions):
    """Scenario towers of a model config (flat ``model.params`` keys).

    Args:
        tower_hidden: widths of each scenario's tower (its output layer has one unit per task).
        activation, dropout: tower MLP options (:class:`~recsys.modules.mlp.MLPOptions`).
    """

    tower_hidden: List[Width] = field(default_factory=lambda: [64])


class ScenarioViews(NamedTuple):
    """What every scenario predicts for every row.

    Attributes:
        outputs: ``{task: [B, S]}`` logits (binary) or predictions (regression) of each scenario's tower.
        instance: [B, E] the instance embedding (concatenated feature embeddings and dense features) the model
            reads; SSIM's selection network reads it too.
    """

    outputs: Dict[str, torch.Tensor]
    instance: torch.Tensor


class MultiScenarioModel(RankingModel):
    """Base of models with one tower per scenario.

    Subclasses implement :meth:`scenario_views` and set ``instance_dim`` (the width E of the instance
    embedding); ``forward`` returns each row's own scenario's outputs.

    Example::

        views = model.scenario_views(batch)
        views.outputs["ctr"]          # [B, S]
        model(batch)["ctr"]           # [B]: views.outputs["ctr"][b, batch.scenario[b]]
    """

    requirements = Requirements(scenario=True)

    instance_dim: int

    @property
    def num_scenarios(self) -> int:
        return self.schema.num_scenarios

    def scenario_towers(self, in_dim: int, options: ScenarioTowerOptions) -> ScenarioMLP:
        """One tower per scenario over [B, in_dim], one output per task: [B, in_dim] -> [B, S, T] (MT-S)."""
        return ScenarioMLP(
            in_dim,
            self.num_scenarios,
            options.tower_hidden,
            output_dim=len(self.tasks),
            activation=options.activation,
            dropout=options.dropout,
        )

    def scenario_views(self, batch: Batch) -> ScenarioViews:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        views = self.scenario_views(batch)
        return own_scenario(views.outputs, batch.scenario, self.tasks)


def own_scenario(outputs: Dict[str, torch.Tensor], scenario: torch.Tensor, tasks) -> Dict[str, torch.Tensor]:
    """``{task: [B]}``: each row's own column of ``{task: [B, S]}``."""
    return {t: select_scenario(outputs[t], scenario) for t in tasks}


def task_views(stacked: torch.Tensor, tasks) -> Dict[str, torch.Tensor]:
    """[B, S, T] tower outputs -> ``{task: [B, S]}`` in schema task order."""
    return {t: stacked[:, :, i] for i, t in enumerate(tasks)}
