"""TorchX components: linted specs, a real ``torchx run -s local_cwd`` job on 1x2 CPU processes, evaluation of its
sharded checkpoint on 1 process, and (slow) an elastic restart after a worker is SIGKILLed."""

import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pytest
from conftest import REPO

COMPONENTS = os.path.join(REPO, "torchx_specs", "recsys_components.py")
BIN = os.path.dirname(sys.executable)


def torchx_env() -> Dict[str, str]:
    # torchx's dist.ddp launches `torchrun`: the environment's bin folder must be on PATH
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1")


def torchx_cmd(component: str, args: List[str], log_dir: str) -> List[str]:
    return [os.path.join(BIN, "torchx"), "run", "-s", "local_cwd", "-cfg", f"log_dir={log_dir}",
            f"torchx_specs/recsys_components.py:{component}", *args]


def run_torchx(component: str, args: List[str], log_dir: str, timeout: int = 600) -> str:
    proc = subprocess.run(torchx_cmd(component, args, log_dir), cwd=REPO, env=torchx_env(), capture_output=True,
                          text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SUCCEEDED" in out, f"torchx {component} failed:\n{out[-8000:]}"
    return out


def test_components_pass_the_torchx_linter():
    from torchx.specs.file_linter import validate

    for name in ("train", "evaluate", "benchmark"):
        assert validate(COMPONENTS, name) == [], name


def _load_components():
    import importlib.util

    spec = importlib.util.spec_from_file_location("recsys_components", COMPONENTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_components_wrap_ddp_with_overrides_resources_and_retries():
    comps = _load_components()
    app = comps.train("train.epochs=2", "model.params={hidden: [64, 32]}", config="configs/x.yaml",
                      run_dir="/mnt/runs/x", j="2x8", gpu=8, cpu=32, memMB=100000, max_retries=3)
    role = app.roles[0]
    cmd = role.args[-1]
    assert cmd.startswith("torchrun ") and "--nnodes 2 --nproc_per_node 8" in cmd
    assert ("-m recsys train -c configs/x.yaml --set train.epochs=2 --set 'model.params={hidden: [64, 32]}' "
            "--run-dir /mnt/runs/x --resume auto") in cmd
    assert role.num_replicas == 2 and role.max_retries == 3 and role.env["PET_MAX_RESTARTS"] == "3"
    assert role.resource.gpu == 8 and role.resource.cpu == 32 and role.resource.memMB == 100000
    plain = comps.train(config="c.yaml").roles[0]
    assert "--resume" not in plain.args[-1] and plain.env["PET_MAX_RESTARTS"] == "0"
    ev = comps.evaluate("data.batch_size=512", config="c.yaml", run_dir="r", checkpoint="latest", out="e.json")
    assert "-m recsys eval -c c.yaml --set data.batch_size=512 --run-dir r --checkpoint latest --split test " \
           "--out e.json" in ev.roles[0].args[-1]
    bench = comps.benchmark("--model", "wide_deep", j="1x2")
    assert "-m benchmarks.throughput --model wide_deep" in bench.roles[0].args[-1]
    with pytest.raises(ValueError, match="'epochs' is not of the form key=value"):
        comps.train("epochs", config="c.yaml")
    with pytest.raises(ValueError, match="split must be"):
        comps.evaluate(config="c.yaml", split="dev")


def _rows(report: dict) -> int:
    return int(report["rows"])


def test_local_cwd_train_on_2_ranks_then_evaluate_on_1_rank(tmp_path, tiny_world):
    run = str(tmp_path / "run")
    logs = str(tmp_path / "logs")
    common = ["--config", "configs/wide_deep_synthetic.yaml", "--data", tiny_world, "--run_dir", run]
    # streamed (not in memory) in small chunks: the ranks' shares differ, and every rank still runs the same
    # number of steps (training) and batches (evaluation, padded)
    overrides = ["train.epochs=1", "data.batch_size=256", "train.progress=false", "model.embedding_dim=8",
                 "data.in_memory=false", "data.chunk_rows=700", "model.params={hidden: [32]}"]
    run_torchx("train", ["-j", "1x2"] + common + overrides, logs)
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["steps"] > 0 and metrics["test"]["ctr/auc"] > 0.5
    from recsys.train.board import event_dir

    events = [f for f in os.listdir(event_dir(run)) if f.startswith("events")]
    assert events
    ckpts = sorted(d for d in os.listdir(os.path.join(run, "checkpoints")) if d.startswith("step-"))
    files = set(os.listdir(os.path.join(run, "checkpoints", ckpts[-1])))
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "COMPLETE"} <= files  # one shard file per rank

    out = str(tmp_path / "eval-1rank.json")
    run_torchx("evaluate", ["-j", "1x1", "--out", out] + common + overrides, logs)
    one = json.load(open(out))
    two = metrics["test"]
    assert _rows(one) == _rows(two)
    for key in ("ctr/auc", "cvr/auc", "stay/auc", "ctr/gauc", "cvr/ctcvr_auc"):
        assert one[key] == pytest.approx(two[key], abs=1e-12), key


def _worker_pids(root: int) -> Dict[int, Dict[str, str]]:
    """Descendants of ``root`` that are torchelastic workers, with their RANK and TORCHELASTIC_RESTART_COUNT."""
    children: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: Dict[int, Dict[str, str]] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            stack.append(child)
            try:
                with open(f"/proc/{child}/environ", "rb") as f:
                    env = dict(kv.split("=", 1) for kv in f.read().decode(errors="replace").split("\0") if "=" in kv)
            except OSError:
                continue
            if "TORCHELASTIC_RESTART_COUNT" in env and "RANK" in env and "LOCAL_RANK" in env:
                found[child] = {k: env[k] for k in ("RANK", "TORCHELASTIC_RESTART_COUNT")}
    return found


def _latest_step(run: str) -> Optional[int]:
    folder = os.path.join(run, "checkpoints")
    if not os.path.isdir(folder):
        return None
    steps = [int(d.split("-")[1]) for d in os.listdir(folder)
             if d.startswith("step-") and not d.endswith(".tmp")
             and os.path.exists(os.path.join(folder, d, "COMPLETE"))]
    return max(steps) if steps else None


@pytest.mark.slow
def test_sigkilled_worker_restarts_and_resumes_to_the_uninterrupted_result(tmp_path, tiny_world):
    logs = str(tmp_path / "logs")
    overrides = ["train.epochs=3", "data.batch_size=64", "train.progress=false", "model.embedding_dim=8",
                 "train.checkpoint_every_steps=10", "train.keep_checkpoints=3", "model.params={hidden: [32]}",
                 "train.early_stopping.patience=100"]

    def args(run: str) -> List[str]:
        return ["-j", "1x2", "--max_retries", "1", "--config", "configs/wide_deep_synthetic.yaml",
                "--data", tiny_world, "--run_dir", run] + overrides

    straight = str(tmp_path / "straight")
    run_torchx("train", args(straight), logs)

    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(torchx_cmd("train", args(killed), logs), cwd=REPO, env=torchx_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.time() + 300
        while victim is None and time.time() < deadline and proc.poll() is None:
            step = _latest_step(killed)
            if step is not None and step >= 10:
                workers = _worker_pids(proc.pid)
                first = [p for p, e in workers.items() if e["RANK"] == "1" and e["TORCHELASTIC_RESTART_COUNT"] == "0"]
                if first:
                    victim = first[0]
                    os.kill(victim, signal.SIGKILL)
                    break
            time.sleep(0.1)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "no checkpoint appeared before the job ended; nothing was killed"
    assert proc.returncode == 0 and "SUCCEEDED" in out, out[-8000:]
    assert "torchelastic restart 1: resumed from" in out, out[-8000:]

    a = json.load(open(os.path.join(straight, "metrics.json")))
    b = json.load(open(os.path.join(killed, "metrics.json")))
    assert a["steps"] == b["steps"] and a["best_step"] == b["best_step"]
    # resume restores weights, optimizer state, data position and RNG: on CPU the result is bitwise the same
    for split in ("valid", "test"):
        for key in ("ctr/auc", "ctr/logloss", "cvr/auc", "stay/rmse"):
            assert b[split][key] == a[split][key], (split, key)
    assert a["history"] == b["history"]


def _readme_command(first_words: str) -> List[str]:
    """The README's shell command starting with ``first_words``, continuation lines joined, as argv."""
    import shlex

    lines = open(os.path.join(REPO, "README.md")).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first_words))
    command = ""
    for line in lines[start:]:
        command += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(command)


def test_readme_kubernetes_command_dry_runs_as_documented():
    """The README's Kubernetes launch, with --dryrun after `run` as the README says: no docker daemon, no cluster."""
    pytest.importorskip("kubernetes", reason="the Kubernetes client is opt-in: make install-k8s")
    argv = _readme_command("torchx run --workspace \"\" -s kubernetes")
    assert argv[:4] == ["torchx", "run", "--workspace", ""]
    proc = subprocess.run([os.path.join(BIN, "torchx"), "run", "--dryrun"] + argv[2:], cwd=REPO, env=torchx_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    request = proc.stdout.split("=== SCHEDULER REQUEST ===", 1)[1]
    assert "kind: Job" in request and "schedulerName: volcano" in request
    assert request.count("image: registry.example.com/recsys:latest") == 2  # one task per node
    assert "maxRetry: 2" in request and "event: PodFailed" in request
    assert "--nnodes 2 --nproc_per_node 8" in request and "--resume" in request and "auto" in request
    assert "claimName: recsys-shared" in request and "nvidia.com/gpu: '8'" in request


def test_benchmark_component_shows_one_ranks_output():
    bench = _load_components().benchmark("--quick", j="1x2")
    assert bench.roles[0].env["PET_LOCAL_RANKS_FILTER"] == "0"
    assert _load_components().benchmark(env={"PET_LOCAL_RANKS_FILTER": "1"}).roles[0].env[
        "PET_LOCAL_RANKS_FILTER"] == "1"


def test_benchmark_help_under_torchx_prints_once(tmp_path):
    """README: `torchx run -s local_cwd ...:benchmark -j 1x2 -- --help` shows the usage once, not once per rank."""
    proc = subprocess.run(torchx_cmd("benchmark", ["-j", "1x2", "--", "--help"], str(tmp_path / "logs")), cwd=REPO,
                          env=torchx_env(), capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "SUCCEEDED" in out, out[-4000:]
    assert out.count("usage: python -m benchmarks.throughput") == 1, out[-4000:]
