"""A Myriad model directory: what training exports and serving loads.

    <dir>/config.json          ModelConfig (the architecture and trainable set)
    <dir>/model.safetensors    every parameter (tied weights stored once)
    <dir>/prompt.json          prompt template version + chat format
    <dir>/preprocessing.json   ViT input size, mean, std (vit_preprocess)
    <dir>/tokenizer/           the tokenizer
    <dir>/manifest.json        format version

Loading is strict: a config that differs from the one expected, a prompt version this
code does not know, or a state dict that does not fit is refused with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError
from safetensors.torch import load_model, save_model

from actors.modeling.lmm_errors import CheckpointError
from actors.modeling.myriad import MyriadModel, apply_trainable, build_myriad
from actors.modeling.prompt import PROMPT_VERSIONS
from actors.modeling.tokenizer_tiny import load_tokenizer
from actors.modeling.vit_preprocess import ViTPreprocessor
from configs.model_schema import ModelConfig

FORMAT_VERSION = 5
# 2: TPG cell-name tokens with their gate, VPG position embeddings (a v1 directory lacks them).
# 3: the TPG gate's share-of-excess factor (two more scalars).
# 4: trained on background-centred maps (``patchcore.lmm_map``); a v3 model read uncentred ones.
# 5: the TPG gate opens on the map's peak and counts a cell's share above a base between the
#    map's median and its peak (``share_base``, one more scalar); v4 gated each cell's own
#    peak and counted the share above the threshold.
WEIGHTS_FILE = "model.safetensors"


def save_model_dir(model: MyriadModel, directory: Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(model.config.model_dump_json(indent=2))
    save_model(model, str(directory / WEIGHTS_FILE))
    (directory / "prompt.json").write_text(json.dumps(
        {"version": model.template.version, "chat_format": model.config.prompt.chat_format.value}))
    model.preprocessor.save(directory)
    model.tokenizer.save_pretrained(directory / "tokenizer")
    (directory / "manifest.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "kind": "myriad"}))
    return directory


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys where two config dumps differ."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} (directory) vs {vb!r} (expected)")
    return out


def read_model_config(directory: Path) -> ModelConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Myriad model directory (no config.json)")
    try:
        return ModelConfig.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise CheckpointError(f"{path}: invalid model config: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from None


def check_format(directory: Path) -> None:
    try:
        manifest = json.loads((Path(directory) / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}/manifest.json unreadable ({exc})") from None
    have = manifest.get("format_version")
    if have != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory}: model directory format {have!r}, this release reads {FORMAT_VERSION}; "
            "retrain it (`myriad train`) or point at another model directory")


def load_model_dir(directory: Path, expected: ModelConfig | None = None) -> MyriadModel:
    """Load a model directory; refuse it when ``expected`` is given and differs."""
    directory = Path(directory)
    cfg = read_model_config(directory)
    check_format(directory)
    if expected is not None and cfg != expected:
        diff = config_diff(cfg.model_dump(mode="json"), expected.model_dump(mode="json"))
        raise CheckpointError(f"{directory} was saved with a different model config: " + "; ".join(diff[:6]))
    try:
        prompt = json.loads((directory / "prompt.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}/prompt.json unreadable ({exc})") from None
    if prompt.get("version") not in PROMPT_VERSIONS or prompt.get("version") != cfg.prompt.version:
        raise CheckpointError(
            f"{directory}: prompt version {prompt.get('version')!r} is not {cfg.prompt.version!r} "
            f"or unknown to this code ({PROMPT_VERSIONS})"
        )
    ViTPreprocessor.load(directory, expected=ViTPreprocessor.from_vision_config(cfg.vision))
    model = build_myriad(cfg, pretrained=False, tokenizer=load_tokenizer(directory / "tokenizer"))
    try:
        missing, unexpected = load_model(model, str(directory / WEIGHTS_FILE), strict=True)
    except (RuntimeError, OSError) as exc:
        raise CheckpointError(f"{directory}/{WEIGHTS_FILE} does not fit its config: {str(exc)[:400]}") from None
    apply_trainable(model, cfg.trainable)
    return model
