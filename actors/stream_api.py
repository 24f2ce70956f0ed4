"""The stream consumers' batch API on the ingress: ``inspect_batch`` and ``answer_batch``.

The contract is ``streams.ingest``'s (plain dicts in and out, no pickled objects):

    inspect_batch(frames)   -> [ExpertResult dict | {"frame_id", "error": {"reason", "detail"}}]
    answer_batch(requests)  -> [LmmAnswer dict | {"frame_id", "error": {...}}]

``inspect_batch`` runs the expert only (decodes concurrently, one forward pass per line): the
verdict never waits on the LLM. It keeps each frame's decoded image and anomaly map for a while
(``cache`` frames, LRU) so that ``answer_batch`` for the flagged ones does not decode and score
them again (a frame that is no longer cached, e.g. answered by another ingress replica, is
scored again). ``answer_batch`` asks the LLM within the ingress gate (``max_inflight``,
``budget_s``); an answer refused for load (``overloaded``) or late (``timeout``) comes back as
``{"error": {"reason": "shed", ...}}``, which the consumer records as a shed answer.

Frame errors (undecodable image, unknown line, too large) are per-frame failures; system
errors (an expert replica died, a timeout) raise, so the consumer retries the batch.
"""

from __future__ import annotations

import asyncio
import collections
import time

import numpy as np

from actors.inspection import InspectError, Pipeline
from actors.modeling.grid import mask_to_positions, position_of_point
from actors.modeling.preprocess import resize_map

SHED_REASONS = ("overloaded", "timeout")


def map_positions(norm_map: np.ndarray) -> list[str]:
    """Grid cells of a normalised map (threshold at 0.5); the peak's cell when none is above."""
    cells = mask_to_positions(norm_map > 0.5)
    if cells:
        return cells
    y, x = np.unravel_index(int(np.argmax(norm_map)), norm_map.shape)
    return [position_of_point(y, x, *norm_map.shape)]


def failure(frame_id: str, reason: str, detail: str) -> dict:
    return {"frame_id": frame_id, "error": {"reason": reason, "detail": detail[:500]}}


class StreamBatches:
    """Per ingress replica: batch calls over the shared ``Pipeline``."""

    def __init__(self, pipeline: Pipeline, lmm_version: str | None, cache: int = 256) -> None:
        self.pipeline, self.lmm_version, self.cache_size = pipeline, lmm_version, cache
        self.cache: collections.OrderedDict[str, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self.versions: dict[str, str] = {}  # line -> expert version

    async def expert_version(self, line: str) -> str:
        if line not in self.versions:
            health = await self.pipeline.expert(line).health.remote(line)
            self.versions[line] = health.get("version") or f"patchcore/{health.get('category', line)}"
        return self.versions[line]

    async def _decode(self, frame: dict) -> np.ndarray | dict:
        """The frame's image at work size, or a failure dict (unknown line, bad image)."""
        fid = str(frame["frame_id"])
        try:
            self.pipeline.expert(frame["line"])
            return await asyncio.to_thread(self.pipeline.decode, frame["image"], f"frame {fid}")
        except InspectError as exc:
            kind = _image_reason(exc.reason, f"frame {fid}") if exc.error == "bad_image" else exc.error
            return failure(fid, kind, exc.reason)

    async def _score(self, frame: dict) -> tuple[np.ndarray, dict] | dict:
        """Decode + expert of one frame; (image, expert output) or a failure dict."""
        image = await self._decode(frame)
        if isinstance(image, dict):
            return image
        return image, await self.pipeline.expert(frame["line"]).predict.remote(image, frame["line"])

    def _result(self, frame: dict, image: np.ndarray, v: dict, version: str, t0: float) -> dict:
        fid, ng = str(frame["frame_id"]), bool(v["anomalous"])
        self._remember(fid, image, v["map"])
        return {"frame_id": fid, "score": float(v["score"]), "threshold": float(v["threshold"]),
                "decision": "NG" if ng else "OK", "positions": map_positions(v["map"]) if ng else [],
                "model_versions": {"expert": version, **({"lmm": self.lmm_version} if self.lmm_version else {})},
                "timings_ms": {"expert_ms": float(v["ms"]), "serve_ms": (time.perf_counter() - t0) * 1000.0}}

    async def inspect_batch(self, frames: list[dict]) -> list[dict]:
        """Decode every frame concurrently, then one expert call per line for the batch."""
        t0 = time.perf_counter()
        decoded = await asyncio.gather(*(self._decode(f) for f in frames))
        out: list = [d if isinstance(d, dict) else None for d in decoded]
        by_line: dict[str, list[int]] = collections.defaultdict(list)
        for i, (f, d) in enumerate(zip(frames, decoded)):
            if not isinstance(d, dict):
                by_line[f["line"]].append(i)

        async def score(line: str, idx: list[int]) -> None:
            preds = await self.pipeline.expert(line).predict_many.remote([decoded[i] for i in idx], line)
            version = await self.expert_version(line)
            for i, v in zip(idx, preds):
                out[i] = self._result(frames[i], decoded[i], v, version, t0)

        await asyncio.gather(*(score(line, idx) for line, idx in by_line.items()))
        return out

    async def _answer_one(self, req: dict) -> dict:
        t0, fid = time.perf_counter(), str(req["frame_id"])
        if self.pipeline.llm is None:
            return failure(fid, "disabled", "this deployment serves the expert only (serve.llm.enabled false)")
        cached = self.cache.get(fid)
        if cached is None:
            scored = await self._score(req)
            if isinstance(scored, dict):
                return scored
            cached = (scored[0], scored[1]["map"])
        image, norm = cached
        amap = resize_map(norm, image.shape[0], image.shape[1]).clip(0.0, 1.0)
        out = await self.pipeline.ask_llm(image, amap, None, None, self.pipeline.gate.budget_s)
        self.cache.pop(fid, None)
        if out["status"] != "answered":
            kind = "shed" if out["reason"] in SHED_REASONS else out["reason"]
            return failure(fid, kind, f"LLM {out['reason']} (ingress gate: max_inflight "
                                      f"{self.pipeline.gate.max_inflight}, budget {self.pipeline.gate.budget_s:g}s)")
        verdict = out.get("verdict") or {}
        return {"frame_id": fid, "answer": out["text"], "anomalous": verdict.get("anomalous"),
                "positions": list(verdict.get("positions") or []), "model_version": self.lmm_version or "",
                "timings_ms": {"lmm_ms": (time.perf_counter() - t0) * 1000.0}}

    async def answer_batch(self, requests: list[dict]) -> list[dict]:
        return list(await asyncio.gather(*(self._answer_one(r) for r in requests)))

    def _remember(self, frame_id: str, image: np.ndarray, norm_map: np.ndarray) -> None:
        self.cache[frame_id] = (image, norm_map)
        self.cache.move_to_end(frame_id)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)


def _image_reason(text: str, source: str) -> str:
    """The decoder's short reason ("corrupt", "too large", ...) out of "<source>: <reason> (detail)"."""
    rest = text[len(source) + 2:] if text.startswith(source + ": ") else text
    head = rest.split(" (", 1)[0].strip()
    return head if head and len(head) <= 40 else "bad_image"
