"""Sharded checkpoints with torch.distributed.checkpoint (DCP), written atomically and loaded without trusting them.

Layout of one checkpoint folder::

    step-00000420/
        .metadata, __0_0.distcp, ...   tensors only (model and optimizer state, sharded as trained)
        trainer.json                   loop state: step, epoch, best metric, what the checkpoint depends on
        rng-rank<r>.json               each rank's torch RNG state (bitwise resume)
        MANIFEST.json                  size and SHA-256 of every file above
        COMPLETE                       written last

All ranks write into ``step-XXXX.tmp``; after every rank finished, rank 0 writes the manifest and ``COMPLETE``
and renames the folder, so a crash leaves either a finished checkpoint or a ``.tmp`` folder that is never loaded.

Loading never runs code from the folder:

* the manifest is checked first: every file listed, no file unlisted, sizes and digests equal (a truncated,
  corrupted or planted file is refused before anything is parsed);
* DCP's ``.metadata`` is a pickle; it is read by :class:`MetadataUnpickler`, which admits only DCP's own metadata
  classes, ``torch.Size``, dtypes, layouts and builtin containers (a crafted pickle that names any other callable
  is refused without running it), and DCP is handed that object instead of unpickling the file itself;
* storage entries must point at files of the manifest (no path escapes the folder), entries holding pickled
  objects (``BytesStorageMetadata``) are refused, and tensors are read with ``weights_only=True``.

Non-tensor state (optimizer hyper-parameters) comes from the live objects; the loop state and RNG are JSON.
Resharding is DCP's: a checkpoint saved by N ranks loads on M ranks.
"""

import base64
import errno
import io
import json
import os
import pickle
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import filesystem as dcp_fs
from torch.distributed.checkpoint import metadata as dcp_md
from torch.distributed.checkpoint.api import CheckpointException

from recsys.console import quiet_library
from recsys.errors import RecsysError
from recsys.io import disk_error
from recsys.serving.runtime import check_files, file_digest
from recsys.train.dist import barrier

COMPLETE = "COMPLETE"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "recsys-checkpoint-v1"
TRAINER_STATE = "trainer.json"
_STEP_RE = re.compile(r"^step-(\d+)$")


class CheckpointError(RecsysError):
    """A checkpoint that is missing, unfinished, corrupt, untrusted or does not match the model."""


def tensors_only(tree: Any) -> Any:
    """The nested dicts of ``tree`` keeping tensor leaves only (None when nothing is left)."""
    if isinstance(tree, torch.Tensor):
        return tree
    if isinstance(tree, dict):
        out = {k: tensors_only(v) for k, v in tree.items()}
        out = {k: v for k, v in out.items() if v is not None}
        return out or None
    return None


def merge_tensors(template: Any, loaded: Any) -> Any:
    """``template`` with its tensor leaves replaced by ``loaded``'s (non-tensor leaves kept)."""
    if isinstance(template, dict) and isinstance(loaded, dict):
        return {k: merge_tensors(v, loaded[k]) if k in loaded else v for k, v in template.items()}
    return loaded if loaded is not None else template


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _first_line(e: BaseException) -> str:
    """The first line of an error's message; for DCP's CheckpointException, that of the first rank's failure
    (its own message is a multi-line traceback dump)."""
    if isinstance(e, CheckpointException) and e.failures:
        e = next(iter(e.failures.values()))[0]
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


# --- restricted unpickling of DCP metadata -------------------------------------------------------------------
def _allowed_globals() -> Dict[Tuple[str, str], Any]:
    allowed: Dict[Tuple[str, str], Any] = {
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
        ("pathlib", "PosixPath"): __import__("pathlib").PosixPath,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): dcp_fs._StorageInfo,
    }
    for name in (
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    ):
        allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(dcp_md, name)
    for name, value in vars(torch).items():  # dtypes pickle as attributes of torch (torch.float32, ...)
        if isinstance(value, torch.dtype):
            allowed[("torch", name)] = value
    return allowed


class MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata admitting only the classes such metadata is made of.

    Everything a pickle can call comes through ``find_class``; refusing every other name means a crafted file
    cannot reach ``os.system``, ``builtins.eval`` or any other callable.
    """

    _ALLOWED: Optional[Dict[Tuple[str, str], Any]] = None

    def find_class(self, module: str, name: str) -> Any:
        if MetadataUnpickler._ALLOWED is None:
            MetadataUnpickler._ALLOWED = _allowed_globals()
        try:
            return MetadataUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}'") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent references")


def read_metadata(path: str) -> dcp_md.Metadata:
    """DCP's ``.metadata`` of checkpoint folder ``path``, unpickled with :class:`MetadataUnpickler`."""
    file = os.path.join(path, ".metadata")
    try:
        with open(file, "rb") as f:
            metadata = MetadataUnpickler(io.BytesIO(f.read())).load()
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing (not a DCP checkpoint)") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on a crafted or damaged file
        raise CheckpointError(
            f"{file}: untrusted or unreadable checkpoint metadata ({_first_line(e)}); refusing to load it"
        ) from None
    if not isinstance(metadata, dcp_md.Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{file}: not DCP checkpoint metadata (got {type(metadata).__name__})")
    return metadata


class SafeFileSystemReader(dcp.FileSystemReader):
    """DCP's file-system reader with the metadata read by :func:`read_metadata` instead of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_md.Metadata:
        metadata = read_metadata(str(self.path))
        storage = getattr(metadata, "storage_meta", None) or dcp_md.StorageMeta()
        storage.load_id = self.load_id
        metadata.storage_meta = storage
        return metadata


# --- manifest ------------------------------------------------------------------------------------------------
def write_manifest(path: str) -> None:
    """Record size and SHA-256 of every file of checkpoint folder ``path`` (rank 0, after all ranks wrote)."""
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name in (MANIFEST, COMPLETE) or not os.path.isfile(full):
            continue
        files[name] = {"size": os.path.getsize(full), "sha256": file_digest(full)}
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump({"format": MANIFEST_FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def verify_manifest(path: str) -> Dict[str, Dict[str, Any]]:
    """Check every file of ``path`` against its manifest; returns the manifest's file table."""
    file = os.path.join(path, MANIFEST)
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {manifest.get('format')!r}")
        for name, entry in files.items():
            if (
                os.path.basename(name) != name
                or name.startswith("..")
                or not isinstance(entry, dict)
                or not isinstance(entry.get("size"), int)
                or not isinstance(entry.get("sha256"), str)
            ):
                raise ValueError(f"bad entry {name!r}")
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no {MANIFEST}, so its files cannot be verified; refusing to load it "
            "(not written by this version of recsys?)"
        ) from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{file}: not a valid checkpoint manifest ({_first_line(e)})") from None
    present = [n for n in os.listdir(path) if n not in (MANIFEST, COMPLETE)]
    check_files(path, files, present, CheckpointError, "checkpoint")
    return files


def _check_storage(path: str, metadata: dcp_md.Metadata, files: Dict[str, Any]) -> None:
    for key, md in metadata.state_dict_metadata.items():
        if isinstance(md, dcp_md.BytesStorageMetadata):
            raise CheckpointError(f"{path}: checkpoint entry '{key}' is a pickled object; refusing to load it")
        if not isinstance(md, dcp_md.TensorStorageMetadata):
            raise CheckpointError(f"{path}: checkpoint entry '{key}' has unknown storage {type(md).__name__}")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise CheckpointError(f"{path}: checkpoint metadata has no storage table")
    for info in storage.values():
        if not isinstance(info, dcp_fs._StorageInfo) or info.relative_path not in files:
            where = getattr(info, "relative_path", info)
            raise CheckpointError(f"{path}: checkpoint metadata points at '{where}', which is not one of its files")


def check_checkpoint(path: str) -> dcp_md.Metadata:
    """Refuse missing, unfinished, corrupt or untrusted checkpoints with a one-line error; nothing in the folder
    is executed. Returns the (safely read) metadata."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint folder")
    if not os.path.exists(os.path.join(path, COMPLETE)):
        raise CheckpointError(
            f"{path}: checkpoint is incomplete (no {COMPLETE} marker); it was interrupted while saving"
        )
    files = verify_manifest(path)
    metadata = read_metadata(path)
    _check_storage(path, metadata, files)
    return metadata


# --- save / load ---------------------------------------------------------------------------------------------
def _is_disk_full(e: BaseException) -> bool:
    """torch's writers report ENOSPC as a RuntimeError from its C++ enforce (``inline_container.cc``)."""
    text = str(e)
    return "No space left" in text or "ENOSPC" in text or "file write failed" in text


def save_checkpoint(path: str, state: Dict[str, Any], trainer_state: Dict[str, Any]) -> None:
    """Collective: every rank calls it with its (sharded) ``state``; ``trainer_state`` is JSON from rank 0."""
    tmp = path + ".tmp"
    try:
        if _rank() == 0:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp)
        barrier()
        try:
            with quiet_library():
                dcp.save(tensors_only(state), checkpoint_id=tmp)
        except CheckpointException as e:  # a BaseException: wraps every rank's failure
            failures = [err for err, _ in e.failures.values()]
            # Ctrl-C or SIGTERM (raised as KeyboardInterrupt / SystemExit) while saving stays an interruption:
            # the half-written folder is removed below and the command exits 130 / 143, not 2
            stop = next((f for f in failures if isinstance(f, (KeyboardInterrupt, SystemExit))), None)
            if stop is not None:
                raise stop from None
            disk = next((f for f in failures if isinstance(f, OSError)), None)
            if disk is not None:
                raise disk from None
            if _is_disk_full(e):
                raise OSError(errno.ENOSPC, "No space left on device") from None
            raise RecsysError(f"{path}: checkpoint save failed ({_first_line(e)})") from None
        rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
        with open(os.path.join(tmp, f"rng-rank{_rank()}.json"), "w") as f:
            json.dump({"torch": rng}, f)
        barrier()
        if _rank() == 0:
            with open(os.path.join(tmp, TRAINER_STATE), "w") as f:
                json.dump(trainer_state, f, indent=1)
            write_manifest(tmp)
            with open(os.path.join(tmp, COMPLETE), "w") as f:
                f.write("ok\n")
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        barrier()
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise disk_error(path, e) from None
    except RuntimeError as e:
        if _is_disk_full(e):
            shutil.rmtree(tmp, ignore_errors=True)
            raise disk_error(path, OSError(errno.ENOSPC, "No space left on device")) from None
        raise


def read_json(file: str, what: str) -> Any:
    """A JSON file of a run or checkpoint folder, with one-line errors naming it."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing ({what})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt {what} ({_first_line(e)})") from None


def read_trainer_state(path: str) -> Dict[str, Any]:
    state = read_json(os.path.join(path, TRAINER_STATE), "checkpoint loop state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{os.path.join(path, TRAINER_STATE)}: corrupt checkpoint loop state (not a mapping)")
    return state


def _restore_rng(path: str) -> None:
    file = os.path.join(path, f"rng-rank{_rank()}.json")
    if not os.path.exists(file):
        return
    entry = read_json(file, "RNG state")
    try:
        raw = base64.b64decode(entry["torch"], validate=True)
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
    except (TypeError, KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{file}: corrupt RNG state ({_first_line(e)})") from None


def load_checkpoint(
    path: str, state: Dict[str, Any], restore_rng: bool = True
) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load tensors into a copy of ``state`` (the live state dicts, any world size); returns the merged state
    and the trainer state. Apply them with ``load_state_dict``."""
    check_checkpoint(path)
    trainer_state = read_trainer_state(path)
    template = tensors_only(state)
    try:
        with quiet_library():
            dcp.load(template, storage_reader=SafeFileSystemReader(path))
    except RecsysError:
        raise
    except (Exception, CheckpointException) as e:  # CheckpointException is a BaseException
        raise CheckpointError(f"{path}: checkpoint does not match this model ({_first_line(e)})") from None
    if restore_rng:
        _restore_rng(path)
    return merge_tensors(state, template), trainer_state


def list_checkpoints(folder: str) -> List[Tuple[int, str]]:
    """Completed checkpoints in ``folder`` as (step, path), oldest first."""
    if not os.path.isdir(folder):
        return []
    out = []
    for name in os.listdir(folder):
        m = _STEP_RE.match(name)
        if m and os.path.exists(os.path.join(folder, name, COMPLETE)):
            out.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(out)


def latest_checkpoint(folder: str) -> Optional[str]:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def prune_checkpoints(folder: str, keep: int, protect: Optional[str]) -> None:
    """Delete all but the ``keep`` newest checkpoints (never ``protect``, the best one). Rank 0 only."""
    if _rank() != 0:
        return
    found = list_checkpoints(folder)
    for _, path in found[: max(len(found) - keep, 0)]:
        if protect is None or os.path.abspath(path) != os.path.abspath(protect):
            shutil.rmtree(path, ignore_errors=True)
