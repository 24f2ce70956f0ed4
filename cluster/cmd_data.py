"""``myriad data textures``: the real-texture benchmark in the MVTec AD layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build datasets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    tex = dsub.add_parser(
        "textures", help="benchmark from scikit-image's CC0 texture photos with synthetic defects"
    )
    tex.add_argument("--out", type=Path, required=True, help="output folder (MVTec AD layout)")
    tex.add_argument("--seed", type=int, default=0)
    tex.add_argument("--categories", nargs="+", default=None, help="default: brick grass gravel")
    tex.set_defaults(handler=run_textures)
    from cluster.cmd_train import register_data_instructions

    register_data_instructions(dsub)


def run_textures(args: argparse.Namespace) -> int:
    from training.textures import build_textures

    kwargs = {"seed": args.seed}
    if args.categories:
        kwargs["categories"] = tuple(args.categories)
    summary = build_textures(args.out, **kwargs)
    print(json.dumps(summary, indent=2, default=str)[:4000])
    return 0
