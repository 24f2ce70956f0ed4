"""Read pretrained parts from Hugging Face style directories (safetensors only).

``resolve_weights_dir`` finds a part's directory from its ``WeightsRef``; ``read_state_dict``
reads one or many ``*.safetensors`` files (optionally only the keys under a prefix);
``check_declared`` refuses a checkpoint whose config disagrees with the declared
architecture, naming each differing key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from actors.modeling._timm import ensure_torchvision_importable
from actors.modeling.weights import WeightsError, weights_path
from configs.model_schema import WeightsRef, WeightsSource

# transformers' model modules import torchvision; make that work beside the CPU torch.
ensure_torchvision_importable()


def resolve_weights_dir(ref: WeightsRef, weights_dir: Path | None) -> Path:
    if ref.source == WeightsSource.prepared:
        if weights_dir is None:
            raise WeightsError(f"weights {ref.name!r} are prepared weights but no weights_dir was given")
        return weights_path(weights_dir, ref.name)
    if ref.source == WeightsSource.local_dir:
        path = Path(ref.path).expanduser()
        if not path.is_dir():
            raise WeightsError(f"local weights directory {path} does not exist")
        return path
    raise WeightsError("random-init parts have no weights directory")


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise WeightsError(f"{path} is missing")
    return json.loads(path.read_text())


def read_state_dict(directory: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """All tensors of ``directory/*.safetensors`` whose key starts with ``prefix`` (stripped)."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"no .safetensors file in {directory} (torch pickles are not loaded)")
    out: dict[str, torch.Tensor] = {}
    for file in files:  # read only the tensors under the prefix (BLIP-2 files hold 3 models)
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = f.get_tensor(key)
    if not out:
        raise WeightsError(f"no tensor under prefix {prefix!r} in {directory}")
    return out


def check_declared(part: str, directory: Path, declared: dict, found: dict) -> None:
    """Raise when the checkpoint's config (``found``) disagrees with the declared one."""
    bad = []
    for key, want in declared.items():
        got = found.get(key)
        if isinstance(want, float) and isinstance(got, (int, float)):
            same = abs(want - got) <= 1e-6 * max(1.0, abs(want))
        else:
            same = want == got
        if not same:
            bad.append(f"{key}: config {want!r}, checkpoint {got!r}")
    if bad:
        raise WeightsError(f"{part} weights in {directory} do not match the model config: " + "; ".join(bad))


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], part: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming what differs."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or extra or shapes:
        raise WeightsError(
            f"{part}: checkpoint does not fit: missing {missing[:4]}, unexpected {extra[:4]}, "
            f"shape mismatch {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in shapes[:4]]}"
        )
    module.load_state_dict(state, strict=True)
