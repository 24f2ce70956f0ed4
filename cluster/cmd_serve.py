"""``myriad serve``: run the Serve application of a config until interrupted.

    myriad serve --config small --set serve.lines.brick.bank=banks/brick [--model DIR]
    myriad serve --config configs/my.yaml --address auto      # join a running cluster

The same application runs from a Serve config YAML: ``serve run configs/serve/small.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cluster.cli import UserError, add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the Ray Serve application (HTTP API)")
    add_config_args(p)
    p.add_argument("--model", type=Path, default=None, help="a trained Myriad model directory")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto'); default: start one")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a cluster started here")
    p.add_argument("--host", default=None, help="HTTP host (default: serve.http.host)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.http.port)")
    p.add_argument("--once", action="store_true", help="start, print the routes, stop (a check)")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from ray import serve

    from cluster.app import build_app
    from cluster.runtime import connect, shutdown, start_serve

    cfg = config_from_args(args)
    if cfg.serve is None:
        raise UserError(f"config {args.config!r} has no `serve:` section")
    sc = cfg.serve
    updates = {}
    if args.model is not None:
        if not (args.model / "config.json").is_file():
            raise UserError(f"--model {args.model}: not a Myriad model directory (no config.json)")
        updates["model_dir"] = args.model.resolve()
    http = sc.http.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    cfg = cfg.model_copy(update={"serve": sc.model_copy(update={**updates, "http": http})})
    app = build_app(cfg)  # config and bank errors surface before Ray starts
    connect(args.address, args.num_cpus)
    try:
        start_serve(http)
        serve.run(app, name=sc.app_name, route_prefix="/")
        print(f"myriad: serving {sorted(sc.lines)} on http://{http.host}:{http.port} "
              f"(OpenAPI: /docs); Ctrl-C stops", flush=True)
        while not args.once:
            time.sleep(3600)
    finally:
        shutdown(stop_ray=args.address is None)
    return 0
