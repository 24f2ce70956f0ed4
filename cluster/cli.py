"""The ``myriad`` command line (also ``python -m cluster``).

Each command group lives in its own ``cluster/cmd_*.py`` module exposing
``register(subparsers)``; every handler returns an exit code. Errors a user can act on
(``UserError`` and its kin) print one clear line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from pathlib import Path

from configs import ConfigError

# Command modules, in help order. A module registers its sub-commands with argparse.
COMMAND_MODULES = (
    "cluster.cmd_demo",
    "cluster.cmd_weights",
    "cluster.cmd_data",
    "cluster.cmd_expert",
    "cluster.cmd_bench",
)
# Modules of later features register themselves when present.
OPTIONAL_COMMAND_MODULES = (
    "cluster.cmd_ask",
    "cluster.cmd_train",
    "cluster.cmd_serve",
    "cluster.cmd_streams",
)


class UserError(RuntimeError):
    """An error caused by the user's input: printed as one line, exit code 2."""


def add_config_args(parser: argparse.ArgumentParser, default: str = "small") -> None:
    parser.add_argument("--config", default=default, help="preset name or YAML path (%(default)s)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set expert.coreset_ratio=0.05 (repeatable)",
    )


def config_from_args(args: argparse.Namespace):
    from configs import load_config

    return load_config(args.config, args.overrides)


def dump_json(data, path: Path | None = None, default=None) -> str:
    """``data`` as indented JSON text, also written to ``path`` (parents created) when given:
    what every command's ``--json OUT`` does."""
    text = json.dumps(data, indent=2, default=default)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="myriad", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for name in OPTIONAL_COMMAND_MODULES:
        module = import_optional(name)
        if module is not None:
            module.register(sub)
    return parser


def import_optional(name: str):
    """The module, or None when that module itself does not exist (a broken one raises)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from actors.modeling.errors import MyriadError

    try:
        return int(args.handler(args) or 0)
    except (UserError, ConfigError, MyriadError) as exc:
        print(f"myriad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("myriad: interrupted", file=sys.stderr)
        return 130
