"""`recsys models`: the static registry index matches the real model classes, the command prints one row per model
with what it needs from the data without importing torch, and a reader that closes the pipe early
(`recsys models | head -1`) ends it quietly."""

import os
import subprocess
import sys

from conftest import REPO

from recsys.models.base import model_class, model_names
from recsys.models.index import COLUMNS, INDEX, Requirements, needs, table


def _env():
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_index_is_the_registry():
    assert [e.name for e in INDEX] == model_names()
    for entry in INDEX:
        cls = model_class(entry.name)
        assert cls.__module__ == f"recsys.models.{entry.module}", entry.name
        assert cls.__name__ == entry.cls, entry.name
        assert cls.requirements == entry.requirements, entry.name


def test_every_name_has_its_own_one_line_description():
    summaries = [e.summary for e in INDEX]
    assert len(set(summaries)) == len(summaries)
    # names sharing a module (dcn/dcn_mts, ssim/ssim_search, cbmr/multicbmr) are told apart
    assert all("\n" not in s and 20 <= len(s) <= 80 for s in summaries)


def test_needs_cells_name_each_requirement():
    assert needs(Requirements()) == (">= 1", "-", "-", "-", "-")
    assert needs(Requirements(min_tasks=2, funnel=True, scenario=True, user=True, time=True)) == (
        ">= 2", "yes", ">= 2", "yes", "yes")


def test_models_command_prints_the_table_without_importing_torch():
    code = ("import sys; from recsys.cli import main; rc = main(['models']); "
            "sys.stdout.flush(); sys.exit(rc if 'torch' not in sys.modules else 99)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == table() + "\n"
    lines = proc.stdout.splitlines()
    assert lines[0].split() == list(COLUMNS)
    rows = {line.split()[0]: line for line in lines[1:]}
    assert list(rows) == [e.name for e in INDEX]
    # the columns line up under the header
    start = lines[0].index("scenarios")
    assert rows["dcn_mts"][start:start + 4] == ">= 2" and rows["dcn"][start] == "-"
    funnel = lines[0].index("funnel")
    assert rows["esmm"][funnel:funnel + 3] == "yes" and rows["mmoe"][funnel] == "-"
    assert rows["esmm"].split()[1:3] == [">=", "2"]
    assert rows["ssim"].rstrip().endswith(next(e.summary for e in INDEX if e.name == "ssim"))


def test_models_into_a_closed_pipe_exits_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    try:
        proc = subprocess.run([sys.executable, "-m", "recsys", "models"], cwd=REPO, env=_env(), stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.stderr == ""
    assert proc.returncode == 141  # 128 + SIGPIPE, as a Unix tool ends


def test_models_piped_into_head_prints_the_header_only():
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m recsys models | head -1"], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.split() == list(COLUMNS)
