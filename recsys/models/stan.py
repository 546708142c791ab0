"""STAN: Stage-Adaptive Network.

Li, Zheng, Xiao and Wang, "STAN: Stage-Adaptive Network for Multi-Task Recommendation by Learning User
Lifecycle-Based Representation", RecSys 2023 (arXiv:2306.12232).

Users move through lifecycle stages (new, wandering, sticky, loyal) that want different trade-offs between
tasks. STAN adds a user-state branch to a multi-task backbone (PLE or MMoE here):

* user preference learning: self-attention over the user's feature embeddings gives ``U'``; per task k a
  task-specific attention unit gives the state-aware user embedding ``s_k = U' * softmax(W_k U')``, which joins
  the backbone's representation at task k's tower, and a head on ``s_k`` predicts the user's preference for
  task k, trained with a squared loss against the mean of the user's strictly earlier labels of task k (the
  pseudo-label; computed from the time-ordered data, see :mod:`recsys.data.history` and docs/stan.md);
* latent stage representation (Algorithm 1): a Beta distribution per user and task accumulates the
  preference predictions weighted by each sample's time-order position; every sample's task loss is weighted
  by ``gamma_k ~ Beta(alpha_k, beta_k)`` (no gradient). Total loss = sum_k [gamma_k * loss_k + state loss_k].

Ablations (``model.params``): ``loss_weighting: prediction`` (STAN without Beta: ``gamma_k`` = the head's
prediction), ``loss_weighting: none`` (the branch without re-weighting), ``state_branch: false`` (the plain
backbone; with ``configs/datasets/synthetic_stage.yaml`` that is the PLE-stage baseline, the true stage given
as a user feature).
"""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import torch
from torch import nn

from recsys.config import NonNegativeFloat, NonNegativeInt, PositiveInt, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.modules.experts import EXPERT_BACKBONES, MMoEOptions, PLEOptions
from recsys.modules.lifecycle import PREFERENCE, BetaTracker, EmbeddingProjector, UserStateBranch, state_loss
from recsys.modules.multitask import task_towers
from recsys.modules.sparse import FeatureInput, FeatureOptions, check_features
from recsys.schema import Schema


@dataclass
class STANConfig(MMoEOptions, PLEOptions, FeatureOptions):
    """Options of :class:`STAN`.

    Args:
        backbone: ``ple`` (CGC levels with task-specific and shared experts) or ``mmoe``.
        expert_hidden: widths of each expert MLP.
        num_experts: MMoE's shared experts (:class:`~recsys.modules.experts.MMoEOptions`).
        levels, specific_experts, shared_experts: PLE's extraction levels and experts per task / shared
            (:class:`~recsys.modules.experts.PLEOptions`).
        tower_hidden: hidden widths of each task tower (input: backbone output and ``s_k``).
        dropout: expert, tower and state-branch dropout.
        activation: of every MLP (experts, towers, preference heads).
        features: sparse features of the backbone (default: all).
        use_dense: feed dense features to the backbone.
        state_branch: add the user-state branch (False: the plain backbone).
        user_features: features the branch attends over (default: the schema's ``user`` group; equal widths).
        attention_heads: heads of the branch's self-attention.
        preference_hidden: hidden widths of each preference head.
        loss_weighting: ``beta`` (Algorithm 1), ``prediction`` (gamma = the head's prediction) or ``none``.
        state_loss_weight: weight of each task's state (pseudo-label) loss.
        projector_rows: rows of ``s_k`` per task logged to TensorBoard's projector per evaluation (0: none).
    """

    backbone: Literal["ple", "mmoe"] = "ple"
    expert_hidden: List[Width] = field(default_factory=lambda: [128, 64])
    levels: PositiveInt = 1
    tower_hidden: List[Width] = field(default_factory=lambda: [64])
    state_branch: bool = True
    user_features: Optional[List[str]] = None
    attention_heads: PositiveInt = 2
    preference_hidden: List[Width] = field(default_factory=lambda: [32])
    loss_weighting: Literal["beta", "prediction", "none"] = "beta"
    state_loss_weight: NonNegativeFloat = 1.0
    projector_rows: NonNegativeInt = 1000


@register_model("stan")
class STAN(RankingModel):
    """A PLE/MMoE backbone with STAN's user-state branch and stage-adaptive loss weights.

    Shapes: B batch, F features, Fu user features, D embedding width, Dd dense features, H expert width.
    input [B, F * D + Dd] -> backbone -> {task: [B, H]}; user features [B, Fu, D] -> branch -> {task: [B, Fu * D]}
    (``s_k``) and preference logits [B]; tower_k([B, H + Fu * D]) -> logit or prediction [B].

    Outputs: ``{task: [B]}`` plus ``{"preference/<task>": [B]}`` (the preference heads' logits, read by the
    loss hooks) when the branch is on.

    Example::

        model = STAN(schema, STANConfig(backbone="ple", loss_weighting="beta"))
        out = model(batch)                                  # {"ctr": [B], ..., "preference/ctr": [B], ...}
        weights = model.loss_weights(batch, out)            # {"ctr": gamma [B], ...}
        losses = model.extra_losses(batch, out)             # {"state/ctr": scalar, ...}
    """

    requirements = Requirements(min_tasks=2, history=True)

    Config = STANConfig

    def __init__(self, schema: Schema, config: STANConfig) -> None:
        super().__init__(schema, config)
        self.sparse_arch = FeatureInput(schema, config.features, config.use_dense)
        self.backbone = EXPERT_BACKBONES[config.backbone](self.sparse_arch.width, self.tasks, config)
        self.weighting = config.loss_weighting if config.state_branch else "none"
        self.state_loss_weight = config.state_loss_weight
        self.state: Optional[UserStateBranch] = None
        self.tracker: Optional[BetaTracker] = None
        self.projectors: Optional[nn.ModuleDict] = None
        state_dim = 0
        if config.state_branch:
            self._check_state_inputs(schema, config)
            self.user_features = check_features(
                schema,
                config.user_features if config.user_features is not None else self.sparse_arch.names_in(["user"]),
                "user_features",
            )
            dims = {schema.feature(n).embedding_dim for n in self.user_features}
            if len(dims) != 1:
                raise ConfigError(
                    f"model.params.user_features: the state branch needs equal embedding widths, got {sorted(dims)}"
                )
            self.state = UserStateBranch(
                len(self.user_features),
                dims.pop(),
                self.tasks,
                heads=config.attention_heads,
                head_hidden=config.preference_hidden,
                dropout=config.dropout,
                activation=config.activation,
            )
            state_dim = self.state.output_dim
            if self.weighting == "beta":
                assert schema.user_feature is not None
                self.tracker = BetaTracker(schema.feature(schema.user_feature).num_embeddings, self.tasks)
            if config.projector_rows > 0 and schema.eval_groups:
                self.projector_group, names = schema.eval_groups[0]
                self.projectors = nn.ModuleDict(
                    {
                        t: EmbeddingProjector(f"stan/state_embedding/{t}", names, config.projector_rows)
                        for t in self.tasks
                    }
                )
        elif config.loss_weighting != "beta" and config.loss_weighting != "none":
            raise ConfigError("model.params.loss_weighting needs the state branch (state_branch: true)")
        self.towers = task_towers(
            {t: self.backbone.output_dim + state_dim for t in self.tasks},
            config.tower_hidden,
            config.activation,
            config.dropout,
        )

    def _check_state_inputs(self, schema: Schema, config: STANConfig) -> None:
        if schema.user_feature is None:
            raise ConfigError("model 'stan': the state branch needs a user column ('user' in the dataset spec)")
        missing = [t for t in self.tasks if t not in schema.history_tasks]
        if missing:
            raise ConfigError(
                f"model 'stan': the state branch needs each task's label history, missing for {missing}; the "
                "dataset spec needs 'user' and 'time' (and 'history.tasks', if given, must list every task; "
                "see recsys/data/history.py), or set state_branch: false"
            )

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, emb = self.sparse_arch.read(batch)
        reps = self.backbone(x)
        out: Dict[str, torch.Tensor] = {}
        if self.state is None:
            for t in self.tasks:
                out[t] = self.towers[t](reps[t]).squeeze(-1)
            return out
        state = self.state(emb.stack(self.user_features))
        for t in self.tasks:
            out[t] = self.towers[t](torch.cat([reps[t], state[t]], dim=1)).squeeze(-1)
            out[PREFERENCE + t] = state[PREFERENCE + t]
            if self.projectors is not None:
                self.projectors[t](state[t], batch.groups[self.projector_group], batch.row_id >= 0)
        return out

    def preferences(self, outputs: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The preference heads' predictions in [0, 1], [B, T] (no gradient)."""
        return torch.sigmoid(torch.stack([outputs[PREFERENCE + t] for t in self.tasks], dim=1)).detach()

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``gamma_k`` per sample: a Beta draw (``beta``), the head's prediction (``prediction``) or none."""
        if self.weighting == "none":
            return {}
        p = self.preferences(outputs)
        if self.tracker is not None:
            # Algorithm 1's counter: the sample's 1-based position among its user's samples in time order
            gamma = self.tracker(batch.user, batch.history["count"] + 1.0, p)
        else:
            gamma = p
        return {t: gamma[:, i] for i, t in enumerate(self.tasks)}

    def extra_losses(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``state/<task>``: squared loss of the preference head against the mean of the user's strictly earlier
        labels, over rows whose user has such labels."""
        if self.state is None:
            return {}
        real = batch.weights > 0
        return {
            f"state/{t}": self.state_loss_weight
            * state_loss(outputs[PREFERENCE + t], batch.history[f"{t}/mean"], real & (batch.history[f"{t}/count"] > 0))
            for t in self.tasks
        }
