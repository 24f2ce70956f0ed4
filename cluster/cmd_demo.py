"""``myriad demo``: the streaming demo on embedded defaults, start to finish, then a report.

    myriad demo                       # small preset, brick + gravel lines, 60 s of camera
    myriad demo --quick               # CI variant: tiny preset, untrained LMM, 12 s of camera

1. prepares the packaged weights and builds the real-texture benchmark (scikit-image photos
   with synthetic defects); each texture is a production line;
2. fits one PatchCore expert per line and evaluates it on held-out defects;
3. loads the trained Myriad model (``myriad train``'s default model directory) or, when there
   is none, runs a short ``myriad train`` first (``--train-steps``), or serves the config's
   untrained model (``--untrained``, ``--quick``);
4. starts a local Ray cluster, the embedded Kafka broker (Tansu), the Serve application and the
   line consumers (Ray actors calling Serve through handles), then one camera simulator per
   line for ``--seconds``, printing a live per-line summary (frames, NG, p50/p99, lag, LMM);
5. drains, stops everything it started (consumers, archiver, Serve, broker, Ray) and writes
   ``<out>/report.html`` (NG frames' anomaly-map overlays with the LMM's answers, stream
   figures, the expert evaluation), ``<out>/verdicts.parquet`` and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from cluster.cli import UserError, add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the streaming demo: experts, Myriad on Serve, Kafka lines -> live summary, report")
    add_config_args(p)
    p.add_argument("--out", type=Path, default=None, help="default: <home>/demo")
    p.add_argument("--lines", nargs="+", default=["brick", "gravel"], help="textures used as production lines")
    p.add_argument("--seconds", type=float, default=60.0, help="how long the cameras send")
    p.add_argument("--fps", type=float, default=2.0, help="frames per second per line")
    p.add_argument("--model", type=Path, default=None, help="a trained Myriad model directory "
                   "(default: the training's default directory, <home>/models/<preset>)")
    p.add_argument("--train-steps", type=int, default=30, help="steps of the short training run when no model exists")
    p.add_argument("--untrained", action="store_true", help="serve the config's untrained model (no training)")
    p.add_argument("--quick", action="store_true", help="CI variant: tiny preset, untrained LMM, 12 s of camera")
    p.add_argument("--figures", type=int, default=8, help="NG overlays per line in the report")
    p.set_defaults(handler=run_demo)


def _quick(args: argparse.Namespace) -> None:
    if args.config == "small":
        args.config = "tiny"
    args.untrained = True
    args.seconds = min(args.seconds, 12.0)
    args.fps = min(args.fps, 2.0)


def _config(args, out: Path, model_dir: Path | None, banks: dict[str, Path]):
    from cluster.stream_handles import serve_line_overrides

    lines = ", ".join(f"{{name: {n}, partitions: 2, consumers: 1}}" for n in args.lines)
    over = [f"streams.lines=[{lines}]", f"streams.archive.dir={out / 'verdicts'}", "streams.archive.max_seconds=2",
            # A flagged frame's verdict waits at most this long for the LMM's answer, then the
            # answer is shed (and the verdict says so): expert verdicts keep flowing.
            "streams.llm.deadline_ms=8000", "streams.llm.max_in_flight=2",
            *serve_line_overrides({n: str(b) for n, b in banks.items()}), "serve.auth.required=false"]
    if model_dir is not None:
        over.append(f"serve.model_dir={model_dir}")
    return config_from_args(argparse.Namespace(config=args.config, overrides=[*args.overrides, *over]))


def fit_lines(cfg, data: Path, out: Path, lines: list[str]) -> tuple[dict[str, Path], dict[str, dict]]:
    """One expert per line (banks under ``out/banks``) and its evaluation on held-out defects."""
    from actors.modeling.bank import open_bank
    from training.evaluate import expert_metrics, predict_category
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    banks, metrics = {}, {}
    for i, line in enumerate(lines):
        t0 = time.perf_counter()
        category = open_category(data, line)
        banks[line] = out / "banks" / line
        fit_bank(cfg.expert, cfg.paths.weights_dir, category.train_good(), banks[line], line, progress=False)
        expert, meta = open_bank(banks[line], cfg.expert, cfg.paths.weights_dir)
        m = expert_metrics(predict_category(expert, category, progress=False), meta.threshold)
        m.pop("skipped", None)
        metrics[line] = {**m, "fit_and_eval_s": time.perf_counter() - t0}
        print(f"      line {line!r} ({i + 1}/{len(lines)}): image AUROC {m['image_auroc']:.3f}, "
              f"pixel AUROC {m['pixel_auroc']:.3f}, threshold {meta.threshold:.3f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return banks, metrics


def existing_model(args, cfg) -> Path | None:
    """The model directory the demo will serve if one is there (None: --untrained or none
    yet); a directory this release cannot read stops the demo here, before any work."""
    from configs.train_schema import default_model_dir

    if args.untrained:
        return None
    model = args.model or default_model_dir(cfg)
    if not (model / "config.json").is_file():
        return None
    from actors.modeling.checkpoint import check_format
    from actors.modeling.lmm_errors import CheckpointError

    try:
        check_format(model)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return model


def model_for_demo(args, cfg, existing: Path | None) -> Path | None:
    """The trained model directory to serve (``existing``, from ``existing_model``); trains a
    short run first when there is none."""
    from configs.train_schema import default_model_dir

    if args.untrained:
        print("[3/5] Myriad model: the config's untrained model (--untrained)", flush=True)
        return None
    if existing is not None:
        print(f"[3/5] Myriad model: {existing}", flush=True)
        return existing.resolve()
    model = args.model or default_model_dir(cfg)
    if args.model is not None:
        raise UserError(f"--model {model}: not a Myriad model directory (no config.json)")
    if cfg.train is None:
        raise UserError(f"config {args.config!r} has no `train:` section and {model} does not exist; "
                        "pass --model DIR or --untrained")
    print(f"[3/5] no trained model in {model}: a short training run ({args.train_steps} steps, "
          "`myriad train`; ~4-7 s per step on 2 cores plus ~1-2 min of setup)", flush=True)
    t0 = time.perf_counter()
    overrides = [*args.overrides, f"train.max_steps={args.train_steps}"]
    if not any(o.startswith("train.run_name=") for o in args.overrides):
        # Its own run per model format: a checkpoint left by an older release's demo has
        # another parameter layout and cannot be resumed (`trainer.check_resumable`).
        from actors.modeling.checkpoint import FORMAT_VERSION

        overrides.append(f"train.run_name=demo-format{FORMAT_VERSION}")
    train_cfg = config_from_args(argparse.Namespace(config=args.config, overrides=overrides))
    from configs.train_schema import data_root
    from training.textures import build_textures

    if not (data_root(train_cfg) / "manifest.json").is_file():  # what `myriad data textures` writes
        build_textures(data_root(train_cfg), seed=0, progress=False)
    # `python -m training` in its own process, exactly as a user runs it: its private Ray
    # (token auth on) comes and goes there, and this process starts the demo's own Ray after.
    with tempfile.TemporaryDirectory(prefix="myriad-demo-train-") as tmp:
        summary_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "training", "--config", args.config, "--json", str(summary_path)]
        for item in overrides:
            cmd += ["--set", item]
        proc = subprocess.run(cmd)
        if proc.returncode != 0 or not summary_path.is_file():
            raise UserError(f"the short training run failed (exit {proc.returncode}); see its output above, "
                            "or pass --model DIR / --untrained")
        summary = json.loads(summary_path.read_text())
    print(f"      trained in {time.perf_counter() - t0:.0f}s -> {summary['model_dir']}", flush=True)
    return Path(summary["model_dir"]).resolve()


def run_demo(args: argparse.Namespace) -> int:
    from actors.modeling import weights
    from cluster.demo_report import write_demo_report
    from training.textures import PHOTOS, build_textures

    if args.quick:
        _quick(args)
    unknown = sorted(set(args.lines) - set(PHOTOS))
    if unknown:
        raise UserError(f"--lines {unknown}: each line is a texture, one of {sorted(PHOTOS)}")
    base = config_from_args(args)
    existing = existing_model(args, base)  # an outdated model directory: said before any work
    out = (args.out or base.paths.home / "demo").resolve()
    t0 = time.perf_counter()
    shutil.rmtree(out / "verdicts", ignore_errors=True)  # this run's verdicts only
    print(f"[1/5] weights and the texture benchmark ({', '.join(args.lines)}) in {out}", flush=True)
    weights.prepare(base.paths.weights_dir)
    data = out / "textures"
    build_textures(data, seed=0, categories=tuple(args.lines), progress=False)
    print("[2/5] fitting and evaluating one PatchCore expert per line", flush=True)
    banks, evaluation = fit_lines(base, data, out, args.lines)
    model_dir = model_for_demo(args, base, existing)
    cfg = _config(args, out, model_dir, banks)
    print(f"[4/5] streaming: local Ray, embedded Kafka, Serve app {cfg.serve.app_name!r}, consumers; "
          f"{len(args.lines)} cameras at {args.fps:g} fps for {args.seconds:g}s", flush=True)
    result = stream(cfg, args, data)
    print("[5/5] writing the report", flush=True)
    paths = write_demo_report(cfg, out, banks, evaluation, result, args.figures, model_dir)
    print(f"done in {time.perf_counter() - t0:.0f}s: report {paths['report']}, verdicts {paths['parquet']}, "
          f"summary {paths['summary']}", flush=True)
    return 0


def stream(cfg, args, data: Path) -> dict:
    """Ray + broker + Serve + consumers + cameras; every one of them stopped before returning."""
    import ray
    from ray import serve

    from cluster.app import build_app
    from cluster.cmd_streams import camera_images
    from cluster.demo_report import LiveSummary, collect_verdicts
    from cluster.runtime import connect
    from cluster.stream_handles import ServeHandles
    from streams.broker import EmbeddedBroker
    from streams.camera import CameraSimulator
    from streams.runtime import start_streams

    logging.getLogger("kafka").setLevel(logging.WARNING)
    app = build_app(cfg)  # config and bank errors before anything starts
    images = {n: camera_images(data, n, cfg.expert.max_image_pixels) for n in args.lines}
    # A throw-away local cluster: Ray's token auth off (README "Serving" for real clusters).
    connect(None, num_cpus=4, auth="disabled", log_to_driver=False)
    try:
        with EmbeddedBroker() as broker:
            # Handles only (no HTTP proxy): one process less on a small machine; `myriad serve`
            # runs the same application with its HTTP API.
            serve.start(proxy_location="Disabled", logging_config={"enable_access_log": False})
            t_app = time.perf_counter()
            serve.run(app, name=cfg.serve.app_name, route_prefix=None)
            print(f"      Serve app {cfg.serve.app_name!r} up in {time.perf_counter() - t_app:.0f}s", flush=True)
            runtime = start_streams(cfg, ServeHandles(cfg.serve.app_name), bootstrap=broker.bootstrap)
            cams = {n: CameraSimulator(cfg.streams, n, images[n], args.fps, broker.bootstrap) for n in args.lines}
            try:
                threads = [threading.Thread(target=c.run, kwargs={"duration_s": args.seconds}, daemon=True)
                           for c in cams.values()]
                for t in threads:
                    t.start()
                live = LiveSummary(runtime, cams)
                while any(t.is_alive() for t in threads):
                    time.sleep(5.0)
                    live.print()
                sent = {fid: (n, path) for n, c in cams.items() for fid, path in c.sent}
                verdicts = collect_verdicts(cfg, broker.bootstrap, args.lines, set(sent), timeout_s=120)
                live.print(final=True)
                stats = runtime.stats()
            finally:
                for c in cams.values():
                    c.stop()
                    c.close()
                final = runtime.stop()
                serve.shutdown()
    finally:
        ray.shutdown()
    return {"sent": sent, "verdicts": verdicts, "stats": stats, "final": final}
