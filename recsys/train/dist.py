"""Process-group set-up shared by the trainer, the CLI and the benchmarks.

Under torchrun/TorchX the environment names the rank and world size; otherwise a single-process group with an
in-memory store is created, so DistributedModelParallel (and the fused FBGEMM kernels it brings) is used
even at world size 1.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, List, TypeVar

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto", timeout_s: int = 1800) -> DistInfo:
    """Initialise (or reuse) the default process group: NCCL on GPU, gloo on CPU."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        from recsys.errors import ConfigError

        raise ConfigError("device: 'cuda' was asked for but no GPU is visible")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            dist.init_process_group(backend, timeout=timeout)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, world, local_rank, local_world, dev)


def elastic_restart_count() -> int:
    """How many times torchelastic (torchrun, TorchX ``dist.ddp``) has restarted this job's workers: 0 on the
    first attempt and outside torchelastic (``TORCHELASTIC_RESTART_COUNT``).

    Example::

        if elastic_restart_count() > 0:
            ...  # a worker died and the agent restarted every worker: resume from the last checkpoint
    """
    raw = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


T = TypeVar("T")


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result to every rank. A user error raised there
    (:class:`~recsys.errors.RecsysError`) is raised on every rank with the same message, so no rank waits for a
    rank that has already failed."""
    from recsys.errors import RecsysError

    result, error = None, None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            result = fn()
        except RecsysError as e:
            error = e
    if dist.is_initialized() and dist.get_world_size() > 1:
        result, message = broadcast_object((result, None if error is None else str(error)))
        if message is not None and error is None:
            error = RecsysError(message)
    if error is not None:
        raise error
    return result  # type: ignore[return-value]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    holder: List[Any] = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_int(value: int, op: str) -> int:
    """min/max/sum of an int over ranks (gloo-friendly: the tensor stays on the CPU under gloo)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return int(t.item())
