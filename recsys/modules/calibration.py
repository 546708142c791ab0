"""Calibration blocks: modules that generate sample-adaptive parameters ("one sample, one model").

* :class:`EmbCB` - embedding calibration of CBMR (Shopee Live, "Calibration-based Meta-Rec", DataFunSummit
  2023): one weight per sparse field (or per field x dimension) computed from the sample's own embeddings,
  rescaling them before the deep part.
* :class:`MlpCB` - MLP calibration of CBMR, after PPNet (Kuaishou): gate networks whose outputs
  ``gamma * sigmoid(.)`` scale every hidden unit of a main MLP, per sample.
* :class:`GateNU` - the gate neural unit of PEPNet (Chang et al., "PEPNet: Parameter and Embedding
  Personalized Network for Infusing with Personalized Prior Information", KDD 2023):
  ``Linear -> ReLU -> Linear -> gamma * sigmoid``; MlpCB's gates are GateNUs.
* :class:`EPNet` - PEPNet's embedding personalisation: a GateNU over the domain features' embeddings and the
  (stop-gradient) main embeddings, scaling the main embeddings per field.
* :func:`scaled_mlp` - runs an :class:`~recsys.modules.mlp.MLP` multiplying each hidden block's output by a scale.

Every gate here (GateNU, EmbCB's excitation after its squeeze, and the squeeze-and-excitation of
:mod:`recsys.modules.cvr_calibration`) is ``Linear -> activation -> Linear -> gate_output``: they share
:func:`gate_output`, and EmbCB and EPNet share how field weights scale the embeddings (:func:`scale_fields`). Each
keeps its own layer names, which are the state-dict keys of trained checkpoints.

Shapes: B batch, F fields (sparse features), D embedding width (``sum D`` = total width of the concatenated
embeddings, widths may differ per field), G gate input width, H_l width of the l-th hidden layer, K shared
vectors of EmbCB.

Every module keeps its last forward's weights (detached) for ``tensorboard_stats()``, which the trainer logs:
scalars for one-element tensors, histograms otherwise.
"""

from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from recsys.modules.mlp import MLP

OUTPUT_ACTIVATIONS = ("scaled_sigmoid", "sigmoid", "relu")
GRANULARITIES = ("field", "field_dim")
HISTOGRAM_ROWS = 256  # rows of the last batch kept for histograms (enough for the shape, cheap to log)


def gate_output(name: str, x: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The output activation of a gate (GateNU, EmbCB, the squeeze-and-excitation of
    :mod:`recsys.modules.cvr_calibration`): ``gamma * sigmoid`` (``scaled_sigmoid``), ``sigmoid`` or ``relu``."""
    if name == "scaled_sigmoid":
        return gamma * torch.sigmoid(x)
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "relu":
        return torch.relu(x)
    raise ValueError(f"gate output activation must be one of {OUTPUT_ACTIVATIONS}, got {name!r}")


def field_columns(field_dims: Sequence[int]) -> torch.Tensor:
    """[sum D] int64: the field of every column of the concatenated embeddings (to broadcast per-field weights)."""
    return torch.cat([torch.full((d,), f, dtype=torch.long) for f, d in enumerate(field_dims)])


def scale_fields(x: torch.Tensor, weights: torch.Tensor, columns: torch.Tensor, granularity: str) -> torch.Tensor:
    """``x`` [B, sum D] times ``weights``: [B, F] broadcast over each field's columns (``field``, ``columns`` from
    :func:`field_columns`) or [B, sum D] (``field_dim``)."""
    if granularity == "field":
        weights = weights.index_select(1, columns)
    return x * weights


def _check_granularity(owner: str, granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"{owner} granularity must be field or field_dim, got {granularity!r}")


class GateNU(nn.Module):
    """Gate neural unit: ``gamma * sigmoid(W2 relu(W1 x + b1) + b2)``.

    The output bias starts at 0, so with ``gamma = 2`` every scale starts at exactly 1 (the gate begins as
    the identity and learns to amplify or damp).

    Args:
        in_dim: input width G.
        out_dim: number of scales.
        hidden: width of the ReLU layer.
        gamma: upper bound of the scales.

    Shapes: [B, G] -> [B, out_dim] in (0, gamma).

    Example::

        gate = GateNU(32, 64)
        scale = gate(x)            # [B, 64], 1.0 at initialisation up to the first layer's noise
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, gamma: float = 2.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.bias)
        self.gamma = gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gate_output("scaled_sigmoid", self.out(torch.relu(self.hidden(x))), self.gamma)


class EmbCB(nn.Module):
    """Embedding calibration: sample-adaptive weights for the sparse fields, computed from the embeddings.

    Two designs (the history of the module in CBMR; both stay available for ablations):

    * ``senet`` (the first design, squeeze-and-excitation): each field's embedding is mean-pooled to one
      number, the F numbers are concatenated, then ``Linear(F, hidden) -> ReLU -> Linear(hidden, out)`` and the
      output activation (SENet: ``sigmoid``).
    * ``shared`` (the final design): the mean-pooling is replaced by K learnable vectors ``q_1..q_K``
      (shared by all fields and samples) that interact with every field embedding by inner product,
      ``s[b, f, k] = <e[b, f], q_k>``, giving a [B, F, K] descriptor instead of SENet's [B, F]. Mean-pooling is
      the special case of one fixed vector ``q = (1/D, ..., 1/D)``, so ``q_1`` starts there (K = 1 begins as
      SENet's squeeze) and the others start random; with K >= D the squeeze loses no information. This
      interaction is the first layer and its activation is linear by default (``interaction_activation``;
      ``relu`` would cut every negative projection), followed by ``Linear(F*K, hidden) -> ReLU`` (the hidden
      layer, 128 wide by default) and ``Linear(hidden, out)`` with the output activation.

    Output activations: ``scaled_sigmoid`` (``gamma * sigmoid``, default: the weights start at 1 and stay in
    (0, gamma)), ``sigmoid`` (SENet, in (0, 1)), or ``relu``, the documented failure mode: a ReLU output can
    reach exactly zero, its gradient there is zero, and the weights collapse to zero (the fraction of zeros
    in ``tensorboard_stats()`` shows it).

    Fields narrower than the widest are zero-padded for the interaction (a shared vector's extra coordinates
    then see zeros).

    Args:
        field_dims: embedding width of each of the F fields, in the order of the concatenated input.
        design: ``shared`` or ``senet``.
        num_vectors: K, the number of shared vectors (``shared`` design).
        hidden: width of the hidden ReLU layer.
        interaction_activation: ``linear`` or ``relu`` after the interaction with the shared vectors.
        output_activation: ``scaled_sigmoid``, ``sigmoid`` or ``relu``.
        gamma: upper bound of ``scaled_sigmoid``.
        granularity: ``field`` (one weight per field, broadcast over its D dims) or ``field_dim`` (one weight
            per field x dim).

    Shapes: [B, sum D] -> [B, sum D] (the calibrated embeddings); ``field_weights``: [B, F] or [B, sum D].

    Example::

        cb = EmbCB([16] * 10)                  # 10 fields of width 16, K = 16 shared vectors
        calibrated = cb(emb.concat(names))     # [B, 160]
        w = cb.field_weights(emb.concat(names))  # [B, 10]
    """

    column_field: torch.Tensor
    field_width: torch.Tensor

    def __init__(
        self,
        field_dims: Sequence[int],
        design: str = "shared",
        num_vectors: int = 16,
        hidden: int = 128,
        interaction_activation: str = "linear",
        output_activation: str = "scaled_sigmoid",
        gamma: float = 2.0,
        granularity: str = "field",
    ) -> None:
        super().__init__()
        if design not in ("shared", "senet"):
            raise ValueError(f"EmbCB design must be shared or senet, got {design!r}")
        if interaction_activation not in ("linear", "relu"):
            raise ValueError(f"EmbCB interaction_activation must be linear or relu, got {interaction_activation!r}")
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"EmbCB output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}")
        _check_granularity("EmbCB", granularity)
        if num_vectors < 1 or hidden < 1 or not field_dims:
            raise ValueError("EmbCB needs at least one field, one shared vector and a positive hidden width")
        self.field_dims = [int(d) for d in field_dims]
        self.design = design
        self.num_vectors = num_vectors if design == "shared" else 0
        self.interaction_activation = interaction_activation
        self.output_activation = output_activation
        self.gamma = gamma
        self.granularity = granularity
        num_fields, width = len(self.field_dims), max(self.field_dims)
        self.width = width
        self.equal_widths = all(d == width for d in self.field_dims)
        self.shared_vectors: Optional[nn.Parameter]
        if design == "shared":
            q = torch.randn(num_vectors, width) / width**0.5
            q[0] = 1.0 / width  # the first vector starts as mean-pooling
            self.shared_vectors = nn.Parameter(q)
            squeeze_dim = num_fields * num_vectors
        else:
            self.shared_vectors = None
            squeeze_dim = num_fields
        out_dim = num_fields if granularity == "field" else sum(self.field_dims)
        self.fc_hidden = nn.Linear(squeeze_dim, hidden)
        self.fc_out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.fc_out.bias)
        if output_activation == "relu":
            nn.init.ones_(self.fc_out.bias)  # start at weight 1 like the sigmoid variants; it still collapses
        self.register_buffer("column_field", field_columns(self.field_dims), persistent=False)
        self.register_buffer("field_width", torch.tensor(self.field_dims, dtype=torch.float32), persistent=False)
        self._last: Optional[torch.Tensor] = None

    @property
    def num_fields(self) -> int:
        return len(self.field_dims)

    def _fields(self, x: torch.Tensor) -> torch.Tensor:
        """[B, sum D] -> [B, F, D_max] (narrower fields zero-padded)."""
        if self.equal_widths:
            return x.view(x.shape[0], self.num_fields, self.width)
        parts = torch.split(x, self.field_dims, dim=1)
        return torch.stack([F.pad(p, (0, self.width - p.shape[1])) for p in parts], dim=1)

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """The per-sample descriptor fed to the hidden layer: [B, F] (senet) or [B, F * K] (shared)."""
        fields = self._fields(x)
        if self.shared_vectors is None:
            return fields.sum(dim=2) / self.field_width.to(x.dtype)
        s = torch.einsum("bfd,kd->bfk", fields, self.shared_vectors)
        if self.interaction_activation == "relu":
            s = torch.relu(s)
        return s.reshape(x.shape[0], -1)

    def field_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The calibration weights: [B, F] (``field``) or [B, sum D] (``field_dim``)."""
        h = torch.relu(self.fc_hidden(self.squeeze(x)))
        return gate_output(self.output_activation, self.fc_out(h), self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.field_weights(x)
        self._last = w.detach()
        return scale_fields(x, w, self.column_field, self.granularity)

    def tensorboard_stats(self) -> "dict[str, torch.Tensor]":
        """Mean, variance and fraction of exact zeros of the last batch's weights (the ReLU collapse shows as a
        zero fraction rising to 1), their spread across samples, and a histogram."""
        w = self._last
        if w is None:
            return {}
        return {
            "weight_mean": w.mean(),
            "weight_var": w.var(),
            "weight_zero_frac": (w == 0).float().mean(),
            "weight_sample_std": w.std(dim=0).mean(),
            "weights": w[:HISTOGRAM_ROWS].flatten(),
        }


class MlpCB(nn.Module):
    """MLP calibration: one gate per hidden layer of a main MLP, giving per-sample, per-neuron scales.

    Gate ``l`` is a :class:`GateNU` producing ``gamma * sigmoid(.)`` scales of width ``layer_dims[l]``,
    which multiply the output of the main MLP's l-th hidden layer (after its activation).

    * ``serial=True`` (CBMR's default): the gates form a chain, gate 0 reads the gate input and gate ``l``
      reads gate ``l - 1``'s output (its scale vector), so deeper layers get deeper (more non-linear)
      functions of the features, like the main MLP itself.
    * ``serial=False`` (PPNet): every gate reads the gate input directly.

    The gate input is ``concat(inputs, main)``: ``inputs`` are gate-only features (PPNet's personal priors),
    ``main`` are features the main network also reads. With ``stop_gradient`` (PPNet) ``main`` is detached,
    so the gates do not move the main network's embeddings; CBMR trains everything through both nets.

    Args:
        in_dim: G, the width of ``concat(inputs, main)``.
        layer_dims: widths H_l of the layers to scale (one gate each).
        hidden: width of each gate's hidden ReLU layer.
        gamma: scales lie in (0, gamma); 1 at initialisation.
        serial: chain the gates (see above).
        stop_gradient: detach ``main``.

    Shapes: ``inputs`` [B, G1], ``main`` [B, G2] with G1 + G2 = G -> a tuple of [B, H_l].

    Example::

        cb = MlpCB(in_dim=64, layer_dims=[128, 64])
        scales = cb(gate_features)                  # ([B, 128], [B, 64])
        y = scaled_mlp(mlp, x, scales)
    """

    def __init__(
        self,
        in_dim: int,
        layer_dims: Sequence[int],
        hidden: int = 128,
        gamma: float = 2.0,
        serial: bool = True,
        stop_gradient: bool = False,
    ) -> None:
        super().__init__()
        if not layer_dims:
            raise ValueError("MlpCB needs at least one layer to scale")
        self.layer_dims = [int(d) for d in layer_dims]
        self.serial = serial
        self.stop_gradient = stop_gradient
        gates: List[nn.Module] = []
        width = in_dim
        for d in self.layer_dims:
            gates.append(GateNU(width, d, hidden, gamma))
            if serial:
                width = d
        self.gates = nn.ModuleList(gates)
        self._last: List[torch.Tensor] = []

    def forward(self, inputs: Optional[torch.Tensor], main: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
        parts = []
        if inputs is not None:
            parts.append(inputs)
        if main is not None:
            parts.append(main.detach() if self.stop_gradient else main)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        scales = []
        h = x
        for gate in self.gates:
            s = gate(h if self.serial else x)
            scales.append(s)
            h = s
        self._last = [s.detach() for s in scales]
        return tuple(scales)

    def tensorboard_stats(self) -> "dict[str, torch.Tensor]":
        """Per layer: a histogram of the scales and their mean."""
        out = {}
        for i, s in enumerate(self._last):
            out[f"gate{i}/scales"] = s[:HISTOGRAM_ROWS].flatten()
            out[f"gate{i}/mean"] = s.mean()
        return out


def scaled_mlp(mlp: MLP, x: torch.Tensor, scales: Sequence[Union[torch.Tensor, float]], start: int = 0) -> torch.Tensor:
    """Run ``mlp`` from hidden block ``start`` on, multiplying block ``l``'s output by ``scales[l - start]``.

    ``start = 1`` lets a caller compute block 0 once and reuse it under several sets of scales (a block's
    output does not depend on the scale applied after it).

    Shapes: x [B, in] (or [B, H_{start-1}]) -> [B, output_dim].
    """
    for i in range(start, len(mlp.blocks)):
        x = mlp.blocks[i](x) * scales[i - start]
    return mlp.output(x) if mlp.output is not None else x


class EPNet(nn.Module):
    """PEPNet's embedding personalisation network.

    ``weights = GateNU(concat(E(domain), stop_gradient(E)))``, output ``weights (x) E``: the domain (scene)
    features decide, per sample, how much each field of the main embeddings counts. The main embeddings are
    detached inside the gate (``stop_gradient``), so only the domain embeddings and the gate learn from it.

    Args:
        domain_dim: width of the domain features' embeddings (0: the gate reads only the main embeddings).
        field_dims: widths of the F main fields.
        hidden: GateNU hidden width.
        gamma: scales in (0, gamma).
        granularity: ``field`` or ``field_dim``.
        stop_gradient: detach the main embeddings inside the gate.

    Shapes: domain [B, Gd], main [B, sum D] -> [B, sum D].

    Example::

        ep = EPNet(16, [16] * 10)
        personalised = ep(emb.concat(["scene_id"]), emb.concat(names))
    """

    column_field: torch.Tensor

    def __init__(
        self,
        domain_dim: int,
        field_dims: Sequence[int],
        hidden: int = 128,
        gamma: float = 2.0,
        granularity: str = "field",
        stop_gradient: bool = True,
    ) -> None:
        super().__init__()
        _check_granularity("EPNet", granularity)
        self.field_dims = [int(d) for d in field_dims]
        self.granularity = granularity
        self.stop_gradient = stop_gradient
        out = len(self.field_dims) if granularity == "field" else sum(self.field_dims)
        self.gate = GateNU(domain_dim + sum(self.field_dims), out, hidden, gamma)
        self.register_buffer("column_field", field_columns(self.field_dims), persistent=False)
        self._last: Optional[torch.Tensor] = None

    def forward(self, domain: Optional[torch.Tensor], main: torch.Tensor) -> torch.Tensor:
        gate_main = main.detach() if self.stop_gradient else main
        x = gate_main if domain is None else torch.cat([domain, gate_main], dim=1)
        w = self.gate(x)
        self._last = w.detach()
        return scale_fields(main, w, self.column_field, self.granularity)

    def tensorboard_stats(self) -> "dict[str, torch.Tensor]":
        if self._last is None:
            return {}
        return {"weight_mean": self._last.mean(), "weights": self._last[:HISTOGRAM_ROWS].flatten()}
