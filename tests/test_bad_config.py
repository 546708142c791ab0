"""Bad configs, run folders, outputs, checkpoints and plan requests through the CLI (issue 17).

Every case: exit code 2, exactly one stderr line starting with ``error:`` naming the file, key or path, no
traceback, and nothing new on disk (the run folder is not created, an existing one is left as it was, no
``.tmp`` leftovers).
"""

import errno
import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import pytest
from test_bad_input import GOOD_ROWS, edit, setup

from recsys.cli import main
from recsys.train import checkpoint as ckpt

ROWS = GOOD_ROWS + [f"u{i % 7},{i % 5},x,{i % 3}.5,{i % 2},{(i % 4) * 10},s{1 + i % 2}" for i in range(40)]


@dataclass
class Case:
    name: str
    expect: List[str]  # substrings of the one-line error; {cfg}, {run}, {dir} are replaced
    argv: List[str] = field(default_factory=lambda: ["train", "-c", "{cfg}"])
    before: Optional[Callable[[str], None]] = None  # edits the folder after setup
    trained: bool = False  # a good run is trained first (eval / predict / resume cases)
    damage: Optional[Callable[[str], None]] = None  # edits the trained run folder
    patch: Optional[Callable[[pytest.MonkeyPatch, str], None]] = None


def _set(key_value: str) -> List[str]:
    return ["train", "-c", "{cfg}", "--set", key_value]


def _latest(run: str) -> str:
    return ckpt.latest_checkpoint(os.path.join(run, "checkpoints"))


def _overwrite(relative: str, data: bytes, manifest: bool = False) -> Callable[[str], None]:
    """Replace a file of the run folder (a bare name: of its newest checkpoint), optionally re-writing the
    checkpoint's manifest as someone who meant it would."""

    def run(run_dir: str) -> None:
        folder = _latest(run_dir) if "/" not in relative else run_dir
        with open(os.path.join(folder, relative), "wb") as f:
            f.write(data)
        if manifest:
            ckpt.write_manifest(_latest(run_dir))

    return run


def _remove(relative: str) -> Callable[[str], None]:
    def run(run_dir: str) -> None:
        os.remove(os.path.join(run_dir, relative))

    return run


def _statvfs(folder: str, free_blocks=None, read_only: bool = False):
    """A patched os.statvfs: the tests' folder looks full or read-only."""
    real = os.statvfs

    class Patched:
        def __init__(self, st):
            self.f_frsize = st.f_frsize
            self.f_bavail = st.f_bavail if free_blocks is None else free_blocks
            self.f_flag = st.f_flag | (os.ST_RDONLY if read_only else 0)

    return lambda p: Patched(real(p)) if str(p).startswith(folder) else real(p)


def _full_disk(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    monkeypatch.setattr(os, "statvfs", _statvfs(folder, free_blocks=10))


def _read_only(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    monkeypatch.setattr(os, "statvfs", _statvfs(folder, read_only=True))


def _disk_full_while_saving(monkeypatch: pytest.MonkeyPatch, folder: str) -> None:
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.dcp, "save", fail)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh"))

CASES = [
    # --- config files ------------------------------------------------------------------------------------
    Case("config not UTF-8", ["config.yaml", "line 7", "not UTF-8 text (byte 0xe9)"],
         before=lambda d: open(os.path.join(d, "config.yaml"), "ab").write(b"# caf\xe9\n")),
    Case("config is a folder", ["is a folder"], argv=["train", "-c", "{dir}"]),
    Case("duplicate key in config", ["config.yaml", "duplicate key 'model'"],
         before=lambda d: open(os.path.join(d, "config.yaml"), "a").write("model: {name: dnn}\n")),
    Case("duplicate key in spec", ["spec.yaml", "duplicate key 'user'"],
         before=lambda d: open(os.path.join(d, "spec.yaml"), "a").write("user: item\n")),
    Case("alias bomb in config", ["config.yaml", "alias bomb"],
         before=lambda d: open(os.path.join(d, "config.yaml"), "a").write("bomb:\n" + "".join(
             "  " + line + "\n" for line in ALIAS_BOMB.splitlines()))),
    Case("alias bomb in spec", ["spec.yaml", "alias bomb"],
         before=lambda d: open(os.path.join(d, "spec.yaml"), "a").write("bomb:\n" + "".join(
             "  " + line + "\n" for line in ALIAS_BOMB.splitlines()))),
    Case("huge value in an error message", ["'train.epochs' must be int", "<list of"],
         argv=_set("train.epochs=[" + ",".join(["1"] * 5000) + "]")),
    # --- numeric ranges ----------------------------------------------------------------------------------
    Case("negative grad clip", ["'train.grad_clip_norm' must be > 0", "-1"], argv=_set("train.grad_clip_norm=-1")),
    Case("zero learning rate", ["'train.dense_optimizer.lr' must be > 0"], argv=_set("train.dense_optimizer.lr=0")),
    Case("nan learning rate", ["'train.dense_optimizer.lr' must be a finite number"],
         argv=_set("train.dense_optimizer.lr=.nan")),
    Case("infinite embedding lr", ["'train.embedding_optimizer.lr' must be a finite number"],
         argv=_set("train.embedding_optimizer.lr=.inf")),
    Case("negative eps", ["'train.dense_optimizer.eps' must be > 0"], argv=_set("train.dense_optimizer.eps=-1e-8")),
    Case("negative weight decay", ["'train.embedding_optimizer.weight_decay' must be >= 0"],
         argv=_set("train.embedding_optimizer.weight_decay=-0.1")),
    Case("dropout of 1", ["'model.params.dropout' must be >= 0 and < 1"], argv=_set("model.params={dropout: 1.0}")),
    Case("negative dropout", ["'model.params.dropout' must be >= 0 and < 1"],
         argv=_set("model.params={dropout: -0.1}")),
    Case("zero hidden width", ["'model.params.hidden[1]' must be >= 1"], argv=_set("model.params={hidden: [8, 0]}")),
    Case("unknown activation", ["'model.params.activation' must be one of", "'relu6'"],
         argv=_set("model.params={activation: relu6}")),
    Case("unknown norm", ["'model.params.norm' must be one of", "'group'"], argv=_set("model.params={norm: group}")),
    Case("negative seed", ["'train.seed' must be >= 0"], argv=_set("train.seed=-1")),
    Case("seed above int64", ["'train.seed' must be", "<="], argv=_set("train.seed=99999999999999999999")),
    Case("log every 0 steps", ["'train.log_every_steps' must be >= 1"], argv=_set("train.log_every_steps=0")),
    Case("max steps 0", ["'train.max_steps' must be >= 1"], argv=_set("train.max_steps=0")),
    Case("keep 0 checkpoints", ["'train.keep_checkpoints' must be >= 1"], argv=_set("train.keep_checkpoints=0")),
    Case("patience 0", ["'train.early_stopping.patience' must be >= 1"],
         argv=_set("train.early_stopping.patience=0")),
    Case("negative task weight", ["'train.task_weights.ctr' must be >= 0"],
         argv=_set("train.task_weights={ctr: -1}")),
    Case("valid fraction above 1", ["'data.split.valid' must be >= 0 and < 1"], argv=_set("data.split.valid=1.5")),
    Case("zero chunk rows", ["'data.chunk_rows' must be >= 1"], argv=_set("data.chunk_rows=0")),
    Case("zero eval batch size", ["'data.eval_batch_size' must be >= 1"], argv=_set("data.eval_batch_size=0")),
    Case("early-stopping metric misspelt", ["train.early_stopping.metric", "'ctr/acu'", "is not a metric"],
         argv=_set("train.early_stopping.metric=ctr/acu")),
    Case("oracle metric without oracle columns", ["'ctr/oracle_auc'", "no oracle column"],
         argv=_set("train.early_stopping.metric=ctr/oracle_auc")),
    Case("overwrite and resume together", ["--overwrite", "--resume", "one of them"],
         argv=["train", "-c", "{cfg}", "--overwrite", "--resume"]),
    # --- run folder and outputs --------------------------------------------------------------------------
    Case("run_dir is a file", ["{run}", "is a file, not a folder"],
         before=lambda d: open(os.path.join(d, "run"), "w").write("not a folder")),
    Case("run_dir under a file", ["'{dir}/blocker' is a file"],
         argv=["train", "-c", "{cfg}", "--run-dir", "{dir}/blocker/run"],
         before=lambda d: open(os.path.join(d, "blocker"), "w").write("x")),
    Case("run_dir on a read-only file system", ["read-only file system"], patch=_read_only),
    Case("run_dir on a full disk", ["no space left", "MiB free"], patch=_full_disk),
    Case("eval --out is a folder", ["--out is a folder"], trained=True,
         argv=["eval", "--run-dir", "{run}", "--out", "{dir}"]),
    Case("predict --out is a folder", ["--out is a folder"], trained=True,
         argv=["predict", "--run-dir", "{run}", "--out", "{dir}"]),
    Case("predict --out under a file", ["{dir}/blocker", "is a file"], trained=True,
         argv=["predict", "--run-dir", "{run}", "--out", "{dir}/blocker/scores.parquet"],
         before=lambda d: open(os.path.join(d, "blocker"), "w").write("x")),
    # --- run folders that were damaged -------------------------------------------------------------------
    Case("corrupt trainer.json", ["trainer.json", "the manifest says", "truncated or replaced"], trained=True,
         argv=["eval", "--run-dir", "{run}", "--checkpoint", "latest"],
         damage=_overwrite("trainer.json", b"{not json")),
    Case("corrupt trainer.json with its manifest", ["trainer.json", "corrupt checkpoint loop state"],
         trained=True, argv=["eval", "--run-dir", "{run}", "--checkpoint", "latest"],
         damage=_overwrite("trainer.json", b"{not json", manifest=True)),
    Case("corrupt rng state", ["rng-rank0.json", "corrupt RNG state"], trained=True,
         argv=["train", "-c", "{cfg}", "--resume"],
         damage=_overwrite("rng-rank0.json", b'{"torch": "!!!"}', manifest=True)),
    Case("corrupt encoders.json", ["encoders.json", "corrupt fitted encoders"], trained=True,
         argv=["eval", "--run-dir", "{run}"], damage=_overwrite("encoders/encoders.json", b"[1, 2")),
    Case("deleted vocabulary", ["vocab.user.parquet", "vocabulary of sparse feature 'user' is missing"],
         trained=True, argv=["eval", "--run-dir", "{run}"], damage=_remove("encoders/vocab.user.parquet")),
    Case("deleted encoders on resume", ["no fitted encoders"], trained=True,
         argv=["train", "-c", "{cfg}", "--resume"],
         damage=lambda r: __import__("shutil").rmtree(os.path.join(r, "encoders"))),
    Case("empty split for eval", ["'valid' split has no rows"], trained=True,
         argv=["eval", "--run-dir", "{run}", "--split", "valid"]),
    Case("empty split for predict", ["'test' split has no rows"], trained=True,
         argv=["predict", "--run-dir", "{run}", "--split", "test", "--out", "{dir}/s.parquet"]),
    Case("eval before training", ["no such file", "train it first"], argv=["eval", "--run-dir", "{run}"]),
    Case("eval without run or config", ["give --run-dir RUN"], argv=["eval"]),
    Case("no checkpoint folder", ["{dir}/nowhere: no such checkpoint folder"], trained=True,
         argv=["eval", "--run-dir", "{run}", "--checkpoint", "{dir}/nowhere"]),
    Case("resume with nothing to resume", ["nothing to resume from"], argv=["train", "-c", "{cfg}", "--resume"]),
    Case("checkpoint of another model", ["checkpoint does not match this model"], trained=True,
         argv=["eval", "--run-dir", "{run}", "--set", "model.params={hidden: [12]}"]),
    Case("eval config of another model", ["config.yaml differs from the run's own config", "model.params.hidden",
                                          "leave out -c"], trained=True, argv=["eval", "-c", "{cfg}"],
         before=edit("config.yaml", "embedding_dim: 4}", "embedding_dim: 4, params: {hidden: [12]}}")),
    Case("eval config with another split", ["data.split.seed", "leave out -c"], trained=True,
         argv=["eval", "-c", "{cfg}"], before=edit("config.yaml", "test: 0.0}", "test: 0.0, seed: 7}")),
    Case("eval config with another spec", ["spec.yaml", "differs from the one the run was trained with"],
         trained=True, argv=["eval", "-c", "{cfg}"],
         before=edit("spec.yaml", "num_embeddings: 5", "num_embeddings: 6")),
    # --- plan --------------------------------------------------------------------------------------------
    Case("plan a huge world", ["--world-size must be in [1, 4096]", "100000"],
         argv=["plan", "-c", "{cfg}", "--world-size", "100000"]),
    Case("plan zero ranks", ["--world-size must be in"], argv=["plan", "-c", "{cfg}", "--world-size", "0"]),
    Case("plan nan HBM", ["--hbm-gb must be a finite number > 0", "nan"],
         argv=["plan", "-c", "{cfg}", "--hbm-gb", "nan"]),
    Case("plan infinite host memory", ["--host-ddr-gb must be a finite number > 0"],
         argv=["plan", "-c", "{cfg}", "--host-ddr-gb", "inf"]),
    Case("plan zero ranks per host", ["--ranks-per-host must be >= 1"],
         argv=["plan", "-c", "{cfg}", "--ranks-per-host", "0"]),
    Case("plan zero batch size", ["--batch-size must be >= 1"], argv=["plan", "-c", "{cfg}", "--batch-size", "0"]),
]


def _snapshot(folder: str):
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder)] = os.path.getsize(full) if os.path.isfile(full) else None
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_cleanly(tmp_path, capsys, monkeypatch, case):
    cfg, data, run_dir = setup(tmp_path, rows=ROWS)
    subs = {"{cfg}": cfg, "{run}": run_dir, "{dir}": str(tmp_path)}
    if case.trained:
        assert main(["train", "-c", cfg]) == 0, capsys.readouterr().err
        if case.damage is not None:
            case.damage(run_dir)
    if case.before is not None:
        case.before(str(tmp_path))
    if case.patch is not None:
        case.patch(monkeypatch, str(tmp_path))
    capsys.readouterr()
    before = _snapshot(str(tmp_path))
    argv = [subs.get(a, a) for a in case.argv]
    argv = [a.replace("{dir}", str(tmp_path)) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for expected in case.expect:
        for k, v in subs.items():
            expected = expected.replace(k, v)
        assert expected in err, err
    assert _snapshot(str(tmp_path)) == before  # nothing new, nothing changed, no .tmp leftovers


def test_at_least_50_cases():
    assert len(CASES) >= 50


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    cfg, _, run_dir = setup(tmp_path, rows=ROWS)
    _disk_full_while_saving(monkeypatch, str(tmp_path))
    rc = main(["train", "-c", cfg])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "no space left on the device" in err and os.path.join(run_dir, "checkpoints") in err, err
    assert not [n for n in os.listdir(os.path.join(run_dir, "checkpoints")) if n.endswith(".tmp")]


def test_saved_config_round_trips(tmp_path, capsys):
    """The run's config.yaml loads from anywhere and holds no path relative to where training ran."""
    from recsys.config import load_config

    cfg, data, run_dir = setup(tmp_path, rows=ROWS)
    assert main(["train", "-c", cfg]) == 0, capsys.readouterr().err
    saved = load_config(os.path.join(run_dir, "config.yaml"))
    assert saved.run_dir == run_dir and saved.data.spec == os.path.join(run_dir, "spec.yaml")
    assert saved.data.path == str(tmp_path)
    assert json.load(open(os.path.join(run_dir, "metrics.json")))["steps"] > 0
