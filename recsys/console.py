"""What a person sees on the console: progress, log lines, and library warnings kept out of the way.

* Progress (:class:`Progress`): a tqdm bar when stderr is a terminal; otherwise (a job log, a pipe, TorchX) no
  bar at all, but a plain log line at most every :data:`LINE_INTERVAL_S` seconds with the count, the share
  done, the rate and the ETA.
* Log lines never land inside a bar: :class:`BarSafeHandler` (the CLI's handler) and :func:`bar_safe_logging`
  (around the trainer's passes, for handlers the caller set up) print through ``tqdm.write``.
* Library noise: the warnings torch, torchrec and FBGEMM raise on our calls and that a user can do nothing
  about (:data:`LIBRARY_WARNINGS`, :data:`LIBRARY_LOG_LINES`) are hidden where they are raised
  (:func:`quiet_library`), matched by category, message and module (or logger and message); one log line that
  torch prints from inside any forward pass is filtered for good (:data:`FOREVER_LOG_LINES`). ``recsys -v`` or
  :func:`show_library_warnings` shows them again; recsys's own warnings are never filtered.

Example::

    with Progress("fit", total=rows, unit="row", enabled=True) as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))
"""

import contextlib
import logging
import os
import sys
import time
import warnings
from typing import Iterator, Optional, TextIO, Tuple, Type

from tqdm import tqdm

log = logging.getLogger("recsys")

# seconds between two plain progress lines of one pass when stderr is not a terminal
LINE_INTERVAL_S = 30.0

# (category, message regex, module regex) of library warnings raised on our calls
LIBRARY_WARNINGS: Tuple[Tuple[Type[Warning], str, str], ...] = (
    # DCP checkpoints of torchrec's sharded tables (ShardedTensor is what torchrec 1.8 shards into)
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor", r"torch\.distributed\."),
    # the DistributedDataParallel calls of DistributedModelParallel and of data-parallel tables
    (FutureWarning, r"`broadcast_buffers` is deprecated", r"torchrec\.distributed\."),
    # the fused embedding optimizer: torchrec's apply_optimizer_in_backward is what DMP fuses into FBGEMM
    (
        DeprecationWarning,
        r"This API is deprecated\. Please use Pytorch Distributed's _apply_optimizer_in_backward",
        r"torchrec\.optim\.apply_optimizer_in_backward",
    ),
    # the backward of a data-parallel (dense kernel) table: FBGEMM registers no autograd kernel for its lookup
    (
        UserWarning,
        r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered",
        r"torch\.autograd\.graph",
    ),
)
# (logger, message prefix) of library log lines about choices the config made on purpose
LIBRARY_LOG_LINES: Tuple[Tuple[str, str], ...] = (
    # the planner checks a plan's data-parallel tables for a sharding spec they do not have (root logger)
    ("root", "Sharding spec not found for"),
    # the sharder of a data-parallel or dense-kernel table
    ("torchrec.distributed.utils", "Sharding Type is data_parallel, caching params will be ignored"),
    ("torchrec.distributed.utils", "Compute Kernel is dense, caching params will be ignored"),
    # torchrec 1.8's Topology warns about direct construction (TopologyFactory is new in 1.8)
    ("torchrec.distributed.planner.types", "The topology was constructed directly"),
)
# torch warns once per process, from deep inside a forward pass, when torchrec asks is_fx_tracing(): filtered for
# good (unless shown)
FOREVER_LOG_LINES: Tuple[Tuple[str, str], ...] = (("torch.fx._symbolic_trace", "is_fx_tracing will return true"),)

_show_library = False


def show_library_warnings(show: bool = True) -> None:
    """Show (True) or hide (False, the default) the known library warnings (:data:`LIBRARY_WARNINGS`,
    :data:`LIBRARY_LOG_LINES`); ``recsys -v`` shows them."""
    global _show_library
    _show_library = bool(show)


def library_warnings_shown() -> bool:
    return _show_library


class DropMessage(logging.Filter):
    """Drops log records whose message starts with ``prefix``, unless library warnings are shown."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return _show_library or not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_library() -> Iterator[None]:
    """Inside the block, the known library warnings (:data:`LIBRARY_WARNINGS`) and log lines
    (:data:`LIBRARY_LOG_LINES`) are not shown, unless :func:`show_library_warnings` asked for them. Every
    other warning and log line passes."""
    if _show_library:
        yield
        return
    drops = [
        (logging.getLogger(None if name == "root" else name), DropMessage(prefix)) for name, prefix in LIBRARY_LOG_LINES
    ]
    for target, drop in drops:
        target.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for category, message, module in LIBRARY_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category, module=module)
            yield
    finally:
        for target, drop in drops:
            target.removeFilter(drop)


def _install_log_filters() -> None:
    """The log lines of :data:`FOREVER_LOG_LINES` get a filter on their logger for good."""
    for name, prefix in FOREVER_LOG_LINES:
        target = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.prefix == prefix for f in target.filters):
            target.addFilter(DropMessage(prefix))


_install_log_filters()


# --- log lines and bars --------------------------------------------------------------------------------------
def is_terminal(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default: stderr, where bars go) is a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class BarSafeHandler(logging.StreamHandler):
    """A stream handler that prints each record above the progress bars on its stream (``tqdm.write``), so a
    log line is never glued to a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


@contextlib.contextmanager
def bar_safe_logging(enabled: bool) -> Iterator[None]:
    """While bars may be drawn (``enabled`` and stderr is a terminal), the console handlers of the root and
    ``recsys`` loggers (a Python API user's ``logging.basicConfig``, say) print through ``tqdm.write``: each is
    swapped for a :class:`BarSafeHandler` on the same stream, with its level, formatter and filters."""
    if not (enabled and is_terminal()):
        yield
        return
    swapped = []
    for logger in (logging.root, log):
        for i, handler in enumerate(logger.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                safe = BarSafeHandler(handler.stream)
                safe.setLevel(handler.level)
                safe.setFormatter(handler.formatter)
                safe.filters = list(handler.filters)
                logger.handlers[i] = safe
                swapped.append((logger, i, handler))
    try:
        yield
    finally:
        for logger, i, handler in swapped:
            logger.handlers[i] = handler


def _count(n: float, unit_scale: bool) -> str:
    return tqdm.format_sizeof(n) if unit_scale else f"{int(n):,}"


class Progress:
    """The progress of one pass: a tqdm bar on a terminal, plain log lines otherwise (see the module docstring).

    Args:
        desc: what runs ("fit", "epoch 1/3").
        total: the count at the end; None when unknown (no share, no ETA).
        unit: what is counted ("row", "step", "batch").
        enabled: False shows nothing (``train.progress: false``, ranks other than 0).
        initial: the count already done (a resumed epoch).
        leave: keep the finished bar on the terminal.
        unit_scale: counts as 12.3k rather than 12,345.
        estimated: ``total`` is an estimate (CSV lines): a pass that ends without error is complete, so its
            bar ends at 100% whatever the estimate said.
        interval: seconds between plain lines (not on a terminal); a pass shorter than that prints none.

    Example::

        with Progress("epoch 1/2", total=100, unit="step", enabled=True, leave=True) as bar:
            for step in range(100):
                bar.note(f"loss {loss:.4f}")
                bar.update()
    """

    def __init__(
        self,
        desc: str,
        total: Optional[float],
        unit: str = "row",
        enabled: bool = True,
        initial: int = 0,
        leave: bool = False,
        unit_scale: bool = False,
        estimated: bool = False,
        interval: float = LINE_INTERVAL_S,
    ) -> None:
        self.desc, self.total, self.unit, self.unit_scale = desc, total, unit, unit_scale
        self.estimated = estimated
        self.interval = interval
        self.n: float = initial
        self._initial = initial
        self._note = ""
        self._start = self._last_line = time.perf_counter()
        self._lines_printed = 0
        self._closed = False
        self.bar: Optional[tqdm] = None
        self.lines = False
        if enabled and is_terminal():
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                unit_scale=unit_scale,
                leave=leave,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        else:
            self.lines = enabled

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)

    def note(self, text: str) -> None:
        """A short status shown after the bar (or at the end of the plain lines), e.g. the latest loss."""
        self._note = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.lines and time.perf_counter() - self._last_line >= self.interval:
            self._line()

    def line(self) -> str:
        """The plain progress line: ``desc: n/total unit (share), rate, ETA; note``."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        rate = (self.n - self._initial) / elapsed
        parts = [f"{self.desc}: {_count(self.n, self.unit_scale)}"]
        if self.total:
            parts[0] += f"/{_count(self.total, self.unit_scale)} {self.unit}s ({min(self.n / self.total, 1):.0%})"
        else:
            parts[0] += f" {self.unit}s"
        parts.append(f"{tqdm.format_sizeof(rate) if self.unit_scale else f'{rate:,.1f}'} {self.unit}s/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {tqdm.format_interval((self.total - self.n) / rate)}")
        elif self.n >= (self.total or float("inf")):
            parts.append(f"done in {tqdm.format_interval(elapsed)}")
        text = ", ".join(parts)
        return f"{text}; {self._note}" if self._note else text

    def _line(self) -> None:
        log.info("%s", self.line())
        self._last_line = time.perf_counter()
        self._lines_printed += 1

    def close(self, complete: bool = True) -> None:
        """End the pass; a bar with an estimated total that ended without error shows 100%. Closing twice is
        harmless."""
        if self._closed:
            return
        self._closed = True
        if complete and self.estimated:
            self.total = self.n
        if self.bar is not None:
            if complete and self.estimated and self.bar.total != self.bar.n:
                self.bar.total = self.bar.n
                self.bar.refresh()
            self.bar.close()
        elif self.lines and self._lines_printed:  # a long pass: its last line says how it ended
            self._line()


def setup_logging(verbose: bool = False) -> None:
    """recsys's messages on stderr (rank 0 from INFO, other ranks from WARNING), printed above any progress
    bar. ``verbose``: everything at DEBUG, the full sharding plan, and the library warnings
    :mod:`recsys.console` otherwise hides (DeprecationWarnings included)."""
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    handler = BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else level, handlers=[handler])
    show_library_warnings(verbose)
    if verbose:
        warnings.simplefilter("default")  # library DeprecationWarnings too, once per place
    else:
        for noisy in ("torchrec", "fbgemm_gpu", "torch", "root", "torchx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    # "root" above is the root logger itself (and an earlier import may have configured it): recsys's own
    # messages keep their level (INFO on rank 0)
    logging.getLogger("recsys").setLevel(logging.DEBUG if verbose else level)
