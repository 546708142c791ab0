"""Sharded checkpoints with torch.distributed.checkpoint (DCP), written atomically and loaded safely.

Layout of one checkpoint folder::

    step-00000420/
        .metadata, __0_0.distcp, ...   tensors only (model and optimizer state, sharded as trained)
        trainer.json                   loop state: step, epoch, best metric, config digest
        rng-rank<r>.json               each rank's torch RNG state (bitwise resume)
        COMPLETE                       written last

All ranks write into ``step-XXXX.tmp``; after every rank finished, rank 0 writes ``COMPLETE`` and renames the
folder, so a crash leaves either a finished checkpoint or a ``.tmp`` folder that is never loaded.

Only tensors are stored: DCP would unpickle other objects on load (``weights_only=False``), so non-tensor
entries (optimizer hyper-parameters) come from the live objects instead, and loading refuses checkpoints that
contain pickled objects. Tensors are read with ``weights_only=True``. Resharding is DCP's: a checkpoint saved
by N ranks loads on M ranks.
"""

import base64
import json
import os
import re
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata

from recsys.errors import RecsysError
from recsys.train.dist import barrier

COMPLETE = "COMPLETE"
_STEP_RE = re.compile(r"^step-(\d+)$")


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


def save_checkpoint(path: str, state: Dict[str, Any], trainer_state: Dict[str, Any]) -> None:
    """Collective: every rank calls it with its (sharded) ``state``; ``trainer_state`` is JSON from rank 0."""
    tmp = path + ".tmp"
    if _rank() == 0:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
        os.makedirs(tmp)
    barrier()
    dcp.save(tensors_only(state), checkpoint_id=tmp)
    rng = base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()
    with open(os.path.join(tmp, f"rng-rank{_rank()}.json"), "w") as f:
        json.dump({"torch": rng}, f)
    barrier()
    if _rank() == 0:
        with open(os.path.join(tmp, "trainer.json"), "w") as f:
            json.dump(trainer_state, f, indent=1)
        with open(os.path.join(tmp, COMPLETE), "w") as f:
            f.write("ok\n")
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    barrier()


def check_checkpoint(path: str) -> None:
    """Refuse missing, unfinished or untrusted (pickle-carrying) checkpoints with a one-line error."""
    if not os.path.isdir(path):
        raise RecsysError(f"{path}: no such checkpoint folder")
    if not os.path.exists(os.path.join(path, COMPLETE)):
        raise RecsysError(f"{path}: checkpoint is incomplete (no {COMPLETE} marker); it was interrupted while saving")
    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except Exception as e:
        raise RecsysError(f"{path}: unreadable checkpoint metadata ({str(e).splitlines()[0]})") from None
    for key, md in metadata.state_dict_metadata.items():
        if isinstance(md, BytesStorageMetadata):
            raise RecsysError(f"{path}: checkpoint entry '{key}' is a pickled object; refusing to load it")


def load_checkpoint(path: str, state: Dict[str, Any], restore_rng: bool = True) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load tensors into a copy of ``state`` (the live state dicts, any world size); returns the merged state
    and the trainer state. Apply them with ``load_state_dict``."""
    check_checkpoint(path)
    template = tensors_only(state)
    try:
        dcp.load(template, checkpoint_id=path)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RecsysError(f"{path}: checkpoint does not match this model ({first[:300]})") from None
    with open(os.path.join(path, "trainer.json")) as f:
        trainer_state = json.load(f)
    rng_file = os.path.join(path, f"rng-rank{_rank()}.json")
    if restore_rng and os.path.exists(rng_file):
        with open(rng_file) as f:
            raw = base64.b64decode(json.load(f)["torch"])
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
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
