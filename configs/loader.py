"""Load a preset name or YAML file, apply ``key.path=value`` overrides, validate once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from configs.schema import MyriadClusterConfig

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration could not be loaded; the message names the offending key."""


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix:  # a preset name
        if str(source) not in preset_names():
            raise ConfigError(
                f"unknown preset {str(source)!r}: choose one of {preset_names()} or pass a YAML path"
            )
        path = PRESET_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_extends(data: dict[str, Any], path: Path | None, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """``extends: <preset or YAML path>``: the file's keys deep-merged over its base's."""
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data
    if not isinstance(base_ref, str):
        raise ConfigError(f"{path}: `extends` must be a preset name or a YAML path")
    ref = Path(base_ref)
    if ref.suffix and not ref.is_absolute() and path is not None:
        ref = path.parent / ref
    key = str(ref.resolve()) if ref.suffix else base_ref
    if key in seen:
        raise ConfigError(f"{path}: `extends` cycle through {base_ref!r}")
    base = _read_yaml(ref if ref.suffix else base_ref)
    base = _resolve_extends(base, ref if ref.suffix else PRESET_DIR / f"{base_ref}.yaml", (*seen, key))
    return _deep_merge(base, data)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested ``data`` in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {override!r}: empty key segment")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {exc}") from None


def format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid config ({origin}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or err["type"] == "missing" else f" (got {got!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_config(
    source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> MyriadClusterConfig:
    """Load and validate a config from a preset name, YAML path or mapping."""
    if isinstance(source, dict):
        data, origin = dict(source), "mapping"
    else:
        data, origin = _read_yaml(source), str(source)
        path = Path(source) if Path(source).suffix else PRESET_DIR / f"{source}.yaml"
        data = _resolve_extends(data, path)
    for override in overrides:
        apply_override(data, override)
    try:
        return MyriadClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, origin)) from None
