"""The expert deployment: per-line PatchCore over sharded FAISS actors (DESIGN.md 5).

A replica holds one or more lines. Each ``LineExpert`` owns its bank's shard actors
(``actors.vision_expert.open_sharded_expert``: queries fan out to every shard, top-k merged
exactly). Two layouts, chosen by ``serve.expert.multiplex``:

- one deployment per line (``expert-<line>``), the bank loaded at start;
- one ``expert`` deployment for all lines, banks loaded on demand per replica (LRU of
  ``max_lines_per_replica``) with Serve model multiplexing; callers route by line with
  ``handle.options(multiplexed_model_id=line)``.

Thresholds are live: ``user_config = {"thresholds": {line: value}}`` overrides the bank's
calibrated threshold (or the config's) without a redeploy.

Handle API: ``predict(image (S, S, 3) uint8, line) -> dict`` with ``score``, ``threshold``,
``anomalous``, ``map`` ((S_e, S_e) float32 in [0, 1], background-centred, the bank's
calibrated threshold at 0.5: ``patchcore.lmm_map``, as the LMM was trained; a live threshold
moves the verdict, not the map), ``ms``;
``predict_many(images, line) -> [dict]`` the same for a batch in one forward pass.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from pathlib import Path

import numpy as np
import torch
from ray import serve

from actors.modeling.bank import bank_config, read_meta
from actors.modeling.patchcore import lmm_map
from actors.modeling.preprocess import to_batch
from actors.vision_expert import open_sharded_expert
from configs.schema import ExpertConfig

log = logging.getLogger(__name__)


class UnknownLine(KeyError):
    """A line id this deployment does not serve."""


class LineExpert:
    """One production line's bank as shard actors plus the feature extractor."""

    def __init__(self, line: str, bank: str, base_cfg: dict, weights_dir: str,
                 shard_options: dict, threshold: float | None) -> None:
        self.line = line
        cfg = bank_config(Path(bank), ExpertConfig.model_validate(base_cfg))
        self.expert, self.meta = open_sharded_expert(Path(bank), cfg, Path(weights_dir), shard_options)
        self.size = cfg.image_size
        self.base_threshold = float(threshold or self.meta.threshold)
        digest = hashlib.sha1((Path(bank) / "bank.json").read_bytes()).hexdigest()[:10]
        self.version = f"patchcore/{self.meta.category}@{digest}"

    def predict(self, image: np.ndarray, threshold: float | None) -> dict:
        """Blocking: (H, W, 3) uint8 -> score, verdict and the normalised map."""
        return self.predict_many([image], threshold)[0]

    def predict_many(self, images: list[np.ndarray], threshold: float | None) -> list[dict]:
        """Blocking: one forward pass over a batch of (H, W, 3) uint8 images -> one dict each."""
        t0 = time.perf_counter()
        thr = float(threshold or self.base_threshold)
        mean, std = self.expert.mean_std
        out = self.expert.predict(to_batch(images, self.size, mean, std))
        ms = (time.perf_counter() - t0) * 1000.0 / max(1, len(images))
        return [{"line": self.line, "score": float(score), "threshold": thr, "anomalous": float(score) > thr,
                 "map": lmm_map(amap, self.meta.threshold, self.meta.normal_level), "ms": ms}
                for score, amap in zip(out.scores, out.anomaly_maps)]

    def health(self) -> dict:
        return {"line": self.line, "shards": len(self.expert.searcher.shards),
                "bank_size": self.meta.size, "threshold": self.base_threshold,
                "category": self.meta.category, "version": self.version}

    def __del__(self) -> None:  # Serve's multiplexing calls this on LRU eviction
        searcher = getattr(getattr(self, "expert", None), "searcher", None)
        if searcher is not None and searcher.shards:
            searcher.close()


def check_lines(lines: dict[str, dict]) -> None:
    """Fail fast (at build time, in the driver) on a missing or unreadable bank."""
    for spec in lines.values():
        read_meta(Path(spec["bank"]))


@serve.deployment(name="expert", ray_actor_options={"num_cpus": 0.1})
class Expert:
    def __init__(self, lines: dict[str, dict], expert_cfg: dict, weights_dir: str,
                 shard_options: dict, multiplex: bool = False, max_lines: int = 2) -> None:
        torch.set_num_threads(1)
        self.specs = lines
        self.args = (expert_cfg, weights_dir, shard_options)
        self.thresholds: dict[str, float] = {}
        self.loaded: dict[str, LineExpert] = {}
        self.multiplex = multiplex
        if multiplex:
            async def load(line: str) -> LineExpert:  # a plain function: Serve tags it
                return await asyncio.to_thread(self._open, line)

            self._get = serve.multiplexed(max_num_models_per_replica=max_lines)(load)
        else:
            for line in lines:
                self.loaded[line] = self._open(line)

    def _open(self, line: str) -> LineExpert:
        spec = self.specs[line]
        return LineExpert(line, spec["bank"], *self.args, spec.get("threshold"))

    async def line(self, line: str) -> LineExpert:
        if line not in self.specs:
            raise UnknownLine(line)
        if self.multiplex:
            return await self._get(line)
        return self.loaded[line]

    def reconfigure(self, user_config: dict) -> None:
        """``{"thresholds": {line: float}}``: live decision thresholds."""
        thresholds = dict(user_config.get("thresholds") or {})
        unknown = sorted(set(thresholds) - set(self.specs))
        if unknown:
            raise ValueError(f"thresholds for unknown lines {unknown}")
        if any(not float(v) > 0 for v in thresholds.values()):
            raise ValueError("thresholds must be positive")
        self.thresholds = {k: float(v) for k, v in thresholds.items()}
        log.info("expert thresholds now %s", self.thresholds)

    async def predict(self, image: np.ndarray, line: str) -> dict:
        expert = await self.line(line)
        return await asyncio.to_thread(expert.predict, image, self.thresholds.get(line))

    async def predict_many(self, images: list[np.ndarray], line: str) -> list[dict]:
        """A batch of one line's images in one forward pass (the stream consumers' path)."""
        expert = await self.line(line)
        return await asyncio.to_thread(expert.predict_many, images, self.thresholds.get(line))

    async def health(self, line: str) -> dict:
        expert = await self.line(line)
        return {**expert.health(), "threshold": self.thresholds.get(line, expert.base_threshold)}
