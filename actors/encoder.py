"""The encoder/VPG deployment: image + expert map -> visual tokens for the LLM.

Runs the Myriad model's visual half (VE-guided ViT + adapter, VPG, Q-Former, projection,
TPG: ``MyriadModel.encode``) batched with ``@serve.batch``; the LLM half runs in
``actors.llm_server``. Both halves load the same model from one ``spec`` (a trained model
directory, or the config's ``model:`` section with its configured weights), so they always
agree; each drops the half it does not run.

Handle API: ``encode(image (H, W, 3) uint8, map (H, W) float32 in [0, 1]) -> (V, D_llm)``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import numpy as np
import torch
from ray import serve

log = logging.getLogger(__name__)
# Heavy visual parts the LLM ranks drop (vpg and tpg stay: they size the visual prefix).
VISUAL_PARTS = ("vision", "adapter", "qformer", "projection")


def model_spec(model_cfg, model_dir: Path | None, weights_dir: Path) -> dict:
    """A JSON-able description of which model to load (shipped to replicas and ranks)."""
    return {
        "model_dir": str(model_dir) if model_dir else None,
        "model": model_cfg.model_dump(mode="json") if model_cfg is not None else None,
        "weights_dir": str(weights_dir),
    }


def load_serving_model(spec: dict, keep: str = "all"):
    """Load the model of ``spec``; ``keep`` = "visual" drops the LLM, "llm" the visual parts."""
    from actors.modeling.checkpoint import load_model_dir
    from actors.modeling.myriad import build_myriad
    from configs.model_schema import ModelConfig

    if spec.get("model_dir"):
        model = load_model_dir(Path(spec["model_dir"]))
    else:
        model = build_myriad(ModelConfig.model_validate(spec["model"]), Path(spec["weights_dir"]))
    if keep == "visual":
        model.llm = None
    elif keep == "llm":
        for name in VISUAL_PARTS:
            setattr(model, name, None)
    return model.eval()


def _threads() -> None:
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))


@serve.deployment(name="encoder", ray_actor_options={"num_cpus": 0.1})
class Encoder:
    def __init__(self, spec: dict, batching: dict) -> None:
        _threads()
        self.model = load_serving_model(spec, keep="visual")
        self.llm_width = self.model.config.llm.hidden_size
        self._encode_batch.set_max_batch_size(batching["max_batch_size"])
        self._encode_batch.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])

    async def encode(self, image: np.ndarray, amap: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 + (H, W) map in [0, 1] -> visual tokens (V, D_llm) float32."""
        return await self._encode_batch(image, amap)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, images: list[np.ndarray], maps: list[np.ndarray]) -> list[np.ndarray]:
        out = await asyncio.to_thread(self._encode, images, maps)
        return list(out)

    @torch.inference_mode()
    def _encode(self, images: list[np.ndarray], maps: list[np.ndarray]) -> np.ndarray:
        inputs = self.model.preprocessor(images, maps)
        tokens = self.model.encode(inputs.pixel_values, inputs.maps).joined()  # (B, V, D)
        return tokens.float().numpy()
