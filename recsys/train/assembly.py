"""One training set-up and the loops over it, shared by the trainer, the SSIM workflow, planning and benchmarks.

A set-up is always assembled the same way::

    model -> TrainModule (task losses + the model's loss hooks)
          -> embedding optimizer fused into the FBGEMM backward
          -> DistributedModelParallel (the planner shards the tables)
          -> dense optimizers (one per group a model declares, plus the default one), gradient clipping

:class:`Stepper` steps a set-up over batches (a plain loop, or torchrec's ``TrainPipelineSparseDist`` which
overlaps the input distribution of the next batch), and :func:`eval_batches` runs it forward without gradients.

Example::

    setup = assemble(model, schema, cfg.train, cfg.sharding, device, batch_size=4096, seed=0)
    stepper = Stepper(setup, device, pipeline=False)
    for out in stepper.steps(loader):      # StepOutput per optimizer step
        ...
    for batch, out in eval_batches(setup.dmp, eval_loader, device):
        collector.add(out.outputs, batch)
"""

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Tuple

import torch
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer

from recsys.config import EmbeddingOptimizerConfig, ShardingConfig, TrainConfig
from recsys.models.base import RankingModel
from recsys.schema import Schema
from recsys.train.losses import MultiTaskLoss, StepOutput, TrainModule
from recsys.train.optim import build_optimizer, fuse_embedding_optimizer
from recsys.train.sharding import shard


def train_module(
    model: RankingModel,
    schema: Schema,
    task_weights: Optional[dict],
    embedding_optimizer: EmbeddingOptimizerConfig,
    device_type: str,
) -> TrainModule:
    """The model with its losses, the embedding optimizer fused into its tables (not sharded yet: planning
    stops here)."""
    module = TrainModule(model, MultiTaskLoss(schema, task_weights, model.dependent_loss))
    fuse_embedding_optimizer(module, embedding_optimizer, device_type)
    return module


@dataclass
class Setup:
    """What a training loop steps: the model, its loss, the sharded module and the optimizer over it."""

    model: RankingModel
    loss: MultiTaskLoss
    dmp: DistributedModelParallel
    optimizer: CombinedOptimizer


def assemble(
    model: RankingModel,
    schema: Schema,
    train: TrainConfig,
    sharding: ShardingConfig,
    device: torch.device,
    batch_size: int,
    seed: Optional[int] = None,
) -> Setup:
    """Assemble ``model`` for training (see the module docstring).

    Args:
        model: a registry model (its tables on the meta device).
        schema: the data's schema.
        train: task weights, embedding and dense optimizers, gradient clipping.
        sharding: planner constraints and capacities.
        device: this rank's device.
        batch_size: per-rank batch size (the planner's cost model).
        seed: seeds the tables' initial values independently of the plan.
    """
    module = train_module(model, schema, train.task_weights, train.embedding_optimizer, device.type)
    dmp = shard(module, sharding, device, batch_size, seed=seed)
    groups = {name: (g.params, g.optimizer) for name, g in model.optimizer_groups().items()}
    optimizer = build_optimizer(
        dmp, train.dense_optimizer, train.grad_clip_norm, groups, embedding=train.embedding_optimizer
    )
    return Setup(model=model, loss=module.loss, dmp=dmp, optimizer=optimizer)


class Stepper:
    """Runs optimizer steps of a :class:`Setup` over batches.

    Args:
        setup: the assembled set-up.
        device: where batches go.
        pipeline: use ``TrainPipelineSparseDist`` (input distribution overlapped with compute) instead of a plain
            loop; it must be :meth:`detach`-ed before the module is used otherwise (evaluation, checkpoints).
    """

    def __init__(self, setup: Setup, device: torch.device, pipeline: bool) -> None:
        self.setup = setup
        self.device = device
        self.pipeline = pipeline
        self._pipeline: Any = None

    def steps(self, batches: Iterable[Any]) -> Iterator[StepOutput]:
        """One optimizer step per batch; yields each step's :class:`StepOutput`."""
        if self.pipeline:
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            if self._pipeline is None:
                self._pipeline = TrainPipelineSparseDist(self.setup.dmp, self.setup.optimizer, self.device)
            else:
                self._pipeline.attach(self.setup.dmp)
            it = iter(batches)
            while True:
                try:
                    yield self._pipeline.progress(it)
                except StopIteration:
                    return
        else:
            dmp, optimizer = self.setup.dmp, self.setup.optimizer
            for batch in batches:
                batch = batch.to(self.device, non_blocking=True)
                optimizer.zero_grad()
                loss, out = dmp(batch)
                loss.backward()
                optimizer.step()
                yield out

    @property
    def pipeline_started(self) -> bool:
        return self._pipeline is not None

    def detach(self) -> None:
        """Hand the module back from the pipeline (before evaluating or checkpointing it)."""
        if self._pipeline is not None:
            self._pipeline.detach()


def eval_batches(module: nn.Module, batches: Iterable[Any], device: torch.device) -> Iterator[Tuple[Any, StepOutput]]:
    """``(batch on device, StepOutput)`` of every batch, in eval mode and without gradients (train mode is
    restored afterwards, also when the caller stops early)."""
    module.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(device, non_blocking=True)
                _, out = module(batch)
                yield batch, out
    finally:
        module.train()
