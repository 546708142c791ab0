"""``recsys prepare``: check a downloaded public data set (no network access) and write a run config pointing at it.

Example::

    recsys prepare movielens-100k ~/Downloads/ml-100k.zip      # or the folder it was extracted to
    recsys train -c movielens-100k.yaml

The archive (``.zip``) is extracted next to itself; a folder is used where it is. Every problem is one line
naming the folder or file (missing files, a file that is not in the published layout).
"""

import os
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import yaml

from recsys.config import absolutize_paths, read_yaml
from recsys.data.reader import count_lines
from recsys.errors import ConfigError, DataError
from recsys.io import write_text_atomic

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


@dataclass(frozen=True)
class Download:
    """A public data set as its publisher ships it.

    Args:
        title: its name in messages.
        url: where to download the archive.
        folder: the folder the archive extracts to.
        files: the files of the folder a spec reads, with the delimiter and number of fields of their lines.
        ratings: the file whose lines are counted in the summary.
        config: the shipped run config (under ``configs/``) the written config starts from.
    """

    title: str
    url: str
    folder: str
    files: Tuple[Tuple[str, str, int], ...]
    ratings: str
    config: str


DOWNLOADS: Dict[str, Download] = {
    "movielens-100k": Download(
        "MovieLens-100K",
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "ml-100k",
        (("u.data", "\t", 4), ("u.user", "|", 5), ("u.item", "|", 24)),
        "u.data",
        "wide_deep_movielens.yaml",
    ),
    "movielens-1m": Download(
        "MovieLens-1M",
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "ml-1m",
        (("ratings.dat", "::", 4), ("users.dat", "::", 5), ("movies.dat", "::", 3)),
        "ratings.dat",
        "movielens-1m.yaml",
    ),
}


def _extract(archive: str, folder: str) -> str:
    """Extract a zip archive next to itself (members may not leave that folder); the data set's folder."""
    target = os.path.dirname(os.path.abspath(archive))
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                resolved = os.path.abspath(os.path.join(target, member))
                if not resolved.startswith(target + os.sep):
                    raise DataError(f"archive member {member!r} would be written outside {target}", file=archive)
            z.extractall(target)
    except zipfile.BadZipFile:
        raise DataError("not a readable zip archive (download it again)", file=archive) from None
    return os.path.join(target, folder)


def _first_line(path: str, encoding: str = "latin-1") -> str:
    with open(path, encoding=encoding) as f:
        return f.readline().rstrip("\r\n")


def check_folder(name: str, path: str) -> Tuple[str, int]:
    """The data set's folder (``path``, its extracted archive, or the published folder inside it) once every
    file is there in its published layout, and the number of ratings."""
    if name not in DOWNLOADS:
        raise ConfigError(f"prepare: unknown data set '{name}' (one of {', '.join(DOWNLOADS)})")
    d = DOWNLOADS[name]
    if os.path.isfile(path) and path.lower().endswith(".zip"):
        path = _extract(path, d.folder)
    if not os.path.isdir(path):
        raise DataError(
            f"no such folder (download {d.url} and give the archive or the folder it extracts to)", file=path
        )
    if not os.path.exists(os.path.join(path, d.files[0][0])) and os.path.isdir(os.path.join(path, d.folder)):
        path = os.path.join(path, d.folder)
    missing = [f for f, _, _ in d.files if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise DataError(
            f"not a {d.title} folder: missing {', '.join(missing)} (download {d.url} and extract it)", file=path
        )
    for file, delimiter, fields in d.files:
        line = _first_line(os.path.join(path, file))
        if len(line.split(delimiter)) != fields:
            raise DataError(
                f"expected {fields} fields separated by {delimiter!r} as in {d.folder}.zip, got {line[:60]!r}",
                file=os.path.join(path, file),
                row=1,
            )
    return os.path.abspath(path), count_lines(os.path.join(path, d.ratings)) or 0


def write_config(name: str, folder: str, out: str, overwrite: bool = False) -> None:
    """Write the shipped run config of ``name`` to ``out`` with its data at ``folder`` (paths absolute, the
    run folder ``runs/<name>`` beside ``out``)."""
    if os.path.exists(out) and not overwrite:
        raise ConfigError(f"{out}: exists (give --overwrite to replace it, or --out another file)")
    d = DOWNLOADS[name]
    shipped = os.path.join(CONFIGS, d.config)
    if not os.path.isfile(shipped):
        raise ConfigError(f"{shipped}: the shipped run config is not there (prepare needs a source checkout)")
    data = absolutize_paths(read_yaml(shipped), CONFIGS)
    data.setdefault("data", {})["path"] = folder
    data["run_dir"] = os.path.join("runs", name)
    header = (
        f"# Written by `recsys prepare {name} {folder}`: {d.config} with the data at {folder}.\n"
        f"# Paths here are relative to this file (see docs/datasets.md).\n"
    )
    write_text_atomic(out, header + yaml.safe_dump(data, sort_keys=False))


def prepare(name: str, path: str, out: Optional[str] = None, overwrite: bool = False) -> Tuple[str, str, int]:
    """Check the data set ``name`` at ``path`` and write its run config (default ``<name>.yaml`` in the current
    folder); (the data folder, the config written, the number of ratings)."""
    folder, ratings = check_folder(name, path)
    out = os.path.abspath(out or f"{name}.yaml")
    write_config(name, folder, out, overwrite)
    return folder, out, ratings


def names() -> List[str]:
    return list(DOWNLOADS)
