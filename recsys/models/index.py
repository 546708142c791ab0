"""The model registry's index: every registered name with its class, a one-line description and what it needs
from the data, readable without importing torch or any model module (``recsys models`` prints it in well under a
second). ``tests/test_cli_models.py`` checks it against the real registry (names, modules, classes,
:class:`Requirements`), so it cannot drift from the models.

Example::

    from recsys.models.index import INDEX
    [e.name for e in INDEX if e.requirements.funnel]      # ['calibration4cvr', 'esmm']
"""

from dataclasses import dataclass
from typing import List, Tuple


@dataclass(frozen=True)
class Requirements:
    """What a model needs from the data, checked against the dataset spec before any data is read.

    Args:
        min_tasks: fewest tasks the model is meaningful with (multi-task models: 2).
        scenario: needs a scenario column with at least two scenarios.
        funnel: needs a binary task that ``depends_on`` another (CVR given click).
        user: needs the user feature (per-user state, grouping).
        time: needs a timestamp column.
        history: reads each row's per-user label history (``Batch.history``); the trainer has the dataset build
            it only for such models (datasets with ``user`` and ``time``), so no other model pays for its pass
            over the files and its state.
    """

    min_tasks: int = 1
    scenario: bool = False
    funnel: bool = False
    user: bool = False
    time: bool = False
    history: bool = False


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Args:
        name: the registry name (``model.name`` in a config).
        module: its module under ``recsys.models``.
        cls: its class name there.
        summary: one line saying what this registry name is (two names of one module differ here).
        requirements: the class's :class:`Requirements`.
    """

    name: str
    module: str
    cls: str
    summary: str
    requirements: Requirements = Requirements()


_MULTI_TASK = Requirements(min_tasks=2)
_FUNNEL = Requirements(min_tasks=2, funnel=True)
_SCENARIO = Requirements(scenario=True)
_HISTORY = Requirements(min_tasks=2, history=True)

INDEX: Tuple[ModelEntry, ...] = (
    ModelEntry(
        "calibration4cvr",
        "calibration4cvr",
        "Calibration4CVR",
        "Calibration4CVR: the CTR network calibrates the CVR network (4 structures)",
        _FUNNEL,
    ),
    ModelEntry("cbmr", "cbmr", "CBMR", "CBMR: Wide&Deep + EmbCB + MlpCB, sample-adaptive calibration (CTR)"),
    ModelEntry("dcn", "dcn", "DCN", "DCN / DCN-V2: cross network beside an MLP, one model for all scenarios (MT)"),
    ModelEntry("dcn_mts", "dcn", "DCNMTS", "DCN / DCN-V2 as a shared bottom, one tower per scenario (MT-S)", _SCENARIO),
    ModelEntry("deepfm", "deepfm", "DeepFM", "DeepFM: first order + FM pairs + MLP, one model for all scenarios (MT)"),
    ModelEntry(
        "deepfm_mts", "deepfm", "DeepFMMTS", "DeepFM with one tower per scenario on the deep part (MT-S)", _SCENARIO
    ),
    ModelEntry(
        "dffm", "dffm", "DFFM", "DFFM: feature-pair interactions with weights generated from the scenario", _SCENARIO
    ),
    ModelEntry("dnn", "dnn", "DNN", "DNN: MLP over concatenated embeddings, one output per task (MT)"),
    ModelEntry("dnn_mts", "dnn", "DNNMTS", "DNN as a shared bottom, one tower per scenario (MT-S)", _SCENARIO),
    ModelEntry(
        "esmm", "esmm", "ESMM", "ESMM: CTR and CVR towers trained on CTR and CTCVR over all impressions", _FUNNEL
    ),
    ModelEntry(
        "hmoe", "hmoe", "HMoE", "HMoE: scenario experts and towers, mixed across scenarios in label space", _SCENARIO
    ),
    ModelEntry("mmoe", "mmoe", "MMoE", "MMoE: shared experts, one softmax gate and tower per task", _MULTI_TASK),
    ModelEntry(
        "multicbmr", "cbmr", "MultiCBMR", "MultiCBMR: multi-task CBMR, experts with task-specific MlpCB", _MULTI_TASK
    ),
    ModelEntry("pepnet", "pepnet", "PEPNet", "PEPNet: EPNet on the embeddings, PPNet gates on every tower layer"),
    ModelEntry("ple", "ple", "PLE", "PLE: stacked levels of task-specific and shared experts", _MULTI_TASK),
    ModelEntry(
        "shared_bottom",
        "shared_bottom",
        "SharedBottom",
        "Shared-Bottom: one shared MLP, one tower per task",
        _MULTI_TASK,
    ),
    ModelEntry(
        "single_task",
        "single_task",
        "SingleTask",
        "Single-task towers + bias net (Calibration4CVR's single-task baseline)",
    ),
    ModelEntry(
        "ssim", "ssim", "SSIM", "SSIM retrain: a multi-scenario backbone trained with a shared-instance set", _SCENARIO
    ),
    ModelEntry(
        "ssim_search",
        "ssim",
        "SSIMSearch",
        "SSIM search: learns which instances every scenario shares (selection net)",
        _SCENARIO,
    ),
    ModelEntry(
        "stan", "stan", "STAN", "STAN: PLE/MMoE + a user-state branch and stage-adaptive loss weights", _HISTORY
    ),
    ModelEntry("star", "star", "STAR", "STAR: star topology, shared weights times per-scenario weights", _SCENARIO),
    ModelEntry("wide_deep", "wide_deep", "WideDeep", "Wide & Deep: a linear wide part beside a deep MLP"),
)

COLUMNS = ("name", "tasks", "funnel", "scenarios", "user", "time", "description")


def needs(req: Requirements) -> Tuple[str, str, str, str, str]:
    """The table cells of a model's requirements: tasks, funnel, scenarios, user, time ('-' where not needed)."""
    flag = lambda on: "yes" if on else "-"  # noqa: E731
    return (f">= {req.min_tasks}", flag(req.funnel), ">= 2" if req.scenario else "-", flag(req.user), flag(req.time))


def table() -> str:
    """The registry as an aligned text table, one row per model, header first (what ``recsys models`` prints)."""
    rows: List[Tuple[str, ...]] = [COLUMNS, *((e.name, *needs(e.requirements), e.summary) for e in INDEX)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)
