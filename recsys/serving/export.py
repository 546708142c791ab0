"""``recsys export``: a trained run as a self-contained serving artifact.

Layout of the artifact folder (docs/serving.md describes every file and the preprocessing algorithm)::

    DIR/
        MANIFEST.json      format, model, schema, tasks and outputs, program format and why, quantisation,
                           versions, size and SHA-256 of every other file (written last)
        model.pt           the TorchScript program (model.pt2 with --format aoti: an AOTInductor package)
        features.json      how each input column becomes a model input (policies, dtypes, transforms, hash keys)
        encoders/          the run's fitted encoders, copied as they are (encoders.json, vocab.<feature>.parquet)
        runtime.py         standalone preprocessing + loading + scoring (numpy, pyarrow, torch, fbgemm_gpu)

Program formats:

* ``torchscript`` (default): the :class:`~recsys.serving.module.ServingModule` traced with torchrec's FX
  tracer and compiled with ``torch.jit.script``; loads with ``torch.jit.load`` in a process with torch and
  fbgemm_gpu (Triton's PyTorch backend, a C++ server with libtorch), for fp32, fp16 and int8 embeddings alike.
* ``aoti``: ``torch.export`` + AOTInductor, compiled ahead of time for this CPU and this torch version. fp32 only:
  torch.export cannot trace FBGEMM's quantized embedding operators on this stack (they hold an
  ``fbgemm::AtomicCounter`` without a fake implementation); compiling takes about a minute per model here.
* ``auto``: AOTInductor where it works, TorchScript otherwise; the manifest and the command's output say which
  was written and why.

Tables: a TorchScript program looks its tables up with torchrec's inference path: ``quantize_inference_model``
swaps the EmbeddingBagCollection for torchrec's quantized one, FBGEMM's table-batched inference kernel (all tables
in one call), with fp32 weights by default (the trained values, bit for bit) or, with ``--quantize fp16|int8``,
row-wise fp16 or int8 weights; dense layers stay float32.

Every artifact is checked before it is kept: the saved program is loaded back and must reproduce the eager
module's outputs on sample inputs, and the folder is written under a temporary name and renamed at the end, so a
failed export leaves nothing behind.
"""

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import asdict
from importlib import metadata
from typing import Any, Dict, List, Tuple

import torch

from recsys.data.encoding import _HASH_KEY
from recsys.data.spec import DatasetSpec
from recsys.errors import ConfigError, RecsysError
from recsys.schema import Schema
from recsys.serving import runtime
from recsys.serving.loading import InferenceRun, open_run
from recsys.serving.module import ServingModule
from recsys.serving.tracing import trace

log = logging.getLogger(__name__)

QUANTIZE = ("none", "fp16", "int8")
FORMATS = ("torchscript", "aoti", "auto")
PROGRAM_FILES = {"torchscript": "model.pt", "aoti": "model.pt2"}
CROSS_HASH_KEY = "recsys-cross-v1\0"  # the key recsys.data.dataset's ``cross`` op hashes with (a test pins it)
SAMPLE_ROWS = 8
CPU_ROW_ALIGNMENT = 1
TABLE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.qint8}
TBE_KERNEL = "FBGEMM table-batched inference kernel (torchrec's quantized EmbeddingBagCollection)"
EBC_KERNEL = "torchrec's EmbeddingBagCollection (one embedding_bag per table)"
# program vs eager module on the same inputs: float32 summation order at most (relative for regression outputs
# such as stay times in seconds, where expm1 scales the log-space error)
CHECK_ATOL = 1e-5
CHECK_RTOL = 1e-5

TORCHSCRIPT_WHY = (
    "TorchScript, the default: loads with torch.jit.load in any process with torch and fbgemm_gpu "
    "(no recsys, no torchrec), for fp32, fp16 and int8 embeddings; --format aoti compiles fp32 "
    "models ahead of time with AOTInductor"
)
AOTI_WHY = "AOTInductor (torch.export + ahead-of-time compilation for this CPU and torch {torch})"
AOTI_QUANTIZED = (
    "torch.export cannot trace FBGEMM's quantized embedding operators on this stack (they hold an "
    "fbgemm::AtomicCounter without a fake implementation)"
)


def feature_settings(spec: DatasetSpec, schema: Schema) -> Dict[str, Any]:
    """``features.json``: what turns raw columns into model inputs, from the spec (the fitted state stays in
    ``encoders/``)."""
    scenario = None
    if spec.scenario is not None:
        scenario = {
            "column": spec.scenario.column,
            "values": spec.scenario.values,
            "num": spec.scenario.num,
            "names": list(spec.scenario.display_names()),
        }
    return {
        "format": runtime.FEATURES_FORMAT,
        "sparse": [
            {
                "name": s.name,
                "column": s.source_column,
                "encoding": s.encoding,
                "dtype": s.dtype,
                "multi_hot": s.multi_hot,
                "separator": s.separator,
                "oov": s.oov,
                "group": s.group,
                "pooling": s.pooling,
                "table": schema.feature(s.name).table_name,
                "vocab": f"{runtime.ENCODERS}/vocab.{s.name}.parquet" if s.encoding == "vocab" else None,
            }
            for s in spec.sparse
        ],
        "dense": [
            {"name": d.name, "column": d.source_column, "transform": d.transform, "fill": d.fill} for d in spec.dense
        ],
        "scenario": scenario,
        "derived": [asdict(d) for d in spec.derived],
        "joins": [{"path": j.path, "on": j.on, "columns": j.columns} for j in spec.joins],
        "user_feature": spec.user,
        "hash": {
            "algorithm": "siphash-2-4 of the UTF-8 text under 'key', then the SplitMix64 finaliser "
            "(x ^= x >> 30; x *= 0xBF58476D1CE4E5B9; x ^= x >> 27; x *= 0x94D049BB133111EB; "
            "x ^= x >> 31), modulo num_embeddings; integer ids hash their decimal text",
            "key": _HASH_KEY,
            "cross_key": CROSS_HASH_KEY,
        },
    }


def sample_inputs(schema: Schema, rows: int = SAMPLE_ROWS, seed: int = 0) -> Tuple[torch.Tensor, ...]:
    """Random but valid inputs ``(dense, values, lengths, scenario)``: ids in range, 0-3 ids per row of a
    multi-hot feature."""
    g = torch.Generator().manual_seed(seed)
    values, lengths = [], []
    for f in schema.sparse:
        n = torch.randint(0, 4, (rows,), generator=g) if f.multi_hot else torch.ones(rows, dtype=torch.int64)
        lengths.append(n.to(torch.int32))
        values.append(torch.randint(0, f.num_embeddings, (int(n.sum()),), generator=g))
    return (
        torch.randn(rows, schema.dense_dim, generator=g),
        torch.cat(values),
        torch.cat(lengths),
        torch.randint(0, schema.num_scenarios, (rows,), generator=g),
    )


def inference_tables(module: ServingModule, weights: str) -> ServingModule:
    """``module`` with its EmbeddingBagCollection swapped (in place) for torchrec's inference one: every table in
    FBGEMM's table-batched inference kernel, weights ``fp32``, ``fp16`` or row-wise ``int8`` (one kernel call
    for all tables, where the training module's unsharded EBC looks tables up one by one).

    Rows are packed without padding (FBGEMM's own CPU default; torchrec pads every row to 16 bytes for GPUs,
    which would make a 16-wide int8 row, 16 bytes plus a 4-byte scale and bias, take 32 bytes)."""
    from torchrec.inference.modules import quantize_inference_model
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment

    quant_prep_customize_row_alignment(module, [EmbeddingBagCollection], CPU_ROW_ALIGNMENT)
    return quantize_inference_model(module, quantization_dtype=TABLE_DTYPES[weights])


def _torchscript(module: ServingModule, leaves: List[str], path: str) -> None:
    graph, _ = trace(module, leaves)
    torch.jit.script(graph).save(path)


def _aoti(module: ServingModule, sample: Tuple[torch.Tensor, ...], path: str) -> None:
    """torch.export with a dynamic batch size and id count, then AOTInductor into a .pt2 package."""
    from torch._inductor import aoti_compile_and_package

    features = len(module.keys)
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    ids = torch.export.Dim("ids", min=1, max=1 << 31)
    dynamic = {"dense": {0: batch}, "values": {0: ids}, "lengths": {0: features * batch}, "scenario": {0: batch}}
    with torch.no_grad():
        program = torch.export.export(module, sample, dynamic_shapes=dynamic, strict=False)
    aoti_compile_and_package(program, package_path=path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def write_program(
    module: ServingModule, quantize: str, program_format: str, folder: str, sample: Tuple[torch.Tensor, ...]
) -> Dict[str, Any]:
    """Compile ``module`` (tables quantized as asked) into ``folder``; returns the manifest's program entry."""
    if program_format == "aoti" and quantize != "none":
        raise ConfigError(
            f"export: --format aoti with --quantize {quantize}: {AOTI_QUANTIZED}; use --format torchscript (or auto)"
        )
    weights = "fp32" if quantize == "none" else quantize
    # submodules FX cannot trace are found on the float module: quantized ones cache state on a failed trace
    _, leaves = trace(module)
    with torch.no_grad():
        reference = module(*sample)  # the model as trained: an fp32 program must reproduce it
    chosen, why, kernel = "torchscript", TORCHSCRIPT_WHY, TBE_KERNEL
    if program_format in ("aoti", "auto"):
        if quantize != "none":
            why = f"TorchScript: AOTInductor is not available for {quantize} embeddings ({AOTI_QUANTIZED})"
        else:
            try:  # torch.export cannot trace the inference kernel either: AOTInductor gets the training EBC
                _aoti(module, sample, os.path.join(folder, PROGRAM_FILES["aoti"]))
                chosen, why, kernel = "aoti", AOTI_WHY.format(torch=torch.__version__), EBC_KERNEL
            except Exception as e:  # torch.export / Inductor failures have many types; one line says which
                if program_format == "aoti":
                    raise RecsysError(
                        f"export: AOTInductor failed for this model ({type(e).__name__}: "
                        f"{_first_line(e)}); use --format torchscript"
                    ) from None
                why = f"TorchScript: AOTInductor failed for this model ({type(e).__name__}: {_first_line(e)})"
    expected = reference
    if chosen == "torchscript":
        module = inference_tables(module, weights)
        with torch.no_grad():  # eager first: torchrec's quantized modules cache the feature order on first call
            quantized = module(*sample)
        expected = reference if weights == "fp32" else quantized
        _torchscript(module, leaves, os.path.join(folder, PROGRAM_FILES[chosen]))
    check_program(os.path.join(folder, PROGRAM_FILES[chosen]), chosen, sample, expected)
    return {
        "file": PROGRAM_FILES[chosen],
        "format": chosen,
        "why": why,
        "quantize": quantize,
        "tables": {"weights": weights, "kernel": kernel},
        "outputs": module.output_names,
        "traced_whole": leaves,
    }


def check_program(
    file: str, program_format: str, sample: Tuple[torch.Tensor, ...], expected: Dict[str, torch.Tensor]
) -> None:
    """The saved program, loaded back, must give the eager module's outputs (``expected``) on ``sample``."""
    program = runtime.load_program(file, program_format)
    with torch.no_grad():
        got = program(*sample)
    for name, value in expected.items():
        excess = (got[name] - value).abs() - CHECK_RTOL * value.abs()
        worst = float(excess.max()) if value.numel() else 0.0
        if not worst <= CHECK_ATOL:
            diff = float((got[name] - value).abs().max())
            raise RecsysError(
                f"export: the {program_format} program's output '{name}' differs from the model's "
                f"by {diff:.3g} on sample inputs (limit {CHECK_ATOL} + {CHECK_RTOL} x |value|); "
                "please report this model"
            )


def versions() -> Dict[str, str]:
    """Versions of what built the artifact."""
    import recsys

    out = {"recsys": recsys.__version__, "python": platform.python_version()}
    for name, dist in (("torch", "torch"), ("torchrec", "torchrec"), ("numpy", "numpy"), ("pyarrow", "pyarrow")):
        out[name] = metadata.version(dist)
    out["torch"] = torch.__version__
    import fbgemm_gpu

    out["fbgemm_gpu"] = getattr(fbgemm_gpu, "__version__", "unknown")
    return out


def schema_entry(schema: Schema) -> Dict[str, Any]:
    return {
        "sparse": [
            {
                "name": f.name,
                "num_embeddings": f.num_embeddings,
                "embedding_dim": f.embedding_dim,
                "group": f.group,
                "multi_hot": f.multi_hot,
                "pooling": f.pooling,
                "table": f.table_name,
            }
            for f in schema.sparse
        ],
        "dense": [d.name for d in schema.dense],
        "num_scenarios": schema.num_scenarios,
        "scenario_names": list(schema.scenario_names),
        "user_feature": schema.user_feature,
    }


def build_manifest(run: InferenceRun, program: Dict[str, Any], folder: str) -> Dict[str, Any]:
    schema = run.schema
    files = {
        name: {
            "size": os.path.getsize(os.path.join(folder, name)),
            "sha256": runtime.file_digest(os.path.join(folder, name)),
        }
        for name in runtime.artifact_files(folder)
    }
    return {
        "format": runtime.FORMAT,
        "model": {
            "name": run.config.model.name,
            "params": run.config.model.params,
            "embedding_dim": run.config.model.embedding_dim,
        },
        "dataset": run.spec.name,
        "run": {
            "run_dir": os.path.abspath(os.path.dirname(os.path.dirname(run.checkpoint))),
            "checkpoint": os.path.basename(run.checkpoint),
        },
        "program": program,
        "inputs": [
            {"name": "dense", "dtype": "float32", "shape": ["B", schema.dense_dim]},
            {"name": "values", "dtype": "int64", "shape": ["N"]},
            {"name": "lengths", "dtype": "int32", "shape": [f"{len(schema.sparse)} * B"]},
            {"name": "scenario", "dtype": "int64", "shape": ["B"]},
        ],
        "features": schema.feature_names,
        "tasks": [
            {
                "name": t.name,
                "kind": t.kind,
                "depends_on": t.depends_on,
                "output": "probability"
                if t.kind == "binary"
                else ("expm1 of the log1p-space prediction" if t.loss == "log_mse" else "prediction"),
            }
            for t in schema.tasks
        ],
        "schema": schema_entry(schema),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": files,
    }


def _prepare_out(out: str, overwrite: bool) -> None:
    """``out`` must be new, an empty folder, or (with ``overwrite``) an artifact folder."""
    if os.path.isfile(out):
        raise RecsysError(f"{out}: --out is a file; give a folder for the artifact")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise RecsysError(f"{out}: folder is not empty; give a new folder or --overwrite an earlier artifact")
        if not os.path.isfile(os.path.join(out, runtime.MANIFEST)):
            raise RecsysError(
                f"{out}: --overwrite replaces only an artifact folder (one with {runtime.MANIFEST}); "
                "this folder holds something else"
            )
    parent = os.path.dirname(os.path.abspath(out))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise RecsysError(f"{parent}: is a file; the artifact folder cannot go there")
    if os.path.isdir(parent) and not os.access(parent, os.W_OK):
        raise RecsysError(f"{parent}: not writable")


def export_run(
    run_dir: str,
    out: str,
    checkpoint: str = "best",
    quantize: str = "none",
    program_format: str = "torchscript",
    overwrite: bool = False,
) -> Dict[str, Any]:
    """Write the serving artifact of ``run_dir`` to folder ``out``; returns its manifest.

    Args:
        run_dir: a trained run folder.
        out: the artifact folder (new, empty, or with ``overwrite`` an earlier artifact).
        checkpoint: ``best``, ``latest`` or a checkpoint folder (saved by any number of ranks).
        quantize: ``none``, ``fp16`` or ``int8`` (the embedding tables; torchrec's quantized modules).
        program_format: ``torchscript``, ``aoti`` or ``auto`` (see the module docstring).
        overwrite: replace an earlier artifact in ``out``.

    Example::

        manifest = export_run("runs/wide_deep_synthetic", "artifacts/wd-int8", quantize="int8")
        manifest["program"]["format"], manifest["program"]["why"]
    """
    if quantize not in QUANTIZE:
        raise ConfigError(f"export: --quantize must be one of {', '.join(QUANTIZE)}, got '{quantize}'")
    if program_format not in FORMATS:
        raise ConfigError(f"export: --format must be one of {', '.join(FORMATS)}, got '{program_format}'")
    _prepare_out(out, overwrite)
    run = open_run(run_dir, checkpoint)
    tmp = f"{os.path.abspath(out).rstrip(os.sep)}.tmp.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        module = ServingModule(run.model)
        program = write_program(module, quantize, program_format, tmp, sample_inputs(run.schema))
        with open(os.path.join(tmp, runtime.FEATURES), "w", encoding="utf-8") as f:
            json.dump(feature_settings(run.spec, run.schema), f, indent=1)
        shutil.copytree(run.encoders, os.path.join(tmp, runtime.ENCODERS))
        shutil.copyfile(runtime.__file__, os.path.join(tmp, "runtime.py"))
        manifest = build_manifest(run, program, tmp)
        with open(os.path.join(tmp, runtime.MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, default=str)
        runtime.Artifact.open(tmp)  # what a server will do first: the manifest and preprocessing read back
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        raise RecsysError(f"{out}: cannot write the artifact ({e.strerror or e})") from None
    except runtime.ArtifactError as e:  # pragma: no cover - the export's own files failed to read back
        raise RecsysError(f"export: the written artifact does not read back ({e})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def artifact_bytes(folder: str, manifest: Dict[str, Any]) -> Dict[str, int]:
    """Bytes of the program and of the whole artifact."""
    files = manifest["files"]
    return {
        "program": files[manifest["program"]["file"]]["size"],
        "total": sum(e["size"] for e in files.values()) + os.path.getsize(os.path.join(folder, runtime.MANIFEST)),
    }


def describe(manifest: Dict[str, Any], folder: str) -> str:
    """What ``recsys export`` prints: where, what and why, in a few lines."""
    program = manifest["program"]
    size = artifact_bytes(folder, manifest)
    return "\n".join(
        [
            f"wrote {folder}: {manifest['model']['name']} ({manifest['dataset']}, checkpoint "
            f"{manifest['run']['checkpoint']}), {program['file']} {size['program'] / 1e6:.2f} MB, "
            f"artifact {size['total'] / 1e6:.2f} MB",
            f"program: {program['format']} - {program['why']}",
            f"tables: {program['tables']['weights']} weights in {program['tables']['kernel']}",
            f"outputs: {', '.join(program['outputs'])}",
            f"score without recsys: python {os.path.join(folder, 'runtime.py')} score {folder} --input ROWS.parquet "
            "--out scores.parquet",
        ]
    )
