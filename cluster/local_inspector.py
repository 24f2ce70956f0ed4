"""A Ray actor that fulfils the streams' inference handle contract with the real expert.

Stands in for the Serve application where one is not running (the stream benchmark, the
streams tests): ``inspect_batch`` decodes each frame with the one preprocessing path
(``actors.modeling.preprocess``), runs PatchCore over a saved bank and returns ExpertResult
dicts (FrameFailure for an image that does not decode); ``answer_batch`` runs the Myriad LMM
built from ``cfg.model`` when ``with_lmm`` (else every answer is a FrameFailure "no LMM").
The contract itself is documented in ``streams.ingest``.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import ray


def _versions(bank_dir: Path, category: str) -> dict[str, str]:
    digest = hashlib.sha1((Path(bank_dir) / "bank.json").read_bytes()).hexdigest()[:10]
    return {"expert": f"patchcore/{category}@{digest}"}


def _positions(amap: np.ndarray, threshold: float) -> list[str]:
    """Grid cells of the map above the threshold (the peak's cell when smoothing hid them)."""
    from actors.modeling.grid import mask_to_positions, position_of_point

    cells = mask_to_positions(amap > threshold)
    if cells:
        return cells
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    return [position_of_point(y, x, *amap.shape)]


class LocalInspector:
    """Plain object (usable in-process); ``InspectorActor`` is its Ray actor."""

    def __init__(self, cfg_json: dict, bank_dir: str, torch_threads: int = 1, with_lmm: bool = False,
                 map_cache: int = 256) -> None:
        import torch

        from actors.modeling.bank import bank_config, open_bank
        from configs.schema import MyriadClusterConfig

        torch.set_num_threads(max(1, torch_threads))
        self.cfg = MyriadClusterConfig.model_validate(cfg_json)
        self.expert_cfg = bank_config(Path(bank_dir), self.cfg.expert)
        self.expert, self.meta = open_bank(Path(bank_dir), self.expert_cfg, self.cfg.paths.weights_dir)
        self.versions = _versions(Path(bank_dir), self.meta.category)
        self.lmm = None
        if with_lmm:
            from actors.modeling.myriad import build_myriad

            if self.cfg.model is None:
                raise ValueError("with_lmm needs a config with a `model` section")
            self.lmm = build_myriad(self.cfg.model, self.cfg.paths.weights_dir).eval()
            self.versions["lmm"] = f"myriad/{self.cfg.preset}"
        self.maps: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.map_cache = map_cache
        self._expert_lock, self._lmm_lock = threading.Lock(), threading.Lock()

    def _decode(self, frames: list[dict]) -> tuple[list, dict[int, dict]]:
        from actors.modeling.errors import ImageDecodeError
        from actors.modeling.preprocess import decode_image

        images, failures = [], {}
        for i, f in enumerate(frames):
            try:
                images.append((i, decode_image(f["image"], self.expert_cfg.max_image_pixels, f["frame_id"])))
            except ImageDecodeError as exc:
                failures[i] = {"frame_id": f["frame_id"], "error": {"reason": exc.reason, "detail": str(exc)[:300]}}
        return images, failures

    def inspect_batch(self, frames: list[dict]) -> list[dict]:
        from actors.modeling.preprocess import to_batch

        t0 = time.perf_counter()
        images, out = self._decode(frames)
        t1 = time.perf_counter()
        if images:
            mean, std = self.expert.mean_std
            with self._expert_lock:
                pred = self.expert.predict(to_batch([im for _, im in images], self.expert_cfg.image_size, mean, std))
            t2 = time.perf_counter()
            per = {"decode_ms": 1000 * (t1 - t0) / len(frames), "expert_ms": 1000 * (t2 - t1) / len(images)}
            thr = float(self.meta.threshold)
            for (i, _), score, amap in zip(images, pred.scores, pred.anomaly_maps):
                ng = float(score) > thr
                fid = frames[i]["frame_id"]
                self._remember(fid, amap)
                out[i] = {"frame_id": fid, "score": float(score), "threshold": thr, "decision": "NG" if ng else "OK",
                          "positions": _positions(amap, thr) if ng else [],
                          "model_versions": self.versions, "timings_ms": per}
        return [out[i] for i in range(len(frames))]

    def _remember(self, frame_id: str, amap: np.ndarray) -> None:
        self.maps[frame_id] = amap
        while len(self.maps) > self.map_cache:
            self.maps.popitem(last=False)

    def answer_batch(self, requests: list[dict]) -> list[dict]:
        if self.lmm is None:
            return [{"frame_id": r["frame_id"], "error": {"reason": "no LMM", "detail": "this inspector runs the expert only"}}
                    for r in requests]
        from actors.modeling.patchcore import normalized_map
        from actors.modeling.preprocess import resize_map

        t0 = time.perf_counter()
        images, out = self._decode(requests)
        if images:
            maps = []
            for i, im in images:
                amap = self.maps.get(requests[i]["frame_id"])  # evicted: no map, the LMM sees zeros
                norm = normalized_map(amap, float(self.meta.threshold)) if amap is not None else None
                maps.append(np.clip(resize_map(norm, im.shape[0], im.shape[1]), 0, 1) if norm is not None else None)
            with self._lmm_lock:
                inputs = self.lmm.preprocessor([im for _, im in images], maps)
                answers = self.lmm.generate(inputs.pixel_values, inputs.maps, [None] * len(images))
            ms = 1000 * (time.perf_counter() - t0) / len(images)
            for (i, _), a in zip(images, answers):
                out[i] = {"frame_id": requests[i]["frame_id"], "answer": a.text, "anomalous": a.verdict.anomalous,
                          "positions": list(a.verdict.positions), "model_version": self.versions["lmm"],
                          "timings_ms": {"lmm_ms": ms}}
        return [out[i] for i in range(len(requests))]

    def self_bench(self, images: list[bytes], frames: int, batch: int) -> float:
        """In-process images/s of ``inspect_batch`` here (no Kafka, no Ray calls): the reference."""
        reqs = [{"frame_id": f"bench-{i}", "image": images[i % len(images)]} for i in range(frames)]
        self.inspect_batch(reqs[:batch])  # warm-up
        t0 = time.perf_counter()
        for i in range(0, frames, batch):
            self.inspect_batch(reqs[i : i + batch])
        return frames / (time.perf_counter() - t0)

    def ready(self) -> dict:
        return {"category": self.meta.category, "threshold": float(self.meta.threshold), **self.versions}


InspectorActor = ray.remote(max_concurrency=4)(LocalInspector)


def start_inspector(cfg, bank_dir: Path, *, name: str | None = None, num_cpus: float = 1.0,
                    torch_threads: int = 1, with_lmm: bool = False):
    """An ``InspectorActor`` (named ``name`` when given, for ``ray.get_actor`` factories), loaded.

    Keep the returned handle: a named, non-detached actor dies with its last handle.
    """
    opts = {"num_cpus": num_cpus, "max_restarts": -1, "max_task_retries": 0}
    if name:
        opts.update(name=name, lifetime=None)
    actor = InspectorActor.options(**opts).remote(cfg.model_dump(mode="json"), str(bank_dir), torch_threads, with_lmm)
    ray.get(actor.ready.remote())
    return actor


def inspector_name(line: str) -> str:
    return f"myriad-inspector-{line}"


def named_inspector(line: str):
    """A ``handle_factory`` for ``streams.ingest.run_line_consumers``: the line's named inspector."""
    return ray.get_actor(inspector_name(line))
