"""``python -m training --config configs/train/<preset>.yaml [--set key=value ...]``

The entry point of ``ray job submit --working-dir . -- python -m training ...`` (it joins
the job's cluster) and of local runs (a local Ray is started when none is running).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="preset name or YAML path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None, help="also write the result summary here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from actors.modeling.errors import MyriadError
    from configs import ConfigError, load_config
    from training.trainer import run_training

    try:
        cfg = load_config(args.config, args.overrides)
        summary = run_training(cfg)
    except (ConfigError, MyriadError, ValueError) as exc:
        print(f"training: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
