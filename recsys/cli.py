"""The ``recsys`` command line.

    recsys generate [--rows N ...] [--out data/synthetic]     write the synthetic world
    recsys train -c CONFIG [--set key=value ...] [--resume]    train with early stopping, evaluate
    recsys eval -c CONFIG [--checkpoint best|latest|PATH] [--split test]
    recsys predict -c CONFIG --out scores.parquet [--split test] [--checkpoint ...]
    recsys predict --run-dir RUN --input NEW.parquet ... --out DIR [--keep-columns user_id,item_id]   new rows
    recsys export --run-dir RUN --out DIR [--quantize none|fp16|int8] [--format torchscript|aoti|auto]
    recsys plan -c CONFIG [--world-size 8 64 ...] [--device-type h100|h200|cpu]   sharding plans, no data needed
    recsys models                                              the registered models and what each needs
    recsys ssim search -c CONFIG                               SSIM: learn the shared-instance selection
    recsys ssim export --scores RUN/ssim_scores.parquet --out shared.parquet --ratio 0.3|learned|auto
    recsys ssim retrain -c CONFIG --shared shared.parquet      SSIM: retrain any multi-scenario model with the set
    recsys prepare movielens-100k|movielens-1m PATH [--out F]  check a downloaded data set, write its run config
    recsys demo                                                the five-minute demo (synthetic world)

A mistake in the input (file, column, config key) prints one line starting with ``error:`` and exits with
code 2; nothing is left half-written.
"""

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, Union

from recsys.console import setup_logging
from recsys.errors import RecsysError

log = logging.getLogger("recsys")

COMMANDS: Dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def wrap(fn):
        COMMANDS[name] = fn
        return fn

    return wrap


def _config(args: argparse.Namespace):
    from recsys.config import load_config

    overrides: List[str] = list(args.set or [])
    if getattr(args, "data", None):
        overrides.append(f"data.path={args.data}")
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    if not args.config:
        raise RecsysError(f"{args.command}: give -c CONFIG (a run config YAML)")
    return load_config(args.config, overrides)


def _run_config(args: argparse.Namespace):
    """The config of an existing run (eval, predict): the run's own ``config.yaml`` by default; with ``-c``, the
    given file, which must agree with the run's on everything that defines the model, features and splits."""
    from recsys.config import load_config, to_dict
    from recsys.train.run_folder import check_eval_config, check_same_spec

    overrides: List[str] = list(args.set or [])
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.config is None:
        if not args.run_dir:
            raise RecsysError(f"{args.command}: give --run-dir RUN (the run's own config is used) or -c CONFIG")
        saved = os.path.join(args.run_dir, "config.yaml")
        if not os.path.isfile(saved):
            raise RecsysError(f"{saved}: no such file (is '{args.run_dir}' a run folder? train it first)")
        return load_config(saved, overrides)
    cfg = load_config(args.config, overrides + ([f"run_dir={args.run_dir}"] if args.run_dir else []))
    saved = os.path.join(cfg.run_dir, "config.yaml")
    if os.path.isfile(saved):
        run_cfg = load_config(saved, overrides)
        check_eval_config(to_dict(run_cfg), to_dict(cfg), args.config, cfg.run_dir)
        check_same_spec(run_cfg.data.spec, cfg.data.spec, cfg.data.spec_overrides)
    return cfg


def _checkpoint_path(run_dir: str, which: str) -> str:
    from recsys.train.run_folder import RunFolder

    return RunFolder(run_dir).resolve(which)


def _check_out_file(path: str) -> None:
    """An output file's place is checked before any work: not a folder, its folder writable."""
    from recsys.train.run_folder import check_output_folder

    if os.path.isdir(path):
        raise RecsysError(f"{path}: --out is a folder; give a file name (e.g. {os.path.join(path, 'scores.parquet')})")
    check_output_folder(os.path.dirname(os.path.abspath(path)), what="output folder")


@command("generate")
def cmd_generate(args: argparse.Namespace) -> int:
    from recsys.data.synthetic import WorldConfig, generate

    cfg = WorldConfig(
        rows=args.rows,
        users=args.users,
        hosts=args.hosts,
        items=args.items,
        scenes=args.scenes,
        days=args.days,
        seed=args.seed,
        rows_per_file=args.rows_per_file,
        personal_slopes=args.personal_slopes,
    )
    summary = generate(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite)
    log.info(
        "wrote %d rows to %s (ctr %.3f, cvr|click %.3f)", cfg.rows, args.out, summary["ctr"], summary["cvr_given_click"]
    )
    return 0


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    from recsys.train.metrics import format_table
    from recsys.train.trainer import Trainer

    cfg = _config(args)
    if args.overwrite and args.resume:
        raise RecsysError("train: --overwrite replaces a run and --resume continues it; give one of them")
    resumes: Dict[Optional[str], Union[bool, str]] = {None: False, "always": True, "auto": "auto"}
    resume = resumes[args.resume]
    trainer = Trainer(cfg, resume=resume, overwrite=args.overwrite)
    result = trainer.fit()
    if trainer.is_main:
        print(
            format_table(
                trainer.schema,
                result["test"] or result["valid"],
                title=f"{cfg.model.name} on {trainer.dataset.spec.name}: {'test' if result['test'] else 'valid'}",
                untrained=result["untrained_tasks"],
            )
        )
        log.info("run folder: %s", cfg.run_dir)
    return 0


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    from recsys.io import write_json_atomic
    from recsys.train.metrics import format_table, untrained_tasks, without_tasks
    from recsys.train.trainer import Trainer

    if args.out:
        _check_out_file(args.out)
    cfg = _run_config(args)
    path = _checkpoint_path(cfg.run_dir, args.checkpoint)
    trainer = Trainer(cfg, fit_data=False)
    trainer.load(path, restore_loop=False, model_only=True)
    report = trainer.evaluate(args.split)
    untrained = untrained_tasks(trainer.loss.weights)
    if trainer.is_main:
        print(
            format_table(trainer.schema, report, title=f"{cfg.model.name}: {args.split} ({path})", untrained=untrained)
        )
        if args.out:  # as in metrics.json: an untrained head's numbers are no results
            write_json_atomic(args.out, {**without_tasks(report, untrained), "untrained_tasks": untrained})
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    from recsys.train.trainer import Trainer

    keep = [c.strip() for c in args.keep_columns.split(",") if c.strip()] if args.keep_columns else []
    if args.input is None:
        if keep or args.emit_indices or args.metrics:
            raise RecsysError(
                "predict: --keep-columns, --emit-indices and --metrics go with --input FILE ... "
                "(new rows to score); --split scores a split of the run's own data"
            )
        _check_out_file(args.out)
    elif args.split is not None:
        raise RecsysError("predict: give --input FILE ... (new rows) or --split (the run's own data), not both")
    else:  # the run's data is not read: nothing to hold in memory
        args.set = list(args.set or []) + ["data.in_memory=false"]
    cfg = _run_config(args)
    path = _checkpoint_path(cfg.run_dir, args.checkpoint)
    trainer = Trainer(cfg, fit_data=False)
    trainer.load(path, restore_loop=False, model_only=True)
    if args.input is None:
        rows = trainer.predict(args.split or "test", args.out)
        log.info("wrote %d rows of scores to %s", rows, args.out)
        return 0
    from recsys.train.metrics import format_table
    from recsys.train.scoring import score_files

    summary = score_files(
        trainer,
        args.input,
        args.out,
        keep=keep,
        emit_indices=args.emit_indices,
        checkpoint=path,
        overwrite=args.overwrite,
        metrics=args.metrics,
    )
    if trainer.is_main:
        log.info(
            "wrote %d rows of scores to %s (%s%s)",
            summary["rows"],
            args.out,
            ", ".join(summary["parts"]),
            f"; already complete: {', '.join(summary['skipped'])}" if summary["skipped"] else "",
        )
        if "metrics" in summary:
            print(
                format_table(
                    trainer.schema,
                    summary["metrics"],
                    title=f"{cfg.model.name}: {len(summary['inputs'])} input file(s) ({path})",
                )
            )
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from recsys.serving.export import describe, export_run

    manifest = export_run(
        args.run_dir,
        args.out,
        checkpoint=args.checkpoint,
        quantize=args.quantize,
        program_format=args.format,
        overwrite=args.overwrite,
    )
    print(describe(manifest, args.out))
    return 0


@command("plan")
def cmd_plan(args: argparse.Namespace) -> int:
    from recsys.config import load_config
    from recsys.train.planning import MAX_PLAN_WORLD_SIZE, plan_config
    from recsys.train.sharding import DEVICES

    for flag, value in (("--hbm-gb", args.hbm_gb), ("--host-ddr-gb", args.host_ddr_gb)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise RecsysError(f"plan: {flag} must be a finite number > 0, got {value}")
    for flag, value in (("--ranks-per-host", args.ranks_per_host), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise RecsysError(f"plan: {flag} must be >= 1, got {value}")
    for world in args.world_size:
        if not 1 <= world <= MAX_PLAN_WORLD_SIZE:
            raise RecsysError(
                f"plan: --world-size must be in [1, {MAX_PLAN_WORLD_SIZE}], got {world} (torchrec's "
                "planner enumerates every rank: about 3 min at 2048 ranks on 2 CPU cores)"
            )
    overrides: List[str] = list(args.set or [])
    if args.hbm_gb is not None:
        overrides.append(f"sharding.hbm_gb={args.hbm_gb}")
    if args.host_ddr_gb is not None:
        overrides += [f"sharding.host_ddr_gb={args.host_ddr_gb}", "sharding.ddr_gb=null"]
    # plans describe the target machines, not this one: plan_config checks the sharding against the planned
    # device, so the config is loaded without a device of its own
    cfg = load_config(args.config, overrides + ["device=auto"])
    configured = cfg.sharding.device_type
    device_type = args.device_type or (configured if configured in DEVICES else "h100")
    for report in plan_config(cfg, args.world_size, device_type, args.ranks_per_host, args.batch_size):
        print(report.format())
        print()
    return 0


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    from recsys.models.index import table  # the static index: no torch import, well under a second

    print(table())
    return 0


@command("ssim")
def cmd_ssim(args: argparse.Namespace) -> int:
    from recsys.workflows import ssim

    if args.phase == "search":
        result = ssim.run_search(_config(args))
        if result["trainer"].is_main:
            print(ssim.report(result, "ssim search"))
            log.info(
                "learned shared ratio %.4f; scores: %s", result.get("learned_ratio", float("nan")), result["scores"]
            )
        return 0
    if args.phase == "export":
        if args.ratio == "auto":
            if not args.config:
                raise RecsysError("ssim export --ratio auto needs -c CONFIG (the model retrained per ratio)")
            summary = ssim.choose_ratio(args.scores, args.out, _config(args), args.ratios.split(","))
            print(json.dumps(summary, indent=1))
            log.info("chosen shared ratio %s (by %s); set: %s", summary["chosen_ratio"], summary["metric"], args.out)
        else:
            info = ssim.export_shared(args.scores, args.out, args.ratio)
            print(json.dumps(info, indent=1))
        return 0
    result = ssim.run_retrain(_config(args), args.shared)
    if result["trainer"].is_main:
        print(ssim.report(result, "ssim retrain"))
    return 0


@command("prepare")
def cmd_prepare(args: argparse.Namespace) -> int:
    from recsys.data.prepare import DOWNLOADS, prepare

    folder, out, ratings = prepare(args.dataset, args.path, args.out, args.overwrite)
    log.info("%s at %s: %d ratings; wrote %s", DOWNLOADS[args.dataset].title, folder, ratings, out)
    log.info("train with: recsys train -c %s", os.path.relpath(out))
    return 0


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    from recsys.demo import run_demo

    run_demo(data_dir=args.out, run_root=args.run_root, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recsys", description="TorchRec-native industrial ranking.")
    p.add_argument("-v", "--verbose", action="store_true", help="show library logs and warnings")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write the synthetic live-streaming world")
    g.add_argument("--out", default="data/synthetic")
    g.add_argument("--rows", type=int, default=500_000)
    g.add_argument("--users", type=int, default=5_000)
    g.add_argument("--hosts", type=int, default=500)
    g.add_argument("--items", type=int, default=3_000)
    g.add_argument("--scenes", type=int, default=4)
    g.add_argument("--days", type=int, default=30)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--rows-per-file", type=int, default=1_000_000)
    g.add_argument(
        "--personal-slopes",
        type=float,
        default=0.0,
        help="per-user sensitivity to position and host level (0: the default world)",
    )
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--quiet", action="store_true")

    def run_args(sp: argparse.ArgumentParser, config_help: str = "run config YAML") -> None:
        sp.add_argument("-c", "--config", help=config_help)
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        sp.add_argument("--data", help="data root (overrides the dataset spec's root)")
        sp.add_argument("--run-dir", help="run folder (overrides run_dir)")

    t = sub.add_parser("train", help="train a model")
    run_args(t)
    t.add_argument(
        "--resume",
        nargs="?",
        const="always",
        choices=["always", "auto"],
        help="continue from the newest checkpoint of the run ('auto': only when there is one, as "
        "for scheduler retries); after a torchelastic restart this happens by itself",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the run folder (its files are removed once the new run's "
        "data and model have been checked)",
    )

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    run_args(e, "run config YAML (default: the run's own RUN_DIR/config.yaml; a given file must agree with it)")
    e.add_argument("--checkpoint", default="best", help="best, latest or a checkpoint folder")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--out", help="also write the report as JSON here")

    pr = sub.add_parser("predict", help="write per-row scores to Parquet")
    run_args(pr, "run config YAML (default: the run's own RUN_DIR/config.yaml; a given file must agree with it)")
    pr.add_argument("--checkpoint", default="best")
    pr.add_argument(
        "--split",
        choices=["train", "valid", "test", "all"],
        help="score a split of the run's own data into one file (default: test)",
    )
    pr.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="new rows to score: files, folders or globs (CSV/Parquet read like the dataset spec's "
        "source; label columns optional); streamed, one part file per rank in --out",
    )
    pr.add_argument(
        "--out", required=True, help="output Parquet file (--split), or folder of part-00000.parquet ... (--input)"
    )
    pr.add_argument(
        "--keep-columns",
        default="",
        metavar="COL,COL",
        help="with --input: input columns copied next to the scores (raw values, e.g. user_id,item_id)",
    )
    pr.add_argument(
        "--emit-indices",
        action="store_true",
        help="with --input: also write the encoded row_id, scenario and user the model saw",
    )
    pr.add_argument(
        "--metrics",
        action="store_true",
        help="with --input of labelled files: also evaluate the scores (printed, and in predict.json)",
    )
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="with --input: replace part files of another scoring job in --out (complete parts of "
        "the same job are always kept: a rerun resumes)",
    )

    xp = sub.add_parser(
        "export",
        help="write a serving artifact: program, encoders, preprocessing, manifest",
        description="Export a trained run for serving (docs/serving.md): a TorchScript program "
        "(or AOTInductor with --format aoti), the fitted encoders in Parquet/JSON, a "
        "standalone runtime.py that preprocesses raw rows and scores them without "
        "recsys, and MANIFEST.json with versions and checksums.",
    )
    xp.add_argument("--run-dir", required=True, help="the trained run folder")
    xp.add_argument("--out", required=True, help="the artifact folder to write (new or empty)")
    xp.add_argument("--checkpoint", default="best", help="best, latest or a checkpoint folder")
    xp.add_argument(
        "--quantize",
        default="none",
        choices=["none", "fp16", "int8"],
        help="embedding tables as torchrec/FBGEMM row-wise fp16 or int8 (dense layers stay fp32)",
    )
    xp.add_argument(
        "--format",
        default="torchscript",
        choices=["torchscript", "aoti", "auto"],
        help="torchscript (default), aoti (torch.export + AOTInductor, fp32 only, ~1 min to "
        "compile) or auto (AOTInductor where it works)",
    )
    xp.add_argument("--overwrite", action="store_true", help="replace an earlier artifact in --out")

    pl = sub.add_parser("plan", help="print sharding plans and per-rank memory for a config (no data, no GPU)")
    pl.add_argument(
        "-c",
        "--config",
        required=True,
        help="run config YAML (its dataset spec must declare num_embeddings for every sparse feature)",
    )
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    pl.add_argument("--world-size", type=int, nargs="+", default=[8], help="total ranks (several: one plan each)")
    pl.add_argument(
        "--device-type",
        choices=["h100", "h200", "cpu"],
        help="hardware preset: h100 (80 GiB HBM), h200 (141 GiB), cpu (default: the config's "
        "sharding.device_type, else h100)",
    )
    pl.add_argument("--ranks-per-host", type=int, help="ranks per machine (default 8 for GPUs, 1 for cpu)")
    pl.add_argument("--hbm-gb", type=float, help="HBM per GPU in GiB (overrides the preset)")
    pl.add_argument("--host-ddr-gb", type=float, help="host memory per machine in GiB (overrides the preset)")
    pl.add_argument("--batch-size", type=int, help="per-rank batch size (default: data.batch_size)")

    sub.add_parser(
        "models",
        help="list the registered models and what each needs from the data",
        description="The model registry: one row per model.name, with what the dataset spec must "
        "declare for it (checked before any data is read): tasks (how many), funnel (a "
        "binary task with depends_on, e.g. CVR given click), scenarios (a scenario column "
        "with two or more values), user (the user feature), time (a timestamp column).",
    )

    ss = sub.add_parser("ssim", help="SSIM: search, export and retrain with a shared-instance set")
    phases = ss.add_subparsers(dest="phase", required=True)
    sr = phases.add_parser("search", help="train the selection network with a multi-scenario backbone")
    run_args(sr)
    ex = phases.add_parser("export", help="write the shared-instance set (row_id, scenario, score, shared)")
    ex.add_argument("--scores", required=True, help="ssim_scores.parquet of a search run")
    ex.add_argument("--out", required=True, help="output Parquet file")
    ex.add_argument(
        "--ratio",
        default="learned",
        help="'learned' (the mask), a fraction per scenario, or 'auto' (best validation AUC)",
    )
    ex.add_argument("--ratios", default="0.1,0.3,0.5,learned", help="candidates of --ratio auto")
    ex.add_argument("-c", "--config", help="with --ratio auto: the config retrained for each candidate")
    ex.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    ex.add_argument("--data", help="data root (overrides the dataset spec's root)")
    ex.add_argument("--run-dir", help="run folder of the candidate retrains")
    rt = phases.add_parser("retrain", help="train a fresh multi-scenario model with a shared-instance set")
    run_args(rt)
    rt.add_argument("--shared", required=True, help="the Parquet file `recsys ssim export` wrote")

    pp = sub.add_parser("prepare", help="check a downloaded public data set and write a run config for it")
    pp.add_argument("dataset", choices=["movielens-100k", "movielens-1m"])
    pp.add_argument("path", help="the downloaded archive (.zip) or the folder it was extracted to")
    pp.add_argument("--out", help="the run config to write (default: DATASET.yaml in the current folder)")
    pp.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    d = sub.add_parser("demo", help="generate the synthetic world, train the default models, compare")
    d.add_argument("--out", default="data/synthetic", help="where the synthetic world is (or goes)")
    d.add_argument("--run-root", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a smaller world and fewer epochs (smoke test)")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job), handled like Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a reader that went away shows here, while it can still be handled
        return code
    except BrokenPipeError:
        # `recsys models | head -1`: the reader closed the pipe; stop quietly, as a Unix tool killed by SIGPIPE
        # does (exit 128 + 13), and point stdout at /dev/null so that the flush at exit cannot raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141
    except RecsysError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
