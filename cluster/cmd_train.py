"""``myriad train``, ``myriad evaluate lmm`` and ``myriad data instructions`` (issue 4).

    myriad train [--config small] [--set train.max_steps=100]     # local Ray if none running
    myriad evaluate lmm --model .myriad/models/small --data .myriad/data/textures \\
        --category brick grass gravel --json out/eval_lmm.json
    myriad data instructions --out DIR --samples 64 [--config small]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cluster.cli import UserError, add_config_args, config_from_args, dump_json


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="instruction-tune Myriad (Ray Train + Ray Data + DeepSpeed)")
    add_config_args(tr)
    tr.add_argument("--json", type=Path, default=None, help="write the result summary here")
    tr.set_defaults(handler=run_train)

    ev = sub.add_parser("evaluate", help="evaluate trained models")
    esub = ev.add_subparsers(dest="evaluate_command", required=True, metavar="WHAT")
    lmm = esub.add_parser("lmm", help="the Myriad LMM's answers vs the expert alone on test images")
    add_config_args(lmm)
    lmm.add_argument("--model", type=Path, default=None,
                     help="model directory (default: the config's trained model, .myriad/models/<preset>)")
    lmm.add_argument("--data", type=Path, required=True, help="dataset root (MVTec AD layout)")
    lmm.add_argument("--category", nargs="+", required=True)
    lmm.add_argument("--bank", type=Path, default=None,
                     help="expert bank (one category only; default: fit from train/good)")
    lmm.add_argument("--json", type=Path, default=None)
    lmm.add_argument("--batch-size", type=int, default=8)
    lmm.set_defaults(handler=run_evaluate_lmm)


def register_data_instructions(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("instructions", help="instruction-tuning samples (Ray Data) as Parquet")
    add_config_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder for the Parquet files")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--start", type=int, default=0, help="first sample id")
    p.set_defaults(handler=run_instructions)


def _train_config(args):
    cfg = config_from_args(args)
    if cfg.model is None or cfg.train is None:
        raise UserError(f"config {args.config!r} needs `model` and `train` sections")
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from training.trainer import run_training

    summary = run_training(_train_config(args))
    print(dump_json(summary, args.json, default=str))
    return 0


def run_instructions(args: argparse.Namespace) -> int:
    import ray

    from training.data import write_instructions
    from training.trainer import ensure_ray

    if args.samples < 1:
        raise UserError("--samples must be at least 1")
    cfg = _train_config(args)
    started = ensure_ray(cfg)
    try:
        print(json.dumps(write_instructions(cfg, args.out, args.samples, args.start), indent=2))
    finally:
        if started:
            ray.shutdown()
    return 0


KEYS = ("answer_accuracy", "position_accuracy", "position_hit_rate", "unparseable_rate",
        "expert_accuracy", "expert_image_auroc", "images")


def run_evaluate_lmm(args: argparse.Namespace) -> int:
    from configs.train_schema import default_model_dir
    from training.evaluate_lmm import evaluate_lmm

    cfg = config_from_args(args)
    model = args.model or default_model_dir(cfg)
    if not (Path(model) / "config.json").is_file():
        raise UserError(f"{model} is not a trained model directory; run `myriad train` or pass --model")
    if args.bank is not None and len(args.category) > 1:
        raise UserError("--bank fits one category; pass a single --category with it")
    result = evaluate_lmm(cfg, Path(model), args.data, list(args.category), args.bank, args.batch_size)
    rows = [("all", result)] + list(result["per_category"].items())
    print(f"{'':10}" + "".join(f"{k:>20}" for k in KEYS))
    for name, r in rows:
        cells = [r.get(k) for k in KEYS]
        print(f"{name:10}" + "".join(f"{'-' if v is None else (f'{v:.4f}' if isinstance(v, float) else v):>20}"
                                     for v in cells))
    dump_json(result, args.json, default=float)
    return 0
