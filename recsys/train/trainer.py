"""The trainer: data, model, DistributedModelParallel, fused optimizer, loop, evaluation, checkpoints, TensorBoard.

It never looks inside a model: model-specific loss terms and per-sample weights come through the model's
hooks (:class:`~recsys.models.base.RankingModel`), and anything a module wants plotted comes through its
optional ``tensorboard_stats()`` method (scalars and histograms, every ``log_every_steps``) and
``tensorboard_embeddings()`` method (``{tag: (rows [N, D], one metadata label per row)}`` for the embedding
projector, after every validation). What TensorBoard shows: :mod:`recsys.train.board`.

On the console (rank 0): a progress bar per epoch on a terminal (loss and samples/s beside it), plain lines
with the same every 30 s otherwise (:class:`recsys.console.Progress`), one line per epoch (mean loss,
samples/s, time) and one per validation.

Run folder::

    run_dir/
        config.yaml        the resolved config
        encoders/          fitted vocabularies and dense statistics
        plan.txt           the sharding plan
        tb/<run name>/     TensorBoard events (see recsys.train.board)
        checkpoints/       step-XXXXXXXX/ (DCP, see recsys.train.checkpoint)
        metrics.json       final validation and test reports
        metrics.md         the same as markdown tables
        cache/             valid/test rows encoded once by a streamed run (data.in_memory: false), keyed by the
                           data's fingerprint and the encoders (see recsys.data.split_cache)
"""

import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, Union

import numpy as np
import pyarrow as pa
import torch
import yaml
from torch.distributed._shard.sharded_tensor import ShardedTensor

from recsys.config import Config, check_config, check_device_support, to_dict
from recsys.console import Progress, bar_safe_logging, quiet_library
from recsys.data.batch import Batch
from recsys.data.columns import Columns
from recsys.data.dataset import SPLITS, Dataset
from recsys.data.loader import BatchLoader, ColumnSource
from recsys.errors import ConfigError, RecsysError
from recsys.io import write_json_atomic, write_parquet_atomic, write_text_atomic
from recsys.models.base import RankingModel, build_model, check_requirements, model_class
from recsys.train import checkpoint as ckpt
from recsys.train.assembly import Stepper, assemble, eval_batches
from recsys.train.board import (
    TEST,
    TRAIN,
    VALID,
    RunBoard,
    gather_rows,
    hparam_metrics,
    hparam_values,
    projector_rows,
    projector_tables,
    run_name,
)
from recsys.train.dist import (
    all_reduce_int,
    barrier,
    broadcast_object,
    elastic_restart_count,
    init_distributed,
    on_main,
)
from recsys.train.losses import StepOutput
from recsys.train.metrics import (
    PredictionCollector,
    Predictions,
    default_metric,
    evaluate,
    format_table,
    metric_mode,
    undefined_metric,
    untrained_tasks,
    without_tasks,
)
from recsys.train.run_folder import RunFolder, check_free_space, check_resume_identity, flatten, run_identity

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("recsys.train")

RUN_CONFIG = "config.yaml"
RUN_SPEC = "spec.yaml"
EVAL_CACHE = "cache"  # encoded evaluation splits of streamed runs (recsys/data/split_cache.py)


@dataclass
class TrainState:
    """Loop state saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_checkpoint: Optional[str] = None  # a name inside run_dir/checkpoints (the folder may move)
    bad_evals: int = 0
    stopped_early: bool = False
    samples: int = 0
    train_seconds: float = 0.0
    history: List[Dict[str, float]] = field(default_factory=list)


class _EpochTally:
    """What the epoch's console line needs: steps, the summed loss (kept on the device: no sync per step),
    this rank's samples, and the time without evaluations."""

    def __init__(self, name: str, eval_seconds: float) -> None:
        self.name = name
        self.steps = 0
        self.samples = 0
        self.loss: Optional[torch.Tensor] = None
        self.logged = False
        self._start = time.perf_counter()
        self._eval_seconds = eval_seconds

    def add(self, loss: torch.Tensor, samples: int) -> None:
        loss = loss.detach().float()
        self.loss = loss if self.loss is None else self.loss + loss
        self.steps += 1
        self.samples += samples

    def seconds(self, eval_seconds: float) -> float:
        """Wall time since the epoch started, without the evaluations that ran meanwhile."""
        return time.perf_counter() - self._start - (eval_seconds - self._eval_seconds)


def _module_tag(name: str) -> str:
    """A module's name inside DMP without the wrappers' prefixes (``_dmp_wrapped_module.module.model.``)."""
    return re.sub(r"^(_dmp_wrapped_module\.)?(module\.)?(model\.)?", "", name)


class NonFiniteLoss(RecsysError):
    """Training produced a NaN or infinite loss."""


class Trainer:
    """Trains and evaluates one config.

    Args:
        config: the run config.
        dataset: a prepared :class:`Dataset` (default: built from ``config.data``).
        model: a model built for this dataset's schema (default: ``config.model`` from the registry).
        resume: ``True``: continue from the newest checkpoint in ``run_dir/checkpoints`` (an error when there
            is none); ``"auto"``: continue from it when there is one, else start afresh; ``False``: start
            afresh, except after a torchelastic restart (``TORCHELASTIC_RESTART_COUNT > 0``: a worker died
            and every worker was restarted), which resumes from the newest checkpoint when there is one.
        fit_data: fit encoders when ``run_dir/encoders`` does not exist (False: they must exist, as for eval).

    Example::

        cfg = load_config("configs/wide_deep_movielens.yaml", ["train.epochs=3"])
        trainer = Trainer(cfg)
        result = trainer.fit()          # trains with early stopping, restores the best, evaluates
        print(result["test"]["like/auc"])
    """

    def __init__(
        self,
        config: Config,
        dataset: Optional[Dataset] = None,
        model: Optional[RankingModel] = None,
        resume: Union[bool, str] = False,
        fit_data: bool = True,
        overwrite: bool = False,
    ) -> None:
        if resume not in (True, False, "auto"):
            raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
        check_config(config)  # a config built in code gets the checks a loaded one had
        self.cfg = config
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        check_device_support(config.sharding, self.device.type)
        self.is_main = self.dist.is_main
        self.run_dir = config.resolve(config.run_dir)
        self.folder = RunFolder(self.run_dir)
        self.ckpt_dir = self.folder.checkpoints
        self.training = fit_data
        self.writer: Optional["SummaryWriter"] = None  # the TensorBoard writer (rank 0, training), board.writer
        self._warned_state: Set[str] = set()  # model state that differed across ranks, warned about once
        self.board: Optional[RunBoard] = None
        self._tensorboard = bool(config.tensorboard and fit_data)  # the same on every rank
        self._projector: Optional[List[Tuple[str, str]]] = None
        try:
            with bar_safe_logging(config.train.progress and self.is_main):
                self._start(dataset, model, resume, overwrite)
        except BaseException:
            if self.is_main:
                self.folder.discard_if_unused()  # a refused or interrupted start leaves no trace
            raise

    def _start(
        self, dataset: Optional[Dataset], model: Optional[RankingModel], resume: Union[bool, str], overwrite: bool
    ) -> None:
        config = self.cfg
        show = config.train.progress and self.is_main
        self.dataset = dataset or Dataset.from_config(config, progress=show)
        # the label history (a pass over the files and per-row state) only for a model that reads it
        reader = type(model) if model is not None else model_class(config.model.name)
        self.dataset.use_history(reader.requirements.history)
        if model is None:
            check_requirements(config.model.name, self.dataset.outline())  # before any data is read
        self.metric, self.metric_mode = self._early_stopping_metric()  # a bad metric name fails before any read
        restarts = elastic_restart_count()
        latest, fresh = None, self.training
        if self.training:
            # rank 0 claims the folder and decides, so every rank loads the same checkpoint (or none)
            latest, fresh = on_main(lambda: self._claim(resume, overwrite, restarts))
        self._prepare_encoders(fit=fresh)
        self.schema = self.dataset.schema(config.model.embedding_dim)
        self._parts: Optional[Dict[str, Optional[Columns]]] = None  # in memory: every split's rows
        if config.data.in_memory:
            self._data()  # every row is read and checked before anything is written to the run folder
            self._check_metric_defined()

        torch.manual_seed(config.train.seed)
        model = model if model is not None else build_model(config.model, self.schema, source="config")
        self.setup = assemble(
            model,
            self.schema,
            config.train,
            config.sharding,
            self.device,
            config.data.batch_size,
            seed=config.train.seed,
        )
        self.model, self.loss = self.setup.model, self.setup.loss
        self.dmp, self.optimizer = self.setup.dmp, self.setup.optimizer
        self.stepper = Stepper(self.setup, self.device, pipeline=self._use_pipeline())
        self.state = TrainState()
        self._eval_seconds = 0.0
        self._warned_undefined = False
        # (step, report) of the newest validation in this process: the final report reuses it when the model
        # in memory is that step's, the best (no second pass over the same rows with the same weights)
        self._last_valid: Optional[Tuple[int, Dict[str, float]]] = None
        self._identity: Optional[Dict[str, Any]] = None
        if self.training:
            on_main(lambda: self._write_run_files(fresh))
        if latest is not None:
            self.load(latest)
            why = f"torchelastic restart {restarts}: " if restarts and resume is not True else ""
            log.info("%sresumed from %s at step %d", why, latest, self.state.step)
        elif restarts:
            log.info("torchelastic restart %d: no completed checkpoint yet, starting afresh", restarts)
        if self.is_main and self._tensorboard:
            self._open_board(resumed=latest is not None)

    def _open_board(self, resumed: bool) -> None:
        """Rank 0: the run's TensorBoard writer (after a resume, events a previous attempt wrote beyond the
        checkpoint are dropped), with the run's hyper-parameters and the metrics the HParams tab shows."""
        untrained = [t for t, w in self.loss.weights.items() if w == 0]
        self.board = RunBoard(self.run_dir, self.schema, untrained, purge_step=self.state.step + 1 if resumed else None)
        self.writer = self.board.writer
        hparams = hparam_values(to_dict(self.cfg), self.loss.weights, self.dataset.spec.name, self.dist.world_size)
        self.board.start(
            hparams,
            hparam_metrics(self.schema, self.metric, untrained, self.dataset.spec.oracle),
            run_name(self.run_dir),
        )

    # --- the run folder ----------------------------------------------------------------------------------
    def identity(self) -> Dict[str, Any]:
        """What this run's checkpoints depend on (see :func:`recsys.train.run_folder.run_identity`)."""
        return run_identity(self.cfg, self.dataset.spec, self.dataset.files(), self.dataset.root, self.dist.world_size)

    def _claim(self, resume: Union[bool, str], overwrite: bool, restarts: int) -> Tuple[Optional[str], bool]:
        """Rank 0: lock the run folder and decide whether this run resumes (returns (checkpoint or None, fresh)).
        Nothing is removed or written yet."""
        self.folder.claim()
        wants_checkpoint = bool(resume) or restarts > 0
        latest = ckpt.latest_checkpoint(self.ckpt_dir) if wants_checkpoint else None
        if resume is True and latest is None:
            raise RecsysError(f"{self.ckpt_dir}: nothing to resume from (no completed checkpoint)")
        if not wants_checkpoint:
            self.folder.refuse_reuse(resume=False, overwrite=overwrite)
        if latest is not None:
            check_resume_identity(latest, ckpt.read_trainer_state(latest).get("depends_on"), self.identity())
            if not os.path.isdir(os.path.join(self.run_dir, "encoders")):
                raise RecsysError(
                    f"{self.run_dir}: the run has checkpoints but no fitted encoders (encoders/ "
                    "was deleted?); it cannot be resumed"
                )
        return latest, latest is None

    def _write_run_files(self, fresh: bool) -> None:
        """Rank 0, once data and model have been checked: replace an earlier run's files (``--overwrite``, or a
        restart that found no checkpoint), then write encoders, plan, the resolved config and spec."""
        if fresh:
            self.folder.clear()
            check_free_space(
                self.run_dir,
                self._checkpoint_bytes() * (self.cfg.train.keep_checkpoints + 1),
                f"{self.cfg.train.keep_checkpoints + 1} checkpoints",
            )
        if self._fitted_now:
            self.dataset.save(os.path.join(self.run_dir, "encoders"))
        write_text_atomic(
            os.path.join(self.run_dir, "plan.txt"), self.dmp.plan_report.format() + "\n\n" + str(self.dmp.plan) + "\n"
        )
        spec = to_dict(self.dataset.spec)
        spec["root"] = self.dataset.root
        write_text_atomic(os.path.join(self.run_dir, RUN_SPEC), yaml.safe_dump(spec, sort_keys=False))
        saved = to_dict(self.cfg)
        saved["run_dir"] = "."  # paths in a config file are relative to it: the run folder can move
        saved["data"]["spec"] = RUN_SPEC
        saved["data"]["spec_overrides"] = {}  # spec.yaml holds the spec with them applied
        saved["data"]["path"] = self.dataset.root
        write_text_atomic(os.path.join(self.run_dir, RUN_CONFIG), yaml.safe_dump(saved, sort_keys=False))

    def _checkpoint_bytes(self) -> int:
        """Roughly what one checkpoint takes on disk: the model's and the optimizer's tensors."""
        total = 0
        for tree in (self.dmp.state_dict(), self.optimizer.state_dict().get("state", {})):
            for value in flatten(tree).values():
                if isinstance(value, ShardedTensor):  # every rank's shards: the checkpoint holds them all
                    md = value.metadata()
                    total += math.prod(md.size) * torch.empty(0, dtype=md.tensor_properties.dtype).element_size()
                elif isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total

    def close(self) -> None:
        """Release the run folder (training ends; the trainer may still evaluate)."""
        if self.is_main:
            self.folder.release()
        if self.writer is not None:
            self.writer.flush()

    # --- data --------------------------------------------------------------------------------------------
    def _prepare_encoders(self, fit: bool) -> None:
        """Rank 0 fits (a fresh training) or loads (resume, evaluation) the encoders and broadcasts them, so no
        shared file system is needed. Freshly fitted encoders are saved later, once all data has been read
        without error."""
        path = os.path.join(self.run_dir, "encoders")
        state = None
        self._fitted_now = False
        if self.is_main:
            if fit:
                self.dataset.fit()
                self._fitted_now = True
            elif os.path.isdir(path):
                self.dataset.load(path)
            else:
                raise RecsysError(f"{path}: no fitted encoders (train this run first)")
            state = self.dataset.state_dict()
        state = broadcast_object(state)
        if not self.is_main:
            self.dataset.load_state_dict(state)

    def _data(self) -> Dict[str, Optional[Columns]]:
        if self._parts is None:
            if self.cfg.data.in_memory:
                self._parts = dict(self.dataset.read(self.dist.rank, self.dist.world_size))
            else:
                self._parts = {s: None for s in SPLITS}
        return self._parts

    def _rows(self, split: str) -> int:
        if split == "all":
            return sum(self._rows(s) for s in SPLITS)
        part = self._data()[split]
        if part is not None:
            return len(part)
        return self.dataset.split_counts.get(split, 0) // self.dist.world_size

    def _split_rows(self, split: str) -> int:
        """Rows of ``split`` over all ranks."""
        return all_reduce_int(self._rows(split), "sum")

    def _source(self, split: str) -> ColumnSource:
        if split == "all":  # every row, e.g. scoring new files with a trained model
            if self.cfg.data.in_memory:
                return Columns.concat([c for c in (self._data()[s] for s in SPLITS) if c is not None])
            return lambda: (c for s in SPLITS for c in self.dataset.stream(s, self.dist.rank, self.dist.world_size))
        part = self._data()[split]
        if part is not None:
            return part
        rank, world = self.dist.rank, self.dist.world_size
        if split == "train":
            return lambda: self.dataset.stream(split, rank, world)
        # evaluation splits are read again every evaluation: encoded once, then read back from the run folder
        folder = os.path.join(self.run_dir, EVAL_CACHE, f"{split}.rank{rank}of{world}")
        return lambda: self.dataset.cached_stream(split, folder, rank, world)

    def train_loader(self) -> BatchLoader:
        """Shuffled training batches; every rank runs the same number of steps."""
        b = self.cfg.data.batch_size
        n = self._rows("train")
        drop_last = n >= b
        steps = all_reduce_int(n // b if drop_last else (1 if n else 0), "min")
        return BatchLoader(
            self._source("train"),
            self.schema.feature_names,
            b,
            shuffle=True,
            seed=self.cfg.train.seed,
            drop_last=drop_last,
            num_batches=steps,
            shuffle_buffer_chunks=self.cfg.data.shuffle_buffer_chunks,
            length=n,
            padding_like=self.dataset.empty(),
        )

    def eval_loader(self, split: str) -> BatchLoader:
        """All rows of ``split`` in order; ranks with fewer rows pad so forward passes stay collective."""
        b = self.cfg.data.eval_batch_size or self.cfg.data.batch_size
        n = self._rows(split)
        steps = all_reduce_int(math.ceil(n / b), "max")
        return BatchLoader(
            self._source(split),
            self.schema.feature_names,
            b,
            shuffle=False,
            num_batches=steps,
            length=n,
            padding_like=self.dataset.empty(),
        )

    # --- training ----------------------------------------------------------------------------------------
    def _use_pipeline(self) -> bool:
        choice = self.cfg.train.pipeline
        return choice == "sparse_dist" or (choice == "auto" and self.device.type == "cuda")

    def _detach_pipeline(self) -> None:
        self.stepper.detach()

    def fit(self) -> Dict[str, Any]:
        """Train with periodic validation and early stopping, restore the best checkpoint, evaluate valid and
        test, and write ``metrics.json``. Returns ``{"valid": report, "test": report, ...}``. The run folder
        is released when it returns (or fails)."""
        if not self.training:
            raise RecsysError("this trainer was built for evaluation (fit_data=False); it cannot train")
        try:
            with bar_safe_logging(self.cfg.train.progress and self.is_main), quiet_library():  # backward's warnings
                return self._fit()
        finally:
            self.close()

    def _fit(self) -> Dict[str, Any]:
        cfg = self.cfg.train
        metric, mode = self.metric, self.metric_mode
        loader = self.train_loader()
        if len(loader) == 0 and self.state.epoch < cfg.epochs:
            raise RecsysError("the training split has no rows on this rank")
        eval_every = cfg.eval_every_steps or len(loader)
        start = time.perf_counter()
        self._eval_seconds = 0.0
        window_start, window_samples = time.perf_counter(), 0
        stop = False
        show = cfg.progress and self.is_main
        while self.state.epoch < cfg.epochs and not stop:
            loader.set_epoch(self.state.epoch, self.state.batch_in_epoch)
            epoch = _EpochTally(f"epoch {self.state.epoch + 1}/{cfg.epochs}", self._eval_seconds)
            with Progress(
                epoch.name, loader.num_batches, unit="step", enabled=show, initial=self.state.batch_in_epoch, leave=True
            ) as bar:
                for out in self.stepper.steps(loader):
                    self.state.step += 1
                    self.state.batch_in_epoch += 1
                    n = int((out.batch.row_id >= 0).sum())
                    self.state.samples += n
                    window_samples += n
                    epoch.add(self._check_finite(out), n)
                    epoch_end = loader.num_batches is not None and self.state.batch_in_epoch >= loader.num_batches
                    last = epoch_end or (cfg.max_steps is not None and self.state.step >= cfg.max_steps)
                    if self.state.step % cfg.log_every_steps == 0 or epoch_end:
                        now = time.perf_counter()
                        loss, rate = self._log_train(out, window_samples / max(now - window_start, 1e-9))
                        bar.note(f"loss {loss:.4f}, {rate:,.0f} samples/s")
                        window_start, window_samples = now, 0
                    bar.update()
                    if last:  # the epoch's line comes before its validation's
                        bar.close()
                        self._log_epoch(epoch)
                    validated = self.state.step % eval_every == 0 or epoch_end
                    if validated:
                        if epoch_end:
                            self.state.epoch += 1
                            self.state.batch_in_epoch = 0
                        self._detach_pipeline()
                        stop = self._validate(metric, mode)
                        window_start, window_samples = time.perf_counter(), 0  # samples/s without evaluations
                        if stop:
                            break
                    elif cfg.checkpoint_every_steps and self.state.step % cfg.checkpoint_every_steps == 0:
                        self._detach_pipeline()
                        self.save()
                    if cfg.max_steps is not None and self.state.step >= cfg.max_steps:
                        if not validated:  # the last step is validated once
                            self._detach_pipeline()
                            stop = self._validate(metric, mode)
                        stop = True
                        break
            if not epoch.logged:  # early stopping in the middle of an epoch
                self._log_epoch(epoch)
        self.state.train_seconds += time.perf_counter() - start - self._eval_seconds
        return self._finish()

    def _early_stopping_metric(self) -> Tuple[str, str]:
        """The validation metric and its direction; refused before any data is read when no evaluation could
        ever define it (a misspelt metric, GAUC without a user, an oracle AUC without oracle columns, ...)."""
        es = self.cfg.train.early_stopping
        outline = self.dataset.outline()
        if es.metric == "auto":
            return default_metric(outline)
        why = undefined_metric(
            es.metric, outline.tasks, has_user=outline.user_feature is not None, oracle=set(self.dataset.spec.oracle)
        )
        if why:
            raise ConfigError(f"train.early_stopping.metric: '{es.metric}' {why}")
        return es.metric, (metric_mode(es.metric) if es.mode == "auto" else es.mode)

    def _check_metric_defined(self) -> None:
        """Refuse to train when the validation rows make the early-stopping metric undefined at every
        evaluation (e.g. no positive label in the validation split)."""
        part = self._data().get("valid")
        if part is None or not len(part):
            return
        task_name = self.metric.split("/")[0]
        task = self.schema.task(task_name)
        name = self.metric.split("/")[1]
        if name in ("logloss", "rmse", "mae", "pos_rate", "calibration", "count"):
            return
        labels = part.labels[task_name]
        if task.depends_on and name != "ctcvr_auc":
            labels = labels[part.labels[task.depends_on] > 0.5]
        threshold = 0.5 if task.kind == "binary" else task.eval_threshold
        if threshold is None or not len(labels):
            return
        positive = labels > threshold
        if positive.all() or not positive.any():
            kind = "positive" if positive.all() else "negative"
            raise ConfigError(
                f"train.early_stopping.metric: '{self.metric}' is undefined on every validation: the "
                f"{len(labels)} validation rows it is computed on are all {kind} for task '{task_name}'; choose "
                "another metric, or a larger data.split.valid"
            )

    def _check_finite(self, out: StepOutput) -> torch.Tensor:
        """The step's total loss; raises when it is NaN or infinite."""
        total = torch.stack([v.float() for v in out.losses.values()]).sum()
        if not bool(torch.isfinite(total)):
            last = ckpt.latest_checkpoint(self.ckpt_dir)
            raise NonFiniteLoss(
                f"loss became {float(total)} at step {self.state.step} (epoch {self.state.epoch + 1}); "
                f"last good checkpoint: {last or 'none'}; lower the learning rates or set train.grad_clip_norm"
            )
        return total

    def _validate(self, metric: str, mode: str) -> bool:
        """Evaluate on the validation split, checkpoint, update early stopping; True when training should stop.

        An undefined value (NaN: e.g. no positive among the validation rows) counts as no improvement and is
        warned about once; it never becomes the best."""
        t0 = time.perf_counter()
        name = f"step-{self.state.step:08d}"
        if not self._split_rows("valid"):
            # no validation rows: no early stopping, the newest checkpoint counts as the best
            self.state.best_checkpoint, self.state.best_step = name, self.state.step
            self.save(self.folder.checkpoint(name))
            self._eval_seconds += time.perf_counter() - t0
            return False
        report = self.evaluate("valid")
        self._last_valid = (self.state.step, dict(report))
        value = report.get(metric)
        if value is None:
            raise ConfigError(
                f"train.early_stopping.metric: '{metric}' is not in the validation report "
                f"(e.g. {', '.join(k for k in report if k.count('/') == 1)[:200]})"
            )
        defined = math.isfinite(value)
        if not defined and not self._warned_undefined:
            self._warned_undefined = True
            if self.is_main:
                log.warning(
                    "validation %s is undefined (%s) at step %d: counted as no improvement",
                    metric,
                    value,
                    self.state.step,
                )
        record = {"step": self.state.step, "epoch": self.state.epoch, metric: value}
        self.state.history.append(record)
        improved = defined and (
            self.state.best_metric is None
            or (value > self.state.best_metric if mode == "max" else value < self.state.best_metric)
        )
        if improved:
            self.state.best_metric, self.state.best_step = float(value), self.state.step
            self.state.best_checkpoint = name
            self.state.bad_evals = 0
        else:
            self.state.bad_evals += 1
        stop = self.state.bad_evals >= self.cfg.train.early_stopping.patience
        self.state.stopped_early = stop
        self.save(self.folder.checkpoint(name))
        self._eval_seconds += time.perf_counter() - t0
        if self.board is not None:
            self.board.report(report, VALID, self.state.step)
            if self.state.best_metric is not None:
                self.board.scalars({f"{VALID}/best/{metric}": self.state.best_metric}, self.state.step)
        self._log_embeddings()
        if self.is_main:
            best = "none yet" if self.state.best_metric is None else f"{self.state.best_metric:.5f}"
            log.info(
                "step %d: valid %s = %.5f%s",
                self.state.step,
                metric,
                value,
                " (best)" if improved else f" (best {best})",
            )
        return stop

    def _log_train(self, out: StepOutput, samples_per_sec: float) -> Tuple[float, float]:
        """One step's numbers for the console and TensorBoard; returns (loss, samples/s) of the global batch.
        Collective: losses are averaged over ranks (each rank's loss is its share of the global batch's loss, so
        the mean is the global batch's loss), samples/s and embedding rows updated summed. Rank 0 writes the
        losses (tasks with weight 0 left out), learning rates, gradient norms, rows updated and the modules'
        ``tensorboard_stats()``."""
        names = list(out.losses)
        device = out.losses[names[0]].device
        parts = [out.losses[n].detach().float() for n in names] + [torch.tensor(float(samples_per_sec), device=device)]
        tables = self._update_tables() if self._tensorboard else {}
        rows = self._rows_updated(out.batch, tables.values(), device) if tables else torch.zeros(0, device=device)
        values = torch.cat([torch.stack(parts), rows])
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(values)
            values[: len(names)] /= self.dist.world_size
        numbers: List[float] = values.cpu().tolist()
        losses, rate = dict(zip(names, numbers)), numbers[len(names)]
        loss = float(sum(losses.values()))
        if self.board is None:
            return loss, rate
        step = self.state.step
        scalars: Dict[str, float] = {f"{TRAIN}/loss": loss, f"{TRAIN}/samples_per_sec": rate}
        scalars.update({f"{TRAIN}/loss/{n}": v for n, v in losses.items() if self.loss.weights.get(n) != 0})
        scalars.update({f"{TRAIN}/rows_updated/{t}": v for t, v in zip(tables, numbers[len(names) + 1 :])})
        scalars.update(self._optimizer_scalars())
        self.board.scalars(scalars, step)
        for name, module in self.dmp.named_modules():
            stats = getattr(module, "tensorboard_stats", None)
            if callable(stats):
                for key, value in stats().items():
                    self.board.module_stats(f"{_module_tag(name)}/{key}", value, step)
        return loss, rate

    def _update_tables(self) -> Dict[str, List[str]]:
        """Table -> the features it looks up, one table per set of features (a wide table looking up the same
        ids as a deep one updates the same rows)."""
        out: Dict[str, List[str]] = {}
        for name, (_, cfg) in self.dmp.embedding_tables.items():
            if list(cfg.feature_names) not in out.values():
                out[name] = list(cfg.feature_names)
        return out

    def _rows_updated(self, batch: Batch, tables: Iterable[Sequence[str]], device: torch.device) -> torch.Tensor:
        """Distinct rows each table (given by its features) this rank's batch looked up: the rows the fused
        optimizer updates this step. [tables] float32."""
        features = batch.sparse.to_dict()
        counts = []
        for names in tables:
            ids = [features[f].values() for f in names if f in features]
            counts.append(int(torch.unique(torch.cat(ids)).numel()) if ids else 0)
        return torch.tensor(counts, dtype=torch.float32, device=device)

    def _optimizer_scalars(self) -> Dict[str, float]:
        """Learning rate and L2 norm of the dense gradients per optimizer group (after clipping, plus the norm
        before it when train.grad_clip_norm is set). Rank 0: DDP has made the gradients equal on every rank."""
        out: Dict[str, float] = {}
        for name, opt in self.optimizer.optimizers:
            lrs = [float(g["lr"]) for g in opt.param_groups if "lr" in g]
            if len(set(lrs)) == 1:
                out[f"{TRAIN}/lr/{name}"] = lrs[0]
            else:
                out.update({f"{TRAIN}/lr/{name}/{i}": lr for i, lr in enumerate(lrs)})
            if opt is self.dmp.fused_optimizer:  # updated inside backward: no gradient materialises
                continue
            grads = [
                p.grad
                for g in opt.param_groups
                for p in g["params"]
                if not isinstance(p, ShardedTensor) and p.grad is not None
            ]
            if grads:
                norms = [torch.linalg.vector_norm((g.coalesce().values() if g.is_sparse else g).float()) for g in grads]
                out[f"{TRAIN}/grad_norm/{name}"] = float(torch.linalg.vector_norm(torch.stack(norms)))
        before = getattr(self.optimizer, "norm_before_clip", None)
        if before is not None:
            out[f"{TRAIN}/grad_norm/before_clip"] = float(before)
        return out

    def _log_epoch(self, epoch: _EpochTally) -> None:
        """The epoch's console line: steps, time, mean loss and samples/s of the global batch. Collective."""
        epoch.logged = True
        if not epoch.steps or epoch.loss is None:
            return
        sums = torch.stack([epoch.loss, torch.tensor(float(epoch.samples), device=epoch.loss.device)])
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        loss_sum, samples = sums.cpu().tolist()
        seconds = max(epoch.seconds(self._eval_seconds), 1e-9)
        if self.is_main:
            log.info(
                "%s: %d steps in %.1f s, mean loss %.4f, %s samples/s",
                epoch.name,
                epoch.steps,
                seconds,
                loss_sum / self.dist.world_size / epoch.steps,
                f"{samples / seconds:,.0f}",
            )

    def _log_embeddings(self) -> None:
        """Embeddings modules collected during the last evaluation, and a sample of the user, item and host
        tables (see :mod:`recsys.train.board`), to TensorBoard's projector. Every rank asks (modules may reset;
        the tables' rows are gathered from the shards), rank 0 writes."""
        step = self.state.step
        for module in self.dmp.modules():
            hook = getattr(module, "tensorboard_embeddings", None)
            if not callable(hook):
                continue
            for tag, (rows, metadata) in hook().items():
                if self.board is not None:
                    self.board.embedding(tag, rows, metadata, step)
        if not self._tensorboard:
            return
        tables = self.dmp.embedding_tables
        if self._projector is None:
            encodings = {e.name: e.spec.encoding for e in self.dataset.sparse}
            self._projector = projector_tables(self.schema, encodings, tables)
        state = self.dmp.state_dict()
        for feature, table in self._projector:
            rows, labels = projector_rows(next(e for e in self.dataset.sparse if e.name == feature))
            fqn, table_cfg = tables[table]
            values = gather_rows(state, fqn, table_cfg, rows, self.dist.world_size, self.dist.rank)
            if self.board is not None and values is not None:
                self.board.embedding(f"embeddings/{table}", values, labels, step)

    def _finish(self) -> Dict[str, Any]:
        last_valid = self._last_valid
        # the model in memory is the one reported (the best, or the last where no validation was ever defined)
        in_memory_is_best = (
            last_valid is not None
            and last_valid[0] == self.state.step
            and (self.state.best_checkpoint is None or self.state.best_step == self.state.step)
        )
        if self.state.best_checkpoint is not None and not in_memory_is_best:
            best = self.folder.checkpoint(self.state.best_checkpoint)
            if not os.path.isdir(best):
                raise RecsysError(f"{best}: the best checkpoint of this run is missing (deleted during training?)")
            self.load(best, restore_loop=False)
        elif self.state.best_checkpoint is None and self.is_main:
            log.warning("the validation metric was never defined: the final model is the last one trained")
        result: Dict[str, Any] = {
            "model": self.cfg.model.name,
            "dataset": self.dataset.spec.name,
            "best_step": self.state.best_step,
            "steps": self.state.step,
            "stopped_early": self.state.stopped_early,
            "train_seconds": round(self.state.train_seconds, 2),
            "train_samples_per_sec": round(self.state.samples / max(self.state.train_seconds, 1e-9), 1),
            "valid": (
                (last_valid[1] if in_memory_is_best and last_valid else self.evaluate("valid"))
                if self._split_rows("valid")
                else {}
            ),
            "test": self.evaluate("test") if self._split_rows("test") else {},
            "untrained_tasks": untrained_tasks(self.loss.weights),
            "history": self.state.history,
        }
        untrained = result["untrained_tasks"]  # loss weight 0: their metrics are no results
        for split in ("valid", "test"):
            result[split] = without_tasks(result[split], untrained)
        if self.is_main:
            write_json_atomic(os.path.join(self.run_dir, "metrics.json"), result)
            write_text_atomic(
                os.path.join(self.run_dir, "metrics.md"),
                "\n\n".join(
                    format_table(
                        self.schema, result[split], title=f"{self.cfg.model.name}: {split}", untrained=untrained
                    )
                    for split in ("valid", "test")
                    if result[split]
                )
                + "\n",
            )
            if self.board is not None:
                self.board.report(result["test"], TEST, self.state.step)
                self.board.finish()
        barrier()
        return result

    # --- evaluation and prediction -----------------------------------------------------------------------
    def scan(self, split: str) -> Iterator[Tuple[Any, Any]]:
        """``(batch, StepOutput)`` of every batch of ``split`` (this rank's rows, padding included: its
        ``row_id`` is -1), the model in eval mode without gradients. For workflows that need more of the model
        than its scores (e.g. SSIM's selection scores); collective, so every rank must run it to the end."""
        self._detach_pipeline()
        loader = self.eval_loader(split)
        with Progress(
            f"eval {split}", len(loader), unit="batch", enabled=self.cfg.train.progress and self.is_main
        ) as bar:
            for batch, out in eval_batches(self.dmp, loader, self.device):
                yield batch, out
                bar.update()

    def _forward_all(self, split: str) -> PredictionCollector:
        collector = PredictionCollector(self.schema)
        for batch, out in self.scan(split):
            collector.add(out.outputs, batch)
        return collector

    def _check_split(self, split: str) -> None:
        if split not in SPLITS + ("all",):
            raise ConfigError(f"split must be one of {SPLITS + ('all',)}, got '{split}'")
        if not self._split_rows(split):
            sc = self.cfg.data.split
            raise RecsysError(
                f"the '{split}' split has no rows (data.split: {sc.kind}, valid {sc.valid}, test "
                f"{sc.test}; {self._split_rows('all')} rows in all)"
            )

    def predictions(self, split: str = "test") -> Predictions:
        """Every row of ``split`` scored by the current model (all ranks' rows, on every rank)."""
        self._check_split(split)
        return self._forward_all(split).gather()

    def evaluate(self, split: str = "test") -> Dict[str, float]:
        """The metric report of ``split`` (see :mod:`recsys.train.metrics`), identical on every rank."""
        return evaluate(self.schema, self.predictions(split))

    def predict(self, split: str, out_path: str) -> int:
        """Write per-row scores (probability or value per task) of ``split`` to Parquet; returns rows written.

        The file is written under a temporary name and renamed, so a failure leaves no partial output."""
        preds = self.predictions(split)
        if self.is_main:
            columns: Dict[str, Any] = {"row_id": preds.row_id, "scenario": preds.scenario}
            if self.schema.user_feature:
                columns["user"] = preds.user
            for t in self.schema.task_names:
                columns[f"score_{t}"] = preds.scores[t].astype(np.float32)
            write_parquet_atomic(out_path, pa.table(columns))
        barrier()
        return len(preds)

    # --- checkpoints -------------------------------------------------------------------------------------
    def _app_state(self) -> Dict[str, Any]:
        return {"model": self.dmp.state_dict(), "optimizer": self.optimizer.state_dict()}

    def save(self, path: Optional[str] = None) -> str:
        """Checkpoint model, optimizer and loop state (collective). Modules holding per-rank state (buffers
        such as a user tracker) first get their ``sync_state()`` called, so every rank holds the same copy:
        a checkpoint keeps one copy of every unsharded tensor."""
        path = path or os.path.join(self.ckpt_dir, f"step-{self.state.step:08d}")
        state = asdict(self.state)
        state["world_size"] = self.dist.world_size
        if self.is_main:
            if self._identity is None:
                self._identity = self.identity()
            state["depends_on"] = self._identity
        self._sync_module_state()
        ckpt.save_checkpoint(path, self._app_state(), state)
        best = self.folder.checkpoint(self.state.best_checkpoint) if self.state.best_checkpoint else None
        ckpt.prune_checkpoints(self.ckpt_dir, self.cfg.train.keep_checkpoints, best)
        return path

    def _sync_module_state(self) -> None:
        """Call every module's optional ``sync_state()`` (collective: it makes per-rank state agree), then
        warn once per tensor about unsharded model state that still differs across ranks (DDP keeps
        parameters in sync; torchrec's DDP does not broadcast buffers), since only one copy is saved."""
        for module in self.dmp.modules():
            sync = getattr(module, "sync_state", None)
            if callable(sync):
                sync()
        if self.dist.world_size == 1:
            return
        names, prints = [], []
        for name, value in self.dmp.state_dict().items():
            if type(value) is torch.Tensor and value.numel():  # sharded tables are ShardedTensor
                flat = value.detach().reshape(-1).to(self.device, torch.float64)
                ramp = torch.linspace(1.0, 2.0, flat.numel(), device=self.device, dtype=torch.float64)
                names.append(name)
                prints.append(torch.stack([flat.sum(), (flat * ramp).sum()]))
        if not prints:
            return
        high = torch.stack(prints)
        low = high.clone()
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        differ = [n for n, h, lo in zip(names, high, low) if not torch.equal(h, lo)]
        warned = self._warned_state
        new = [n for n in differ if n not in warned]
        if new and self.is_main:
            log.warning(
                "model state differs across ranks and a checkpoint keeps one rank's copy: %s; give the "
                "module a sync_state() that makes it agree (see docs/distributed.md)",
                ", ".join(new),
            )
        self._warned_state = warned | set(differ)

    def _init_optimizer_state(self) -> None:
        """Create the lazily-built optimizer state (Adam moments) so a checkpoint can be loaded into it:
        torchrec's KeyedOptimizer.load_state_dict skips parameters that have no state yet. The dummy step
        torchrec runs for this may move parameters (weight decay); the model is loaded after it."""
        for _, opt in self.optimizer.optimizers:
            if opt is not self.dmp.fused_optimizer and not opt.state:
                opt.init_state()

    def load(self, path: str, restore_loop: bool = True, model_only: bool = False) -> None:
        """Load a checkpoint (any world size); ``restore_loop`` also restores the loop state and RNG."""
        self._detach_pipeline()
        if not model_only:
            self._init_optimizer_state()
        live = {"model": self.dmp.state_dict()} if model_only else self._app_state()
        merged, trainer_state = ckpt.load_checkpoint(path, live, restore_rng=restore_loop)
        self.dmp.load_state_dict(merged["model"])
        if not model_only:
            self.optimizer.load_state_dict(merged["optimizer"])
        if restore_loop:
            known = {f.name for f in fields(TrainState)}
            try:
                self.state = TrainState(**{k: v for k, v in trainer_state.items() if k in known})
            except TypeError as e:
                raise RecsysError(f"{os.path.join(path, ckpt.TRAINER_STATE)}: corrupt loop state ({e})") from None
            if not isinstance(self.state.step, int) or not isinstance(self.state.epoch, int):
                raise RecsysError(f"{os.path.join(path, ckpt.TRAINER_STATE)}: corrupt loop state (step/epoch)")
