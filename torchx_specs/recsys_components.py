"""TorchX components for recsys: ``train``, ``evaluate`` and ``benchmark``, each a ``torchx.components.dist.ddp``
job (torchrun under torchelastic) running ``python -m recsys ...`` or ``python -m benchmarks.throughput``.

Positional arguments after the options are config overrides (``key=value``, passed as ``--set``)::

    torchx run -s local_cwd torchx_specs/recsys_components.py:train --config configs/wide_deep_synthetic.yaml \\
        -j 1x2 --run_dir runs/wd2 train.epochs=2 data.batch_size=1024
    torchx run -s local_cwd torchx_specs/recsys_components.py:evaluate --config configs/wide_deep_synthetic.yaml \\
        -j 1x1 --run_dir runs/wd2 --out runs/wd2/eval-1rank.json
    torchx run --workspace "" -s kubernetes -cfg queue=default torchx_specs/recsys_components.py:train \\
        --config configs/wide_deep_synthetic.yaml -j 2x8 --gpu 8 --cpu 64 --memMB 400000 \\
        --image ghcr.io/you/recsys:latest --run_dir /mnt/shared/runs/wd --max_retries 2

``--workspace ""`` runs the image as built (see the repository's Dockerfile); without it torchx builds a patched
image from the working tree, which needs a docker daemon and ``-cfg image_repo=...`` to push to.

``max_retries`` > 0 makes the job elastic: torchelastic restarts every worker when one dies (up to that many
times, ``PET_MAX_RESTARTS``) and the trainer resumes from the newest checkpoint of ``run_dir``; schedulers that
restart whole replicas (Kubernetes/Volcano, Slurm requeue) get the same number of retries, and ``train`` then
passes ``--resume auto`` so a retried replica also resumes. ``run_dir`` must be on storage every node sees.
On Kubernetes the replica retries are Volcano's: a failed or evicted pod restarts the whole job (``RestartJob``,
job ``maxRetry``); torchx warns about them whenever ``max_retries`` > 0 because Volcano before 1.4 deleted the
failed pods, and their logs, on the last retry (volcano-sh/volcano#1651) and before 1.5 left the other pods
running after it (#1718). With Volcano >= 1.5 the warning does not apply; on older clusters use
``--max_retries 0`` (no restarts at all) or accept that the last attempt's logs may be gone.

TensorBoard is torchx's builtin ``metrics.tensorboard`` component (see README, "Distributed training").
"""

from typing import Dict, List, Optional

import torchx
import torchx.specs as specs
from torchx.components.dist import ddp


def _job(
    module: str,
    args: List[str],
    name: str,
    j: str,
    cpu: int,
    gpu: int,
    memMB: int,
    h: Optional[str],
    max_retries: int,
    image: str,
    env: Optional[Dict[str, str]],
    mounts: Optional[List[str]],
    rdzv_port: int,
) -> specs.AppDef:
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    job_env = dict(env or {})
    # torchrun reads its options from PET_* variables: worker restarts by torchelastic itself
    job_env.setdefault("PET_MAX_RESTARTS", str(max_retries))
    # after a restart, workers sharing the rendezvous TCPStore may read the previous attempt's peer addresses
    # (pytorch/pytorch#135712: gloo/NCCL connect to the dead worker's port); a fresh store per attempt avoids it
    job_env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    job_env.setdefault("PYTHONUNBUFFERED", "1")
    return ddp(
        *args,
        m=module,
        image=image,
        name=name,
        h=h,
        cpu=cpu,
        gpu=gpu,
        memMB=memMB,
        j=j,
        env=job_env,
        max_retries=max_retries,
        rdzv_port=rdzv_port,
        mounts=mounts,
    )


def _run_args(config: str, overrides: List[str], data: Optional[str], run_dir: Optional[str]) -> List[str]:
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"config override '{item}' is not of the form key=value")
    args = ["-c", config]
    for item in overrides:
        args += ["--set", item]
    if data:
        args += ["--data", data]
    if run_dir:
        args += ["--run-dir", run_dir]
    return args


def train(
    *overrides: str,
    config: str,
    data: Optional[str] = None,
    run_dir: Optional[str] = None,
    resume: bool = False,
    j: str = "1x2",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    max_retries: int = 0,
    image: str = torchx.IMAGE,
    name: str = "recsys-train",
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Train a config with DistributedModelParallel on nnodes x nproc_per_node ranks (``recsys train``).

    Args:
        overrides: config overrides ``key=value`` (each becomes ``--set key=value``)
        config: run config YAML, relative to the job's working directory (the repository for local_cwd)
        data: data root (overrides the dataset spec's root)
        run_dir: run folder (checkpoints, TensorBoard events under tb/<run name>/, plan.txt, metrics.json); must be
            shared by all nodes
        resume: continue from the newest checkpoint of run_dir (it must exist)
        j: {nnodes}x{nproc_per_node}, e.g. 1x2 (2 CPU processes) or 4x8 (32 GPUs)
        cpu: CPUs per node
        gpu: GPUs per node (0: gloo on CPU; otherwise NCCL, one rank per GPU)
        memMB: host memory per node in MB
        h: a named resource of the scheduler (overrides cpu, gpu and memMB)
        max_retries: restarts after a worker or node failure; each resumes from the newest checkpoint
        image: container image with recsys installed (kubernetes); ignored by local_cwd and slurm
        name: job name
        env: extra environment variables, e.g. NCCL_DEBUG=INFO
        mounts: volume mounts (kubernetes), e.g. type=volume,src=runs-pvc,dst=/mnt/shared
        rdzv_port: rendezvous port on the first node (multi-node jobs)
    """
    args = ["train"] + _run_args(config, list(overrides), data, run_dir)
    if resume:
        args += ["--resume"]
    elif max_retries > 0:
        args += ["--resume", "auto"]
    return _job("recsys", args, name, j, cpu, gpu, memMB, h, max_retries, image, env, mounts, rdzv_port)


def evaluate(
    *overrides: str,
    config: str,
    data: Optional[str] = None,
    run_dir: Optional[str] = None,
    checkpoint: str = "best",
    split: str = "test",
    out: Optional[str] = None,
    j: str = "1x1",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    max_retries: int = 0,
    image: str = torchx.IMAGE,
    name: str = "recsys-eval",
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Evaluate a checkpoint of a run (``recsys eval``), on any number of ranks (DCP reshards the tables).

    Args:
        overrides: config overrides ``key=value`` (each becomes ``--set key=value``)
        config: run config YAML
        data: data root (overrides the dataset spec's root)
        run_dir: the trained run's folder
        checkpoint: best, latest or a checkpoint folder
        split: train, valid or test
        out: also write the metric report as JSON to this path
        j: {nnodes}x{nproc_per_node}
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: host memory per node in MB
        h: a named resource of the scheduler (overrides cpu, gpu and memMB)
        max_retries: restarts after a failure
        image: container image with recsys installed (kubernetes)
        name: job name
        env: extra environment variables
        mounts: volume mounts (kubernetes)
        rdzv_port: rendezvous port on the first node (multi-node jobs)
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be train, valid or test, got '{split}'")
    args = ["eval"] + _run_args(config, list(overrides), data, run_dir)
    args += ["--checkpoint", checkpoint, "--split", split]
    if out:
        args += ["--out", out]
    return _job("recsys", args, name, j, cpu, gpu, memMB, h, max_retries, image, env, mounts, rdzv_port)


def benchmark(
    *args: str,
    j: str = "1x1",
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    h: Optional[str] = None,
    image: str = torchx.IMAGE,
    name: str = "recsys-benchmark",
    env: Optional[Dict[str, str]] = None,
    mounts: Optional[List[str]] = None,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Run the throughput benchmark (``python -m benchmarks.throughput ARGS``) on nnodes x nproc_per_node ranks.

    Every rank runs the same command; the console shows local rank 0's output only (``PET_LOCAL_RANKS_FILTER=0``;
    ``--env PET_LOCAL_RANKS_FILTER=1`` shows rank 1's instead); every rank's output still goes to torchrun's
    per-rank log files (for local_cwd under its ``log_dir``, e.g. runs/torchx/<job>/torchelastic/).

    Args:
        args: arguments of benchmarks.throughput (see its --help)
        j: {nnodes}x{nproc_per_node}
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: host memory per node in MB
        h: a named resource of the scheduler (overrides cpu, gpu and memMB)
        image: container image with recsys installed (kubernetes)
        name: job name
        env: extra environment variables
        mounts: volume mounts (kubernetes)
        rdzv_port: rendezvous port on the first node (multi-node jobs)
    """
    # every rank prints the same report (and `-- --help` the same usage): one copy on the console
    job_env = dict(env or {})
    job_env.setdefault("PET_LOCAL_RANKS_FILTER", "0")
    return _job("benchmarks.throughput", list(args), name, j, cpu, gpu, memMB, h, 0, image, job_env, mounts, rdzv_port)
