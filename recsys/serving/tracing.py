"""FX tracing of a :class:`~recsys.serving.module.ServingModule` into a graph TorchScript can compile.

torchrec's tracer goes through the ``Batch`` dataclass, the ``KeyedJaggedTensor`` and the quantized embedding
modules and records tensor operations only. A module whose ``forward`` branches on a traced value (e.g.
``ScenarioLinear`` on ``x.dim()``) cannot be traced through; :func:`trace` keeps such a module whole (a leaf of
the graph, compiled by TorchScript's scripting, which handles that control flow) and traces again, so no model
needs changes for serving.
"""

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn
from torch.fx.proxy import TraceError
from torchrec.fx import Tracer

MAX_LEAVES = 32


class _LeafOnFailureTracer(Tracer):
    """torchrec's tracer, plus: modules named in ``leaves`` are not traced into, and the innermost module whose
    ``forward`` raised a :class:`TraceError` is remembered in ``failed``."""

    def __init__(self, leaves: Set[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed: Optional[str] = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        path = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except TraceError:
            if self.failed is None:  # the first handler to see the error is the innermost module's
                self.failed = path
            raise


def trace(module: nn.Module, leaves: Optional[Sequence[str]] = None) -> Tuple[torch.fx.GraphModule, List[str]]:
    """``module`` as an FX graph with dead code removed, and the paths of the submodules kept whole.

    Args:
        module: the module to trace.
        leaves: submodule paths to keep whole; None finds them, tracing again after each failure. A failed
            trace can leave state behind in modules that cache on their first call (torchrec's quantized
            embedding modules), so quantized modules are traced with the leaves found on their float original.

    Raises:
        TraceError: when the root module itself (or, with ``leaves`` given, any other module) cannot be traced.
    """
    search = leaves is None
    kept: Set[str] = set(leaves or ())
    while True:
        tracer = _LeafOnFailureTracer(kept)
        try:
            graph = tracer.trace(module)
        except TraceError:
            module.train(module.training)  # modules holding evaluation-time state reset it (none keeps a proxy)
            if not search or not tracer.failed or tracer.failed in kept or len(kept) >= MAX_LEAVES:
                raise
            kept.add(tracer.failed)
            continue
        graph_module = torch.fx.GraphModule(module, graph)
        # outputs the wrapper does not return (loss views, preference logits, projector side effects on their
        # inputs) leave nodes without users: removed, so the program computes the predictions only
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        return graph_module, sorted(kept)
