"""CBMR and MultiCBMR: calibration-based meta-learning for live-streaming ranking.

Tang, Yang and Xiao (Shopee), "Calibration based MetaRec CTR" / "Shopee Live personalized CTR optimization via
calibration-based meta-learning", DataFunSummit 2023 (https://zhuanlan.zhihu.com/p/671193362). Calibration
ideas from Calibration4CVR (2018) and PPNet (Kuaishou, 2021).

CBMR is Wide&Deep plus two meta modules that generate sample-adaptive parameters, so every sample effectively
gets its own model ("one sample, one model"; reported: CTR AUC +1.9% over Wide&Deep):

* **EmbCB** rescales each sparse field's embedding by a weight computed from the sample's own embeddings
  (:class:`~recsys.modules.calibration.EmbCB`; first design SENet-style, final design K shared vectors
  interacting with the embeddings);
* **MlpCB** scales every hidden unit of the deep MLP by ``gamma * sigmoid`` gates computed from all features
  (:class:`~recsys.modules.calibration.MlpCB`; unlike PPNet the gates read all features, nothing is
  stop-gradient, and the gates are chained serially).

**MultiCBMR** predicts every task of the schema (CTR and stay time on the live-streaming data) with shared
experts mixed per task by softmax gates (MMoE); EmbCB calibrates the shared input of all experts, and each
task's MlpCB supplies that task's scales for every expert layer (optionally per expert too) and its tower.

Multi-scene: one model serves all scenes; the scene id is among the MlpCB gate inputs (``mlpcb.scene_input``)
and evaluation reports every metric per scene.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Union, cast

import torch
from torch import nn

from recsys.config import PositiveFloat, Width
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.base import RankingModel, Requirements, register_model
from recsys.models.wide_deep import WideDeep, WideDeepConfig
from recsys.modules.calibration import EmbCB, MlpCB, scaled_mlp
from recsys.modules.experts import MMoEOptions, expert_mlps, mix, softmax_gates
from recsys.modules.mlp import MLP
from recsys.modules.multitask import task_towers
from recsys.modules.sparse import (
    Embeddings,
    FeatureInput,
    FeatureOptions,
    check_features,
    dense_first_order,
    first_order_logits,
    wide_width,
)
from recsys.schema import Schema


@dataclass
class EmbCBConfig:
    """EmbCB options (see :class:`~recsys.modules.calibration.EmbCB`).

    Args:
        enabled: use EmbCB.
        design: ``shared`` (final: K shared vectors) or ``senet`` (first: mean-pooling).
        num_vectors: K (the paper tried 1, 2 and 16).
        hidden: width of the hidden ReLU layer.
        interaction_activation: ``linear`` (final) or ``relu`` after the shared-vector interaction.
        output_activation: ``scaled_sigmoid`` (gamma * sigmoid), ``sigmoid`` or ``relu`` (collapses to zero).
        gamma: bound of ``scaled_sigmoid``.
        granularity: ``field`` (a weight per field) or ``field_dim`` (per field x dim).
    """

    enabled: bool = True
    design: Literal["shared", "senet"] = "shared"
    num_vectors: Width = 16
    hidden: Width = 128
    interaction_activation: Literal["linear", "relu"] = "linear"
    output_activation: Literal["scaled_sigmoid", "sigmoid", "relu"] = "scaled_sigmoid"
    gamma: PositiveFloat = 2.0
    granularity: Literal["field", "field_dim"] = "field"


@dataclass
class MlpCBConfig(FeatureOptions):
    """MlpCB options (see :class:`~recsys.modules.calibration.MlpCB`).

    Args:
        enabled: use MlpCB.
        features, use_dense: what the gates read (default: every sparse feature and the dense features).
        scene_input: make sure the scene id feature (``schema.scenario_feature``) is among the gate inputs.
        hidden: width of each gate's hidden layer.
        gamma: scales in (0, gamma).
        serial: gate l reads gate l-1's output (CBMR); False: every gate reads the features (PPNet).
        stop_gradient: detach, inside the gates, the features the main network also reads (PPNet); CBMR
            trains them through both.
    """

    enabled: bool = True
    scene_input: bool = True
    hidden: Width = 128
    gamma: PositiveFloat = 2.0
    serial: bool = True
    stop_gradient: bool = False


def build_embcb(cfg: EmbCBConfig, field_dims: List[int]) -> Optional[EmbCB]:
    if not cfg.enabled:
        return None
    return EmbCB(
        field_dims,
        design=cfg.design,
        num_vectors=cfg.num_vectors,
        hidden=cfg.hidden,
        interaction_activation=cfg.interaction_activation,
        output_activation=cfg.output_activation,
        gamma=cfg.gamma,
        granularity=cfg.granularity,
    )


class GateInputs:
    """Which features MlpCB's gates read, split into gate-only features and features the main network also
    reads (the latter are the ones ``stop_gradient`` detaches). Built once; ``__call__`` only indexes by
    fixed names, so models stay FX-traceable.
    """

    def __init__(self, model: RankingModel, cfg: MlpCBConfig, main_features: List[str], main_dense: bool) -> None:
        schema = model.schema
        names = model.check_features(cfg.features, "mlpcb.features")
        if cfg.scene_input and schema.scenario_feature is not None and schema.scenario_feature not in names:
            names = names + [schema.scenario_feature]
        dense = cfg.use_dense and schema.dense_dim > 0
        self.own = [n for n in names if n not in main_features]
        self.main = [n for n in names if n in main_features]
        self.own_dense = dense and not main_dense
        self.main_dense = dense and main_dense
        self.dim = sum(schema.feature(n).embedding_dim for n in names) + (schema.dense_dim if dense else 0)
        if self.dim == 0:
            raise ConfigError("model.params.mlpcb.features: the gates need at least one input")

    @staticmethod
    def _part(emb: Embeddings, batch: Batch, names: List[str], dense: bool) -> Optional[torch.Tensor]:
        parts = [emb.features[n] for n in names] + ([batch.dense] if dense else [])
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def __call__(self, emb: Embeddings, batch: Batch) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """(gate-only input, main-network input), each [B, G_i] or None."""
        return (self._part(emb, batch, self.own, self.own_dense), self._part(emb, batch, self.main, self.main_dense))


@dataclass
class CBMRConfig(WideDeepConfig):
    """Options of :class:`CBMR`: Wide&Deep's (``hidden``, ``dropout``, ``activation``, ``norm``,
    ``deep_features``, ``wide_features``, ``use_dense``) plus ``embcb`` and ``mlpcb``.
    ``norm`` is applied inside each hidden block, before MlpCB's scale."""

    embcb: EmbCBConfig = field(default_factory=EmbCBConfig)
    mlpcb: MlpCBConfig = field(default_factory=MlpCBConfig)


@register_model("cbmr")
class CBMR(WideDeep):
    """Wide&Deep + EmbCB + MlpCB, each switchable.

    Shapes: B = batch, F = deep features, D = embedding dim, Dd = dense features, H_l = hidden widths,
    T = tasks, G = gate input width.
    embeddings [B, F * D] -> EmbCB -> [B, F * D] (+ dense) -> hidden layer l scaled by MlpCB's [B, H_l]
    -> [B, H_last] -> T heads; plus the wide part [B, T]. With both switched off it is exactly Wide&Deep.

    Example::

        model = CBMR(schema, CBMRConfig(hidden=[256, 128, 64], embcb=EmbCBConfig(num_vectors=16)))
        logits = model(batch)        # {"ctr": [B], "stay": [B], ...}
    """

    Config = CBMRConfig

    def __init__(self, schema: Schema, config: CBMRConfig) -> None:
        super().__init__(schema, config)
        self.embcb = build_embcb(config.embcb, self.sparse_arch.field_dims())
        self.gate_inputs: Optional[GateInputs] = None
        self.mlpcb: Optional[MlpCB] = None
        if config.mlpcb.enabled:
            if not config.hidden:
                raise ConfigError("model.params.hidden: MlpCB needs at least one hidden layer to calibrate")
            self.gate_inputs = GateInputs(self, config.mlpcb, self.sparse_arch.features, self.sparse_arch.use_dense)
            m = config.mlpcb
            self.mlpcb = MlpCB(
                self.gate_inputs.dim,
                self.deep.hidden_dims,
                hidden=m.hidden,
                gamma=m.gamma,
                serial=m.serial,
                stop_gradient=m.stop_gradient,
            )

    def deep_forward(self, emb: Embeddings, batch: Batch) -> torch.Tensor:
        x = self.sparse_arch.main_input(emb, batch, self.embcb)
        if self.mlpcb is None or self.gate_inputs is None:
            return self.deep(x)
        own, main = self.gate_inputs(emb, batch)
        return scaled_mlp(self.deep, x, self.mlpcb(own, main))


@dataclass
class MultiCBMRConfig(MMoEOptions, FeatureOptions):
    """Options of :class:`MultiCBMR`.

    Args:
        num_experts, expert_hidden: the shared experts (:class:`~recsys.modules.experts.MMoEOptions`).
        tower_hidden: widths of each task tower before its output layer.
        dropout, activation: expert and tower MLP options.
        features: sparse features of the experts' input (default: all).
        wide: add Wide&Deep's wide part (per-task first-order weights over ``wide_features``, default all).
        use_dense: dense features enter the experts (and the wide part).
        embcb: EmbCB on the experts' shared input.
        mlpcb: each task's gates (one chain per task covering the expert layers then the tower layers).
        expert_specific: the task's gates give every expert its own scales (E times wider expert gates).
    """

    tower_hidden: List[Width] = field(default_factory=lambda: [64])
    wide: bool = True
    wide_features: Optional[List[str]] = None
    embcb: EmbCBConfig = field(default_factory=EmbCBConfig)
    mlpcb: MlpCBConfig = field(default_factory=MlpCBConfig)
    expert_specific: bool = False


@register_model("multicbmr")
class MultiCBMR(RankingModel):
    """Multi-task CBMR: EmbCB shared by all experts, task-specific MlpCB in every expert layer and tower.

    Shapes: B = batch, F = features, D = embedding dim, E = experts, H_l = expert widths, T = tasks.
    x = EmbCB([B, F * D]) (+ dense); for each task t: expert e's layer l output is scaled by task t's
    [B, H_l] (or expert-specific) gate; experts [B, E, H] are mixed by t's softmax gate [B, E]; t's tower
    (layers scaled by t's gates) gives [B]; plus the wide part. Outputs ``{task: [B]}`` (logit for binary
    tasks, prediction for regression tasks such as stay time).

    Example::

        model = MultiCBMR(schema, MultiCBMRConfig(num_experts=4, expert_hidden=[128, 64]))
        out = model(batch)      # {"ctr": [B] logit, "stay": [B] log1p-seconds prediction, "cvr": [B]}
    """

    requirements = Requirements(min_tasks=2)

    Config = MultiCBMRConfig

    def __init__(self, schema: Schema, config: MultiCBMRConfig) -> None:
        super().__init__(schema, config)
        if config.num_experts < 1 or not config.expert_hidden:
            raise ConfigError("model.params: MultiCBMR needs at least one expert with at least one layer")
        T = len(self.tasks)
        self.sparse_arch = FeatureInput(
            schema, config.features, config.use_dense, wide_dim=wide_width(T) if config.wide else 0
        )
        self.wide_features = check_features(schema, config.wide_features, "wide_features")
        in_dim = self.sparse_arch.width
        self.embcb = build_embcb(config.embcb, self.sparse_arch.field_dims())
        self.num_experts = config.num_experts
        # the MMoE's experts and gates, driven here: every expert layer is scaled by each task's own gates
        self.experts = expert_mlps(in_dim, config.num_experts, config.expert_hidden, config.activation, config.dropout)
        self.expert_gates = softmax_gates({t: in_dim for t in self.tasks}, config.num_experts)
        self.towers = task_towers(
            {t: config.expert_hidden[-1] for t in self.tasks}, config.tower_hidden, config.activation, config.dropout
        )
        self.expert_layers = len(config.expert_hidden)
        self.expert_specific = config.expert_specific
        self.gate_inputs: Optional[GateInputs] = None
        self.mlpcb: Optional[nn.ModuleDict] = None
        if config.mlpcb.enabled:
            m = config.mlpcb
            self.gate_inputs = GateInputs(self, m, self.sparse_arch.features, self.sparse_arch.use_dense)
            width = config.num_experts if config.expert_specific else 1
            dims = [h * width for h in config.expert_hidden] + list(config.tower_hidden)
            self.mlpcb = nn.ModuleDict(
                {
                    t: MlpCB(
                        self.gate_inputs.dim,
                        dims,
                        hidden=m.hidden,
                        gamma=m.gamma,
                        serial=m.serial,
                        stop_gradient=m.stop_gradient,
                    )
                    for t in self.tasks
                }
            )
        self.wide = config.wide
        self.wide_dense = dense_first_order(self.sparse_arch, T) if config.wide else None

    def _expert(self, e: int) -> MLP:
        return cast(MLP, self.experts[e])

    def _tower(self, task: str) -> MLP:
        return cast(MLP, self.towers[task])

    def _expert_scales(self, scales: Tuple[torch.Tensor, ...], e: int) -> List[torch.Tensor]:
        """Expert e's scales for its layers from a task's gate outputs (sliced when expert-specific)."""
        out = []
        for layer in range(self.expert_layers):
            s = scales[layer]
            if self.expert_specific:
                h = self._expert(e).hidden_dims[layer]
                s = s[:, e * h : (e + 1) * h]
            out.append(s)
        return out

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        emb = self.sparse_arch(batch.sparse)
        x = self.sparse_arch.main_input(emb, batch, self.embcb)
        # an expert's first block does not depend on the scales applied after it: compute it once
        first = [self._expert(e).blocks[0](x) for e in range(self.num_experts)]
        own, main = self.gate_inputs(emb, batch) if self.gate_inputs is not None else (None, None)
        wide = (
            first_order_logits(emb, self.wide_features, len(self.tasks), self.wide_dense, batch.dense)
            if self.wide
            else None
        )
        out: Dict[str, torch.Tensor] = {}
        for i, t in enumerate(self.tasks):
            if self.mlpcb is not None:
                scales = self.mlpcb[t](own, main)
                experts = []
                for e in range(self.num_experts):
                    s = self._expert_scales(scales, e)
                    experts.append(scaled_mlp(self._expert(e), first[e] * s[0], s[1:], start=1))
                tower_scales: Sequence[Union[torch.Tensor, float]] = [
                    scales[self.expert_layers + j] for j in range(len(self._tower(t).blocks))
                ]
            else:
                experts = [
                    scaled_mlp(self._expert(e), first[e], [1.0] * (self.expert_layers - 1), start=1)
                    for e in range(self.num_experts)
                ]
                tower_scales = [1.0] * len(self._tower(t).blocks)
            mixed = mix(self.expert_gates[t](x), torch.stack(experts, dim=1))
            y = scaled_mlp(self._tower(t), mixed, tower_scales).squeeze(-1)
            out[t] = y + wide[:, i] if wide is not None else y
        return out
