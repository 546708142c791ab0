"""The Dockerfile builds the image the README's Kubernetes launch needs, through scripts/install.sh (no docker daemon
here, so it is checked by reading it): every file install.sh reads is copied before it runs, .dockerignore keeps
none of them out, the base Python satisfies pyproject's requires-python, DEVICE reaches install.sh's FBGEMM choice,
and that choice (run with a recording interpreter) installs the CPU or the CUDA wheel of the pinned version."""

import fnmatch
import os
import re
import shlex
import stat
import subprocess
from typing import Dict, List, Tuple

import pytest
from conftest import REPO
from packaging.specifiers import SpecifierSet


def _read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def instructions() -> List[Tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in _read("Dockerfile").splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def build_args() -> Dict[str, str]:
    return {k: v for op, arg in instructions() if op == "ARG" for k, _, v in [arg.partition("=")]}


def install_index(ops: List[Tuple[str, str]]) -> int:
    runs = [i for i, (op, arg) in enumerate(ops) if op == "RUN" and "scripts/install.sh" in arg]
    assert len(runs) == 1, runs
    return runs[0]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads(_read("pyproject.toml"))


def files_install_sh_reads() -> List[str]:
    """What scripts/install.sh opens: itself, its default pin file, and for ``pip install -e .`` the package
    metadata, the readme it names and the package folders."""
    script = _read("scripts/install.sh")
    pins = re.search(r"pins=\$\{PINS:-([^}]+)\}", script).group(1)
    assert "-e ." in script
    meta = pyproject()
    packages = [p.rstrip("*") for p in meta["tool"]["setuptools"]["packages"]["find"]["include"]]
    return ["scripts/install.sh", pins, "pyproject.toml", meta["project"]["readme"]] + packages


def copied_before(ops: List[Tuple[str, str]], index: int, workdir: str) -> List[str]:
    """Repository paths the COPY instructions before ``index`` put into ``workdir`` (sources, relative)."""
    copied = []
    for op, arg in ops[:index]:
        if op == "COPY":
            *sources, dest = shlex.split(arg)
            assert dest.rstrip("/") in (".", "./", workdir) or not dest.startswith("/"), (arg, workdir)
            copied += [s.rstrip("/") for s in sources]
    return copied


def _ignored(path: str, patterns: List[str]) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for pat in patterns for p in prefixes)


def dockerignore() -> List[str]:
    return [line.strip() for line in _read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")]


def test_base_image_python_satisfies_requires_python():
    ops = instructions()
    (base,) = [arg for op, arg in ops if op == "FROM"]
    version = build_args()["PYTHON_VERSION"]
    assert base.startswith("python:${PYTHON_VERSION}-slim"), base
    assert version in SpecifierSet(pyproject()["project"]["requires-python"])
    assert re.fullmatch(r"3\.\d+", version), "a minor version, so the image gets that line's security fixes"


def test_every_file_install_sh_reads_is_copied_before_it_runs_and_not_ignored():
    ops = instructions()
    (workdir,) = [arg for op, arg in ops if op == "WORKDIR"]
    index = install_index(ops)
    copied = copied_before(ops, index, workdir)
    ignore = dockerignore()
    for path in files_install_sh_reads():
        assert os.path.exists(os.path.join(REPO, path)), path
        assert any(path == c or path.startswith(c + "/") for c in copied), f"{path} is not copied before install.sh"
        assert not _ignored(path, ignore), f".dockerignore keeps {path} out of the image"
    # the WORKDIR comes before the copies, so install.sh's `cd "$(dirname "$0")/.."` lands in the repository
    assert [op for op, _ in ops].index("WORKDIR") < [op for op, _ in ops].index("COPY")


def test_the_whole_repository_lands_in_the_workdir_without_local_environments():
    ops = instructions()
    index = install_index(ops)
    assert ("COPY", ". .") in ops[index + 1:], "the rest of the repository (configs, torchx_specs) after the install"
    ignore = dockerignore()
    for kept in ("configs/wide_deep_synthetic.yaml", "torchx_specs/recsys_components.py", "benchmarks/throughput.py",
                 "recsys/cli.py", "scripts/requirements.txt"):
        assert not _ignored(kept, ignore), kept
    for dropped in (".venv/bin/python", ".venv-torchrec1.6/bin/python", "data/synthetic/world.json",
                    "runs/wd2/metrics.json", ".git/HEAD", "recsys/__pycache__/cli.cpython-311.pyc"):
        assert _ignored(dropped, ignore), dropped


def test_install_runs_through_install_sh_only_and_its_venv_is_on_path():
    ops = instructions()
    index = install_index(ops)
    words = shlex.split(ops[index][1].split("--mount=type=cache,target=/root/.cache/pip", 1)[-1])
    script = words.index("scripts/install.sh")
    assert words[script - 1] == "bash"
    venv = words[script + 1]
    assert 'FBGEMM_VARIANT=${DEVICE}' in ops[index][1].replace('"', "")
    # no package installed around install.sh, so the pins stay in scripts/requirements.txt
    assert not any("pip" in arg for op, arg in ops if op == "RUN" and arg is not ops[index][1])
    paths = [arg for op, arg in ops if op == "ENV" and arg.startswith("PATH=")]
    assert paths and paths[-1].startswith(f"PATH={venv}/bin:"), paths
    assert build_args()["DEVICE"] == "cpu"


def _recording_venv(tmp_path) -> Tuple[str, str]:
    """A venv whose python only records its arguments: install.sh then runs every step but installs nothing."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\ncat > /dev/null\n')
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return str(venv), str(log)


def _run_install(tmp_path, variant: str, gpu: bool) -> subprocess.CompletedProcess:
    venv, log = _recording_venv(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:  # what nvidia-smi -L answers on a GPU machine
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FBGEMM_VARIANT": variant, "HOME": str(tmp_path)}
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "install.sh"), venv], env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def _pins() -> Dict[str, str]:
    return dict(line.split("==") for line in _read("scripts/requirements.txt").splitlines()
                if line and not line.startswith("#"))


@pytest.mark.parametrize("variant,gpu,wheel", [("cpu", True, "fbgemm-gpu-cpu"), ("cuda", False, "fbgemm-gpu"),
                                               ("auto", False, "fbgemm-gpu-cpu"), ("auto", True, "fbgemm-gpu")])
def test_install_sh_installs_the_fbgemm_wheel_the_variant_asks_for(tmp_path, variant, gpu, wheel):
    proc = _run_install(tmp_path, variant, gpu)
    assert proc.returncode == 0, proc.stderr
    calls = open(tmp_path / "calls.log").read().splitlines()
    version = _pins()["fbgemm-gpu-cpu"]
    installs = [c for c in calls if " install " in c]
    # torch with the chosen wheel first, torchrec without deps, the rest with the pair repeated, then the package
    assert installs[0].endswith(f"torch=={_pins()['torch']} {wheel}=={version}"), installs[0]
    assert f"--no-deps torchrec=={_pins()['torchrec']}" in installs[1]
    assert f"{wheel}=={version}" in installs[2]
    assert installs[3].endswith("--no-deps --no-build-isolation -e .")
    other = "fbgemm-gpu==" if wheel == "fbgemm-gpu-cpu" else "fbgemm-gpu-cpu=="
    assert not any(other in c for c in installs)


def test_install_sh_refuses_an_unknown_variant(tmp_path):
    proc = _run_install(tmp_path, "rocm", False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "install: FBGEMM_VARIANT must be cpu, cuda or auto, got 'rocm'"
    assert not os.path.exists(tmp_path / "calls.log")
