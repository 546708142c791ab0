"""The contract every model follows, and the model registry.

A model is an ``nn.Module`` built from a :class:`~recsys.schema.Schema` and its own config dataclass; its
``forward(batch)`` returns ``{task: [B]}``: a logit for binary tasks, a raw prediction for regression tasks.
Losses live in :mod:`recsys.train.losses`; a model influences them only through the hooks below, so the
trainer never needs to know which model it runs.

Models are resolved only through :func:`register_model` names: a config can never import arbitrary code.
"""

import dataclasses
import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, TypeVar

import torch
from torch import nn

from recsys.config import ModelConfig, OptimizerConfig, from_dict
from recsys.data.batch import Batch
from recsys.errors import ConfigError
from recsys.models.index import Requirements  # noqa: F401 - defined without torch for the index; models import it here
from recsys.modules.sparse import check_features
from recsys.schema import DataOutline, Schema


@dataclass
class NoOptions:
    """A model without options."""


def check_requirements(model_name: str, outline: DataOutline) -> None:
    """Refuse a model/dataset combination the model cannot work with, in one line."""
    need = model_class(model_name).requirements
    where = f"model '{model_name}' on dataset '{outline.name}'"
    if len(outline.tasks) < need.min_tasks:
        raise ConfigError(
            f"{where}: the model needs at least {need.min_tasks} tasks, the dataset has "
            f"{len(outline.tasks)} ({', '.join(t.name for t in outline.tasks)})"
        )
    if need.scenario and outline.num_scenarios < 2:
        raise ConfigError(
            f"{where}: the model is multi-scenario but the dataset declares no scenario column "
            "with two or more scenarios (spec key 'scenario')"
        )
    if need.funnel and not any(t.depends_on and t.kind == "binary" for t in outline.tasks):
        raise ConfigError(
            f"{where}: the model needs a funnel (a binary task with 'depends_on', e.g. CVR given "
            "click); the dataset has none"
        )
    if need.user and outline.user_feature is None:
        raise ConfigError(f"{where}: the model needs the user feature (spec key 'user')")
    if need.time and not outline.has_time:
        raise ConfigError(f"{where}: the model needs a timestamp column (spec key 'time')")


@dataclass
class OptimizerGroup:
    """Dense parameters a model wants trained by their own optimizer (e.g. SSIM's selection network).

    Args:
        params: the parameters (every one must be a trainable dense parameter of the model).
        optimizer: their optimizer and learning rate; the rest of the dense parameters use
            ``train.dense_optimizer``.
    """

    params: List[nn.Parameter]
    optimizer: OptimizerConfig


class RankingModel(nn.Module):
    """Base class of every ranking model.

    Subclasses set ``Config`` (the dataclass of their ``model.params``) and implement ``forward``.

    Attributes:
        requirements: what the model needs from the data (:class:`Requirements`), checked before reading.
        dependent_loss: how losses treat a task with ``depends_on``: ``conditional`` trains it only on rows
            where the parent's label is positive (CVR on clicks); ``joint`` trains the product of parent and
            child probabilities on all rows against the child's label (ESMM's CTCVR loss).
    """

    Config: Type[object] = NoOptions
    dependent_loss: str = "conditional"
    requirements: Requirements = Requirements()

    def __init__(self, schema: Schema, config: object) -> None:
        super().__init__()
        self.schema = schema
        self.config = config
        self.tasks: List[str] = schema.task_names

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss_weights(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Per-sample weights ``{task: [B]}`` multiplying each task's loss (no gradient flows through them)."""
        return {}

    def extra_losses(self, batch: Batch, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Model-specific loss terms ``{name: scalar}`` added to the total (auxiliary heads, regularisers)."""
        return {}

    def loss_views(
        self, batch: Batch, outputs: Dict[str, torch.Tensor]
    ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
        """Tasks trained on several predictions of each row: ``{task: (predictions [B, K], weights [B, K])}``.

        For a listed task the per-row loss is ``sum_k weights[:, k] * loss(predictions[:, k])`` instead of the
        loss of ``outputs[task]`` (then row weights, ``loss_weights`` and the task weight apply as usual). Unlike
        ``loss_weights``, these weights may carry gradient (SSIM's straight-through selection mask). A model may
        return such predictions from ``forward`` under keys that are not task names.
        """
        return {}

    def optimizer_groups(self) -> Dict[str, OptimizerGroup]:
        """Dense parameters with their own optimizer, by group name (the trainer builds one optimizer each)."""
        return {}

    # helpers for subclasses
    def check_features(self, names: Optional[Sequence[str]], what: str) -> List[str]:
        """``names`` (all sparse features when None), each checked against the schema (``model.params.<what>``)."""
        return check_features(self.schema, names, what)


M = TypeVar("M", bound=Type[RankingModel])
_REGISTRY: Dict[str, Type[RankingModel]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator adding a model to the registry under ``name``."""

    def wrap(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"model name '{name}' registered twice")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        _REGISTRY[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return wrap


def _import_model_modules() -> None:
    """Import every module of recsys.models; each registers its models (``recsys.models.index`` lists them)."""
    import recsys.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "index"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def model_names() -> List[str]:
    _import_model_modules()
    return sorted(_REGISTRY)


def model_class(name: str) -> Type[RankingModel]:
    names = model_names()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known models: {', '.join(names)}"
        raise ConfigError(f"model.name: unknown model '{name}'{hint}")
    return _REGISTRY[name]


def build_model(
    model: ModelConfig, schema: Schema, source: str = "config", where: str = "model.params"
) -> RankingModel:
    """The registered model ``model.name`` with ``model.params`` checked against its config dataclass.

    Args:
        model: name and options.
        schema: the data's schema.
        source, where: the file and key errors name (a model nested in another: ``model.params.backbone_params``).

    Example::

        model = build_model(ModelConfig(name="wide_deep", params={"hidden": [128, 64]}), schema)
    """
    cls = model_class(model.name)
    params = from_dict(cls.Config, model.params, where=where, source=source)
    return cls(schema, params)
