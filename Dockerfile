# syntax=docker/dockerfile:1
# The image a cluster runs the TorchX components in (README, "Distributed training"): this repository at
# /opt/recsys (the working directory, so configs/... resolve as on a laptop) with the pinned TorchRec stack in
# /opt/venv, installed by scripts/install.sh from scripts/requirements.txt (the pins live there only).
#
#   docker build -t registry.example.com/recsys:cpu .                            # CPU: fbgemm-gpu-cpu
#   docker build --build-arg DEVICE=cuda -t registry.example.com/recsys:cuda .   # GPU: CUDA fbgemm-gpu
#   docker push registry.example.com/recsys:cuda
#
# DEVICE chooses the FBGEMM wheel (a build sees no GPU, so install.sh cannot ask nvidia-smi). The CUDA variant
# needs no CUDA base image: the torch and fbgemm-gpu wheels bring their CUDA libraries; the nodes need the NVIDIA
# driver and container runtime. PIP_EXTRA_INDEX_URL (build arg) adds a wheel index, e.g. PyTorch's CPU-only
# wheels for a smaller CPU image (pip then takes torch 2.13.0+cpu for the torch==2.13.0 pin).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG DEVICE=cpu
ARG PIP_EXTRA_INDEX_URL=
ENV PYTHONUNBUFFERED=1
WORKDIR /opt/recsys

# what scripts/install.sh reads: itself and the pin files, the package metadata (pyproject.toml, whose readme is
# README.md) and the package (installed editable, then imported as a check); copied first so that a change to
# configs, benchmarks or docs does not reinstall the stack
COPY scripts/ scripts/
COPY pyproject.toml README.md ./
COPY recsys/ recsys/
RUN --mount=type=cache,target=/root/.cache/pip \
    FBGEMM_VARIANT="${DEVICE}" PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL}" bash scripts/install.sh /opt/venv

# the rest of the repository: configs, TorchX components, benchmarks, docs, tests (.dockerignore keeps out local
# virtual environments, data and runs)
COPY . .
ENV PATH=/opt/venv/bin:$PATH
CMD ["recsys", "--help"]
