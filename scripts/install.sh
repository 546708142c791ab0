#!/usr/bin/env bash
# Create (or update) a virtual environment with the pinned TorchRec stack and recsys installed editable.
#   scripts/install.sh [VENV]        (default .venv)
#   PINS=scripts/requirements-torchrec1.6.txt scripts/install.sh .venv-torchrec1.6   (the older supported stack)
# CPU machines get fbgemm-gpu-cpu; machines where nvidia-smi lists a GPU get the CUDA fbgemm-gpu of the same
# version. FBGEMM_VARIANT=cpu|cuda chooses instead of nvidia-smi (auto, the default), e.g. in a docker build, which
# sees no GPU (see Dockerfile). Versions come from the pin file only (PINS, default scripts/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
python=${PYTHON:-python3}
pins=${PINS:-scripts/requirements.txt}

pin() { grep -E "^$1==" "$pins" | head -n 1; }
version() { pin "$1" | cut -d= -f3; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

variant=${FBGEMM_VARIANT:-auto}
case "$variant" in
  auto)
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      variant=cuda
      echo "install: GPU found"
    else
      variant=cpu
    fi ;;
  cpu|cuda) ;;
  *) echo "install: FBGEMM_VARIANT must be cpu, cuda or auto, got '$variant'" >&2; exit 2 ;;
esac
if [ "$variant" = cuda ]; then
  fbgemm="fbgemm-gpu==$(version fbgemm-gpu-cpu)"
  echo "install: using $fbgemm (CUDA)"
else
  fbgemm="$(pin fbgemm-gpu-cpu)"
fi
"${pip[@]}" install -q "$(pin torch)" "$fbgemm"
"${pip[@]}" install -q --no-deps "$(pin torchrec)"
rest=$(mktemp)
trap 'rm -f "$rest"' EXIT
grep -vE '^(#|$|torch==|fbgemm-gpu|torchrec==)' "$pins" > "$rest"
# torch and fbgemm repeated so that no other pin can make pip swap them: the pairing is strict
"${pip[@]}" install -q -r "$rest" "$(pin torch)" "$fbgemm"
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
"$venv/bin/python" - "$(version torch)" "$(version torchrec)" <<'PY'
import sys
from importlib.metadata import version
import torch, fbgemm_gpu, torchrec, recsys
want_torch, want_torchrec = sys.argv[1:]
if torch.__version__.split("+")[0] != want_torch or version("torchrec") != want_torchrec:
    sys.exit(f"install: got torch {torch.__version__} / torchrec {version('torchrec')}, "
             f"the pins say {want_torch} / {want_torchrec}")
print(f"install: torch {torch.__version__}, fbgemm_gpu {fbgemm_gpu.__version__}, torchrec {version('torchrec')}, "
      f"recsys {recsys.__version__}")
PY
