"""Encoded evaluation splits cached on disk, so a streamed run decodes its validation and test rows once.

A streaming run evaluates the same rows several times (every ``eval_every_steps``, then valid and test at the
end); without a cache each pass reads and decodes the whole source again just to keep one split's rows. The first
pass over a split writes its encoded rows through to a folder of the run (:class:`SplitCache`), later passes read
them back chunk by chunk:

* one raw little-endian file per array (``packed`` single-hot ids [n, F], each multi-hot feature's values and
  lengths, dense [n, D], every label, group, oracle, history and side column...), described by ``cache.json``
  (dtypes, widths, the row layout and the key). Nothing is ever pickled; reading is ``np.fromfile`` of one
  chunk's byte range per array, so memory stays one chunk whatever the split's size (no mapping of the whole
  file, whose touched pages would count as resident).
* the cache is keyed by what its rows depend on (the data files' fingerprint, the fitted encoders' state, the
  split, the rank's share, the layout); a key that does not match (the files changed, encoders refitted) makes
  the cache stale: it is removed and rebuilt by the next pass. A pass that does not finish (an error, an
  interrupted run) leaves no cache: files are written under a temporary name and renamed at the end.

Example::

    cache = SplitCache(os.path.join(run_dir, "cache", "valid.rank0of1"), key)
    for cols in cache.chunks(lambda: dataset.stream("valid"), rows=262144): ...   # written on the 1st pass
"""

import hashlib
import json
import logging
import os
import shutil
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from recsys.data.columns import Columns, Ragged, _with_views
from recsys.data.record import RecordLayout, row_fields

log = logging.getLogger(__name__)

MANIFEST = "cache.json"
VERSION = 1


def key_digest(parts: Any) -> str:
    """A short stable digest of JSON-able ``parts`` (what a cache's rows depend on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def array_digest(arrays: List[Any]) -> str:
    """sha256 over the bytes of pyarrow arrays (vocabularies): an encoder refitted to other ids changes it."""
    h = hashlib.sha256()
    for arr in arrays:
        if arr is None:
            h.update(b"none")
            continue
        h.update(str(arr.type).encode() + str(len(arr)).encode())
        for buf in arr.buffers():
            if buf is not None:
                h.update(memoryview(buf))
    return h.hexdigest()


def _leaves(cols: Columns) -> Iterator[Tuple[str, np.ndarray]]:
    """(file name, array) of every array of packed ``cols``; multi-hot features as values and lengths."""
    yield "packed", cols.packed if cols.packed is not None else np.zeros((len(cols), 0), np.int64)
    for k, v in cols.sparse.items():
        if isinstance(v, Ragged):
            yield f"sparse.{k}.values", v.values
            yield f"sparse.{k}.lengths", v.lengths
    for name, f in row_fields(Columns):
        value = getattr(cols, name)
        if f.layout == "keyed":
            for k, a in value.items():
                yield f"{name}.{k}", a
        elif f.layout != "sparse" and value is not None:
            yield name, value


def _safe(name: str) -> str:
    """A file name for an array (keys such as ``ctr/mean`` hold a slash)."""
    return name.replace("/", "%2F") + ".bin"


class SplitCache:
    """The encoded rows of one split (of one rank) in ``folder``, written on the first pass, read on later ones.

    Args:
        folder: the cache's folder (inside the run folder).
        key: what the rows depend on (JSON-able); a cache written under another key is stale.
    """

    def __init__(self, folder: str, key: Dict[str, Any]) -> None:
        self.folder = folder
        self.key = key_digest(key)

    def _manifest(self) -> Optional[Dict[str, Any]]:
        """The manifest of a complete cache under this key, or None (absent, stale: removed, or unreadable)."""
        path = os.path.join(self.folder, MANIFEST)
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("version") != VERSION or manifest.get("key") != self.key:
            log.info("%s: cached split is stale (data or encoders changed); encoding it again", self.folder)
            shutil.rmtree(self.folder, ignore_errors=True)
            return None
        return manifest

    def ready(self) -> bool:
        """Whether a complete cache under this key is there."""
        return self._manifest() is not None

    def chunks(self, encode: Callable[[], Iterator[Columns]], rows: int) -> Iterator[Columns]:
        """The split's rows: read back in chunks of ``rows`` from a ready cache, otherwise ``encode()``'s chunks,
        written through to the cache (complete once the pass ends)."""
        manifest = self._manifest()
        if manifest is not None:
            yield from self._read(manifest, rows)
        else:
            yield from self._write_through(encode())

    # --- writing -------------------------------------------------------------------------------------------
    def _write_through(self, chunks: Iterator[Columns]) -> Iterator[Columns]:
        tmp = self.folder + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(tmp)
        except OSError as e:  # a read-only run folder: evaluate without a cache
            log.info("%s: cannot cache the split (%s)", self.folder, e)
            yield from chunks
            return
        files: Dict[str, Any] = {}
        described: Dict[str, Dict[str, Any]] = {}
        layout: Optional[RecordLayout] = None
        names: Tuple[str, ...] = ()
        total = 0
        try:
            for cols in chunks:
                cols = cols.pack()
                if layout is None:
                    layout, names = cols.layout(), cols.packed_names
                for name, arr in _leaves(cols):
                    arr = np.ascontiguousarray(arr)
                    if name not in files:
                        files[name] = open(os.path.join(tmp, _safe(name)), "wb")
                        described[name] = {"dtype": arr.dtype.newbyteorder("<").str, "width": list(arr.shape[1:])}
                    files[name].write(arr.astype(described[name]["dtype"], copy=False).tobytes())
                total += len(cols)
                yield cols
        except BaseException:
            for f in files.values():
                f.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for f in files.values():
            f.close()
        if layout is None:  # no rows: nothing worth caching
            shutil.rmtree(tmp, ignore_errors=True)
            return
        manifest = {
            "version": VERSION,
            "key": self.key,
            "rows": total,
            "arrays": described,
            "packed_names": list(names),
            "layout": {
                "keys": {k: list(v) for k, v in layout.keys.items()},
                "present": sorted(layout.present),
                "widths": layout.widths,
                "sparse": [list(s) for s in layout.sparse],
            },
        }
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f)
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(tmp, self.folder)

    # --- reading -------------------------------------------------------------------------------------------
    def _read(self, manifest: Dict[str, Any], rows: int) -> Iterator[Columns]:
        arrays = manifest["arrays"]
        lay = manifest["layout"]
        layout = RecordLayout(lay["keys"], frozenset(lay["present"]), lay["widths"], [tuple(s) for s in lay["sparse"]])
        position = {name: 0 for name, multi_hot in layout.sparse if multi_hot}  # next value of each feature
        for start in range(0, manifest["rows"], rows):
            stop = min(start + rows, manifest["rows"])

            def read(name: str, start: int = start, stop: int = stop) -> np.ndarray:
                return self._slice(name, arrays, start, stop)

            sparse: Dict[str, Any] = {}
            for name, multi_hot in layout.sparse:
                sparse[name] = None
                if multi_hot:  # chunks are read in order: each starts where the last one's values ended
                    offsets = np.zeros(stop - start + 1, dtype=np.int64)
                    np.cumsum(read(f"sparse.{name}.lengths"), out=offsets[1:])
                    lo = position[name]
                    position[name] = lo + int(offsets[-1])
                    sparse[name] = Ragged(self._slice(f"sparse.{name}.values", arrays, lo, position[name]), offsets)
            packed = read("packed")
            fields: Dict[str, Any] = {}
            for name, f in row_fields(Columns):
                if f.layout == "sparse":
                    continue
                if f.layout == "keyed":
                    fields[name] = {k: read(f"{name}.{k}") for k in layout.keys.get(name, ())}
                elif f.optional and name not in layout.present and name not in arrays:
                    fields[name] = None
                else:
                    fields[name] = read(name)
            names = tuple(manifest["packed_names"])
            yield Columns(
                sparse=_with_views(sparse, packed, names),
                packed=packed if names else None,
                packed_names=names,
                **fields,
            )

    def _slice(self, name: str, arrays: Dict[str, Any], start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of array ``name``, read from its file (no mapping kept)."""
        meta = arrays[name]
        dtype = np.dtype(meta["dtype"])
        width = int(np.prod(meta["width"])) if meta["width"] else 1
        with open(os.path.join(self.folder, _safe(name)), "rb") as f:
            f.seek(start * width * dtype.itemsize)
            out = np.fromfile(f, dtype=dtype, count=(stop - start) * width)
        if len(out) != (stop - start) * width:
            raise OSError(f"{self.folder}: cached array '{name}' is truncated")
        return out.reshape((stop - start, *meta["width"])) if meta["width"] else out
