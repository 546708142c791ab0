"""What every benchmark result records: the machine, the library versions and the exact command; plus atomic
writing of JSON and markdown results."""

import datetime
import os
import platform
import shlex
import sys
from typing import Any, Dict

from recsys.io import write_json_atomic, write_text_atomic

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def environment() -> Dict[str, Any]:
    from importlib.metadata import version

    import fbgemm_gpu
    import torch
    import torchrec  # noqa: F401

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), "-m"] + _module_argv()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fbgemm_gpu": fbgemm_gpu.__version__,
        "torchrec": version("torchrec"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return env


def _module_argv():
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else os.path.basename(sys.argv[0])
    return [name] + sys.argv[1:]


def write_json(path: str, data: Any) -> None:
    write_json_atomic(path, data)


def write_text(path: str, text: str) -> None:
    write_text_atomic(path, text)


def environment_markdown(env: Dict[str, Any]) -> str:
    return (
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, {env['threads']} torch threads)"
        + (f", GPU {env['gpu']}" if env.get("gpu") else "")
        + f"; torch {env['torch']}, fbgemm_gpu {env['fbgemm_gpu']}, torchrec {env['torchrec']}, "
        f"Python {env['python']}; {env['date']}.\n\nCommand: `{env['command']}`\n"
    )
