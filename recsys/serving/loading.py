"""A trained run as an unsharded model for inference: one call, no DMP, no process group.

Training keeps the model inside ``DistributedModelParallel`` with its tables sharded (possibly over several
ranks) and saves checkpoints with ``torch.distributed.checkpoint`` (DCP). :func:`load_for_inference` rebuilds the
model from the run's own config and fitted encoders, materialises its tables on the CPU, and loads the model's
tensors from a checkpoint of any world size through the checkpoint module's safe reader (manifest checked first,
metadata read by a restricted unpickler, tensors only). The key mapping is done here, once:

    checkpoint key  ``model.model.<key>``   (app state ``model`` -> TrainModule's ``model`` -> the model's key)
    model key       ``<key>``               (e.g. ``sparse_arch.ebc.embedding_bags.user_id.weight``)

Example::

    model = load_for_inference("runs/wide_deep_synthetic")          # best checkpoint, eval mode, on the CPU
    logits = model(batch)                                             # {task: [B]}
"""

import os
from dataclasses import dataclass
from typing import Dict

import torch
from torch import nn

from recsys.config import Config, load_config
from recsys.data.dataset import Dataset
from recsys.data.encoding import load_encoders
from recsys.data.spec import DatasetSpec, load_spec
from recsys.errors import RecsysError
from recsys.models.base import RankingModel, build_model
from recsys.schema import Schema
from recsys.train import checkpoint as ckpt
from recsys.train.run_folder import RunFolder

RUN_CONFIG = "config.yaml"
ENCODERS = "encoders"
# the trainer saves {"model": TrainModule's state dict} (DCP flattens it to "model.<key>"), and TrainModule holds
# the model as its attribute "model": a model key k is checkpoint key "model.model.k"
APP_STATE = "model"
MODULE_PREFIX = "model."


@dataclass
class InferenceRun:
    """What export needs from a run folder.

    Attributes:
        config: the run's resolved config (its own ``config.yaml``).
        spec: its dataset spec (the copy in the run folder).
        schema: the schema the model was built for (table sizes from the fitted encoders).
        model: the unsharded model in eval mode, weights loaded, on the CPU.
        checkpoint: the checkpoint folder the weights came from.
        encoders: the run's ``encoders/`` folder.
    """

    config: Config
    spec: DatasetSpec
    schema: Schema
    model: RankingModel
    checkpoint: str
    encoders: str


def run_schema(config: Config, spec: DatasetSpec, encoders: str) -> Schema:
    """The schema of a trained run from its spec and fitted encoders alone: the data files need not be there
    (``Dataset.load`` would fingerprint them)."""
    dataset = Dataset(spec)  # reads no file
    load_encoders(encoders, dataset.sparse, dataset.dense)
    dataset.fitted = True
    return dataset.schema(config.model.embedding_dim)


def materialize(model: nn.Module, device: torch.device) -> None:
    """Give every parameter and buffer left on the meta device (the tables ``SparseArch`` builds for DMP) real,
    uninitialised storage on ``device``; the checkpoint fills them. Other tensors are not touched."""
    for module in model.modules():
        direct = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in direct):
            module.to_empty(device=device, recurse=False)


def load_state(model: nn.Module, path: str) -> None:
    """Load the model's tensors from checkpoint folder ``path`` (saved by any number of ranks, tables sharded
    in any way) into ``model``'s unsharded tensors, in place. Refuses a damaged or untrusted checkpoint, or one
    of another model, with one line."""
    live = model.state_dict()
    template: Dict[str, torch.Tensor] = {MODULE_PREFIX + k: v for k, v in live.items()}
    merged, _ = ckpt.load_checkpoint(path, {APP_STATE: template}, restore_rng=False)
    loaded = merged[APP_STATE]
    model.load_state_dict({k: loaded[MODULE_PREFIX + k] for k in live}, strict=True)


def open_run(run_dir: str, checkpoint: str = "best") -> InferenceRun:
    """The run in ``run_dir`` with its model loaded from ``checkpoint`` (``best``, ``latest`` or a folder).

    Raises:
        RecsysError: one line for a folder that is no run, missing encoders, or a bad checkpoint.
    """
    config_file = os.path.join(run_dir, RUN_CONFIG)
    if not os.path.isfile(config_file):
        raise RecsysError(f"{config_file}: no such file (is '{run_dir}' a run folder? train it first)")
    config = load_config(config_file)
    spec = load_spec(config.resolve(config.data.spec))
    encoders = os.path.join(run_dir, ENCODERS)
    if not os.path.isdir(encoders):
        raise RecsysError(f"{encoders}: no fitted encoders (train this run first)")
    path = RunFolder(run_dir).resolve(checkpoint)
    schema = run_schema(config, spec, encoders)
    model = build_model(config.model, schema, source=config_file)
    materialize(model, torch.device("cpu"))
    load_state(model, path)
    model.eval()
    return InferenceRun(config=config, spec=spec, schema=schema, model=model, checkpoint=path, encoders=encoders)


def load_for_inference(run_dir: str, checkpoint: str = "best") -> RankingModel:
    """The trained model of ``run_dir``, unsharded, on the CPU, in eval mode, its weights from ``checkpoint``
    (``best``, ``latest`` or a checkpoint folder; saved by any number of ranks).

    ``model(batch)`` returns ``{task: [B]}`` logits (binary) or raw predictions (regression), as in training;
    :class:`recsys.serving.ServingModule` wraps it for plain tensors and probabilities.

    Example::

        model = load_for_inference("runs/wide_deep_synthetic", checkpoint="latest")
    """
    return open_run(run_dir, checkpoint).model
