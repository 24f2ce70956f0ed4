"""``myriad bench train``: training throughput (samples/s) for 1 and 2 workers x ZeRO-1/2/3.

Each row is a short real run (``training.trainer``: Ray Data pipeline, Ray Train workers,
DeepSpeed on gloo/NCCL) of ``2 * steps`` optimizer steps; samples/s is measured over the last
``steps`` (after data warm-up and the first steps), from the loop's own log metrics. Runs go
to a temporary storage directory and export nothing.

    myriad bench train --config small [--steps 3] [--rows 1x2,2x1,2x2,2x3] [--json OUT]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
DEFAULT_ROWS = "1x1,1x2,1x3,2x1,2x2,2x3"  # workers x ZeRO stage


def register_bench(bsub: argparse._SubParsersAction) -> None:
    from cluster.cli import add_config_args

    p = bsub.add_parser("train", help="training samples/s: workers x ZeRO stage")
    add_config_args(p)
    p.add_argument("--steps", type=int, default=3, help="measured steps per row (after as many warm-up)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help="comma list of WORKERSxSTAGE (%(default)s)")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=run_bench_train)


def bench_rows(cfg, rows: list[tuple[int, int]], steps: int) -> list[dict]:
    from training.trainer import run_training

    out = []
    with tempfile.TemporaryDirectory(prefix="myriad-bench-train-") as tmp:
        for workers, stage in rows:
            t = cfg.train.model_copy(update={
                "zero_stage": stage, "max_steps": 2 * steps, "log_every": steps,
                "eval_every": 10**6, "checkpoint_every": 10**6, "max_minutes": None,
                "run_name": f"w{workers}z{stage}", "storage_dir": Path(tmp),
                "scaling": cfg.train.scaling.model_copy(update={"num_workers": workers}),
                "data": cfg.train.data.model_copy(update={"eval_samples": 0, "fit_gate": False,
                                                          "banks_dir": Path(tmp) / "banks"}),
            })
            run_cfg = cfg.model_copy(update={"train": t})
            t0 = time.perf_counter()
            summary = run_training(run_cfg, extra={"export_dir": None})
            m = summary["metrics"]
            out.append({"workers": workers, "zero_stage": stage, "samples_per_s": m["samples_per_s"],
                        "global_batch": t.global_batch, "loss": m["loss"],
                        "wall_s": round(time.perf_counter() - t0, 1)})
            log.info("bench row %s", out[-1])
    return out


def run_bench_train(args: argparse.Namespace) -> int:
    import ray

    from cluster.cli import UserError, config_from_args, dump_json
    from training.trainer import ensure_ray

    cfg = config_from_args(args)
    if cfg.model is None or cfg.train is None:
        raise UserError(f"config {args.config!r} needs `model` and `train` sections")
    try:
        rows = [tuple(int(v) for v in r.lower().split("x")) for r in args.rows.split(",")]
    except ValueError:
        raise UserError(f"--rows {args.rows!r}: expected e.g. 1x2,2x3 (workers x ZeRO stage)") from None
    started = ensure_ray(cfg)
    try:
        result = bench_rows(cfg, rows, args.steps)
    finally:
        if started:
            ray.shutdown()
    t = cfg.train
    print(f"preset {cfg.preset}, micro-batch {t.micro_batch_size}/worker, dtype {t.dtype.value} "
          f"({t.precision.value}), {t.strategy.value}")
    print(f"{'workers':>8} {'ZeRO':>5} {'samples/s':>10} {'global batch':>13} {'wall s':>8}")
    for r in result:
        print(f"{r['workers']:>8} {r['zero_stage']:>5} {r['samples_per_s']:>10.3f} "
              f"{r['global_batch']:>13} {r['wall_s']:>8}")
    dump_json({"preset": cfg.preset, "rows": result}, args.json)
    return 0
