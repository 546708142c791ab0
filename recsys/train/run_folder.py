"""The run folder's lifecycle: one training at a time, no silent reuse of an old run, checkpoints named relative
to the folder, and a record of what every checkpoint depends on.

* :meth:`RunFolder.claim` takes an exclusive ``flock`` on ``run_dir/.lock`` for the whole training; a second
  training of the same folder fails at once. A folder that already holds a run is refused unless the run is
  resumed (``--resume``) or replaced (``--overwrite``: the old state is removed only once the new run's data and
  model have been checked, just before the first new file is written).
* Checkpoints are recorded by name (``step-00000420``) inside ``run_dir/checkpoints``, so a moved run folder
  still finds them and a missing best checkpoint is an error, never a fallback.
* :func:`run_identity` is what a checkpoint depends on (every config key except run-length and cosmetic ones,
  the dataset spec's content, a fingerprint of the data files, the world size); ``--resume`` refuses a mismatch
  naming the keys that differ.
"""

import errno
import fcntl
import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

from recsys.config import Config, to_dict
from recsys.errors import ConfigError, RecsysError
from recsys.train import checkpoint as ckpt

LOCK = ".lock"
CHECKPOINTS = "checkpoints"
MIN_FREE_BYTES = 64 << 20

# keys a resumed run may change: how long it runs, and what it shows
RESUME_MAY_DIFFER = (
    "train.epochs",
    "train.max_steps",
    "train.early_stopping.patience",
    "train.progress",
    "train.log_every_steps",
    "train.keep_checkpoints",
    "tensorboard",
)
# keys an evaluation may set differently from the run it evaluates: where data comes from and how it is batched,
# how training ran, and the hardware (a checkpoint of N ranks loads on any M)
EVAL_MAY_DIFFER_PREFIXES = ("train.", "sharding.", "tensorboard", "device", "run_dir")
EVAL_MAY_DIFFER = (
    "data.path",
    "data.batch_size",
    "data.eval_batch_size",
    "data.in_memory",
    "data.chunk_rows",
    "data.shuffle_buffer_chunks",
)
# compared by content instead of by path
PATH_KEYS = ("run_dir", "data.spec", "data.path")


class RunFolderError(RecsysError):
    """A run folder that cannot be used as asked (held by another run, not empty, not writable)."""


def flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}`` (lists are leaves)."""
    if isinstance(tree, dict) and tree:
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_fingerprint(path: str, root: str) -> List[Any]:
    """Name (relative to the data root), size and a digest of the first and last MiB: cheap at any size, and
    unchanged when a data folder is moved or copied."""
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return [os.path.relpath(path, root), size, h.hexdigest()[:16]]


def run_identity(cfg: Config, spec: Any, files: Sequence[str], root: str, world_size: int) -> Dict[str, Any]:
    """What a checkpoint of this run depends on, as flat ``key: value`` pairs (JSON)."""
    flat = flatten(to_dict(cfg))
    for key in RESUME_MAY_DIFFER + PATH_KEYS:
        flat.pop(key, None)
    flat["data.spec (content)"] = spec_digest(spec)
    try:
        flat["data files"] = _digest([file_fingerprint(f, root) for f in files])
    except OSError as e:
        raise RecsysError(f"{e.filename}: cannot read a data file ({e.strerror})") from None
    flat["world size"] = world_size
    return flat


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(
    saved: Dict[str, Any], live: Dict[str, Any], ignore: Sequence[str] = (), ignore_prefixes: Sequence[str] = ()
) -> List[str]:
    """``key (saved -> live)`` for every key whose value differs."""
    keys = sorted(set(saved) | set(live))
    out = []
    for key in keys:
        if key in ignore or key.startswith(tuple(ignore_prefixes)):
            continue
        if saved.get(key, "<unset>") != live.get(key, "<unset>"):
            out.append(f"{key} ({_show(saved.get(key, '<unset>'))} -> {_show(live.get(key, '<unset>'))})")
    return out


def check_resume_identity(checkpoint: str, saved: Optional[Dict[str, Any]], live: Dict[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` with a config or data it was not trained with."""
    if saved is None:
        raise RecsysError(
            f"{checkpoint}: the checkpoint records nothing of the config and data it was trained with "
            "(written by an older recsys); start a new run instead of resuming it"
        )
    diff = differences(saved, live)
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"--resume: {checkpoint} was trained with another config or data: {shown}. Only "
            f"{', '.join(RESUME_MAY_DIFFER[:3])} may change on resume; start a new run "
            "(another --run-dir, or --overwrite) for the rest"
        )


def check_eval_config(run_config: Dict[str, Any], given: Dict[str, Any], source: str, run_dir: str) -> None:
    """Refuse evaluating a run with a config (``-c``) whose model, features or splits differ from the run's."""
    diff = differences(
        flatten(run_config),
        flatten(given),
        ignore=EVAL_MAY_DIFFER + ("data.spec",),
        ignore_prefixes=EVAL_MAY_DIFFER_PREFIXES,
    )
    if diff:
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise ConfigError(
            f"{source} differs from the run's own config ({os.path.join(run_dir, 'config.yaml')}): "
            f"{shown}; leave out -c to use the run's config"
        )


def spec_digest(spec: Any) -> str:
    """A digest of a dataset spec's content (its ``root`` left out: where the data lies is not what it is)."""
    content = to_dict(spec)
    content.pop("root", None)
    return _digest(content)


def check_same_spec(run_spec: str, given_spec: str, given_overrides: Optional[Dict[str, Any]] = None) -> None:
    """Refuse a dataset spec (with its ``data.spec_overrides``) that differs from the copy a run keeps of its
    own."""
    from recsys.data.spec import load_spec

    if spec_digest(load_spec(run_spec)) != spec_digest(load_spec(given_spec, given_overrides)):
        raise ConfigError(
            f"{given_spec}: the dataset spec differs from the one the run was trained with "
            f"({run_spec}); leave out -c to use the run's own config and spec"
        )


def _existing_ancestor(path: str) -> str:
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return probe


def check_output_folder(path: str, what: str = "run folder") -> None:
    """Refuse a folder that cannot be written before any data is read: a file in the way, a read-only place,
    or a full disk."""
    probe = _existing_ancestor(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunFolderError(f"{path}: the {what} is a file, not a folder")
    if probe != path and not os.path.isdir(probe):
        raise RunFolderError(f"{path}: cannot create the {what}: '{probe}' is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunFolderError(f"{path}: cannot create or write the {what}: '{probe}' is not writable")
    try:
        st = os.statvfs(probe)
    except OSError:
        return
    if st.f_flag & os.ST_RDONLY:
        raise RunFolderError(f"{path}: cannot write the {what}: '{probe}' is on a read-only file system")
    free = st.f_bavail * st.f_frsize
    if free < MIN_FREE_BYTES:
        raise RunFolderError(f"{path}: no space left on the device of '{probe}' ({free >> 20} MiB free)")


def check_free_space(path: str, needed: int, what: str) -> None:
    """Refuse to start when the folder's device has less than ``needed`` bytes free."""
    st = os.statvfs(_existing_ancestor(path))
    free = st.f_bavail * st.f_frsize
    if free < needed:
        raise RunFolderError(
            f"{path}: no space left for {what}: about {needed / 2**20:,.0f} MiB needed, {free / 2**20:,.0f} MiB free"
        )


class RunFolder:
    """One run's folder. ``claim`` (rank 0, training only) locks it for the life of this object.

    Example::

        folder = RunFolder("runs/wd")
        folder.claim(resume=False, overwrite=False)   # error if another run holds or already filled it
        ...
        folder.release()
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.checkpoints = os.path.join(self.path, CHECKPOINTS)
        self._lock_fd: Optional[int] = None
        self._created = False

    # --- checkpoints by name -----------------------------------------------------------------------------
    def checkpoint(self, name: str) -> str:
        """The folder of checkpoint ``name`` (as recorded in a run's state)."""
        return os.path.join(self.checkpoints, name)

    def best_checkpoint(self) -> str:
        """The best checkpoint recorded by the newest checkpoint; an error when it is missing."""
        latest = self.latest_checkpoint()
        state = ckpt.read_trainer_state(latest)
        name = state.get("best_checkpoint")
        if name is None:
            raise RecsysError(
                f"{latest}: the run recorded no best checkpoint (its validation metric was never "
                "defined); use --checkpoint latest"
            )
        if not isinstance(name, str) or os.path.basename(name) != name or not name.startswith("step-"):
            raise RecsysError(
                f"{os.path.join(latest, ckpt.TRAINER_STATE)}: corrupt best checkpoint entry {_show(name)}"
            )
        path = self.checkpoint(name)
        if not os.path.isdir(path):
            raise RecsysError(
                f"{path}: the best checkpoint of this run is missing (deleted?); use --checkpoint "
                "latest or a checkpoint folder"
            )
        return path

    def latest_checkpoint(self) -> str:
        latest = ckpt.latest_checkpoint(self.checkpoints)
        if latest is None:
            raise RecsysError(f"{self.checkpoints}: no completed checkpoint (train first)")
        return latest

    def resolve(self, which: str) -> str:
        """``best``, ``latest`` or a checkpoint folder given by the user."""
        if which == "best":
            return self.best_checkpoint()
        if which == "latest":
            return self.latest_checkpoint()
        return which

    # --- claiming ----------------------------------------------------------------------------------------
    def contents(self) -> List[str]:
        """What the folder holds besides its lock."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path) if n != LOCK)

    def claim(self) -> None:
        """Create the folder if needed and take its exclusive lock (fails at once when another process holds
        it)."""
        check_output_folder(self.path)
        try:
            if not os.path.isdir(self.path):
                os.makedirs(self.path)
                self._created = True
            fd = os.open(os.path.join(self.path, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            self.discard_if_unused()
            raise RunFolderError(f"{self.path}: cannot create the run folder ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunFolderError(
                    f"{self.path}: another training is using this run folder (it holds "
                    f"{LOCK}); wait for it to finish or use another --run-dir"
                ) from None
            raise RunFolderError(f"{self.path}: cannot lock the run folder ({e.strerror})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def refuse_reuse(self, resume: bool, overwrite: bool) -> None:
        """A folder holding an earlier run is used only to resume it or, with ``overwrite``, to replace it."""
        held = self.contents()
        if held and not resume and not overwrite:
            shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
            raise RunFolderError(
                f"{self.path}: the run folder is not empty ({shown}); use --resume to continue "
                "that run, --overwrite to replace it, or another --run-dir"
            )

    def clear(self) -> None:
        """Remove every earlier file of the folder (keeping the lock held)."""
        for name in self.contents():
            full = os.path.join(self.path, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.remove(full)

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard_if_unused(self) -> None:
        """After a failed start: remove the lock, and the folder when this process created it and nothing else
        was written, so a refused run leaves no trace."""
        held = self._lock_fd is not None
        self.release()
        if held and not self.contents():
            try:
                os.remove(os.path.join(self.path, LOCK))
            except OSError:
                pass
        if self._created and os.path.isdir(self.path) and not os.listdir(self.path):
            os.rmdir(self.path)
            self._created = False

    def __del__(self) -> None:
        self.release()
