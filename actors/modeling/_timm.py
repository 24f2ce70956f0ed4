"""Import timm beside the CPU torch build.

PyPI's torchvision wheel registers fake kernels for ``torchvision::nms``/``qnms`` at import,
but its compiled ops do not load against torch 2.13.0+cpu ("operator torchvision::nms does
not exist"), which breaks ``import timm``. Where that happens we define the two operator
schemas and import again; the project never calls those ops (shared/PLATFORM.md). Where
torchvision imports cleanly (a matching CUDA build) nothing is changed.
"""

from __future__ import annotations

import sys

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_LIB: torch.library.Library | None = None


def ensure_torchvision_importable() -> None:
    global _LIB
    try:
        import torchvision  # noqa: F401

        return
    except RuntimeError as exc:
        if "torchvision::" not in str(exc) or _LIB is not None:
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    _LIB = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        _LIB.define(schema)
    import torchvision  # noqa: F401,F811


def import_timm():  # -> the timm module
    ensure_torchvision_importable()
    import timm

    return timm
