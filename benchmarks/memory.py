"""Peak memory of a block of work, on CPU and GPU.

CPU: the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``), reset before the block by
writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), minus the resident set size at the start of the block
(after a garbage collection and ``malloc_trim`` so memory freed earlier is handed back first). RSS covers every
allocation - torch's CPU allocator, FBGEMM's C++ buffers, numpy - which ``tracemalloc`` (Python objects only)
does not. ``resource.getrusage().ru_maxrss`` cannot be reset, so it is only used, as a lower bound, when
``clear_refs`` is unavailable.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated at the start.
"""

import ctypes
import gc
import resource
from typing import Dict, Optional

import torch


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Context manager measuring the peak memory a block adds.

    Args:
        device: ``cpu`` measures resident memory; ``cuda`` measures the CUDA caching allocator.

    Example::

        with PeakMemory(torch.device("cpu")) as mem:
            x = torch.ones(1 << 24)
        mem.result()   # {"peak_bytes": ~64 MiB, "method": "rss-hwm"}
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.method = ""
        self._start = 0
        self.peak_bytes: Optional[int] = None

    def __enter__(self) -> "PeakMemory":
        _trim()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()
            self.method = "cuda-max-allocated"
        elif _reset_hwm() and _status_kib("VmHWM") is not None:
            self._start = (_status_kib("VmRSS") or 0) * 1024
            self.method = "rss-hwm"
        else:
            self._start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.method = "ru_maxrss-delta (lower bound)"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.method == "rss-hwm":
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, peak - self._start)

    def result(self) -> Dict[str, object]:
        return {"peak_bytes": self.peak_bytes, "method": self.method}


def release() -> None:
    """Collect garbage and hand freed memory back (between benchmark cells)."""
    _trim()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
