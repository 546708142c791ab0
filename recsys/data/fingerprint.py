"""Fingerprints of data files: name, size and modification time, to tell whether the files a fit pass read (and
counted the rows of) are still the files being read."""

import os
from typing import Any, List, Sequence

from recsys.errors import DataError

Fingerprint = List[List[Any]]  # [[absolute path, size in bytes, mtime in ns], ...]


def fingerprint(files: Sequence[str]) -> Fingerprint:
    """Name, size and modification time of every file; a file that vanishes while it is listed is left out."""
    out = []
    for f in files:
        try:
            st = os.stat(f)
        except FileNotFoundError:
            continue
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def check_unchanged(fitted: Fingerprint, now: Fingerprint) -> None:
    """The files ``now`` must be those of ``fitted``: a file deleted, changed or added since would silently shift
    every rank's share of the rows (or drop them)."""
    current = {f[0]: f for f in now}
    known = {f[0] for f in fitted}
    for entry in fitted:
        if entry[0] not in current:
            raise DataError("no such file (it vanished after the fit pass read it)", file=entry[0])
        if current[entry[0]] != list(entry):
            raise DataError(
                "changed after the fit pass read it (size or modification time); run again on data that stays put",
                file=entry[0],
            )
    for path in sorted(set(current) - known):
        raise DataError("appeared after the fit pass; run again on data that stays put", file=path)
