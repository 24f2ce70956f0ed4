"""``myriad bench ...``: commands that print figures and write them as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster.cli import add_config_args, dump_json, import_optional


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (print figures, write JSON)")
    bsub = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    ex = bsub.add_parser("expert", help="this expert vs anomalib's Patchcore (when installed)")
    add_config_args(ex)
    ex.add_argument("--data", type=Path, required=True)
    ex.add_argument("--category", required=True)
    ex.add_argument("--json", type=Path, default=None)
    ex.set_defaults(handler=run_expert_bench)
    # Other benchmarks live beside what they measure: each module's register_bench(bsub).
    for name in BENCH_MODULES:
        module = import_optional(name)
        if module is not None:
            module.register_bench(bsub)


BENCH_MODULES = ("cluster.bench_model", "cluster.bench_train", "cluster.bench_serve", "cluster.bench_stream",
                 "cluster.bench_gpu")


KEYS = ("image_auroc", "pixel_auroc", "pro", "fit_seconds", "images_per_second", "peak_memory_mb", "search_share")


def run_expert_bench(args: argparse.Namespace) -> int:
    from cluster.bench_expert import run_bench

    result = run_bench(args.config, args.overrides, args.data, args.category)
    engines = [e for e in ("myriad", "anomalib") if result.get(e)]
    print(f"{'':20}" + "".join(f"{e:>14}" for e in engines))
    for key in KEYS:
        cells = []
        for e in engines:
            v = result[e].get(key)
            cells.append(f"{'n/a' if v is None else (f'{v:.4f}' if isinstance(v, float) else v):>14}")
        print(f"{key:20}" + "".join(cells))
    if result["ratios"]:
        print("ratios: " + "  ".join(f"{k}={v:.3f}" for k, v in result["ratios"].items()))
    else:
        print("anomalib is not installed (pip install -e '.[bench]'): myriad figures only")
    dump_json(result, args.json, default=float)
    return 0
