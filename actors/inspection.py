"""The inspection path behind the ingress: expert verdict first, the LLM only within budget.

    bytes -> decode + resize once (work size) -> expert (line) -> verdict
                                   └── gate? ── encoder -> LLM ── answer within budget_s
                                                 else skipped: disabled / not_requested /
                                                 not_flagged / overloaded / timeout / error

The expert verdict never waits on more than the budget: an LLM answer that is late is
reported as skipped ("timeout") and keeps counting against ``max_inflight`` until it ends,
so load shedding ("overloaded") reflects the work really in flight.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time

import numpy as np

from actors.modeling.errors import ImageDecodeError
from actors.modeling.lmm_errors import ModelInputError
from actors.modeling.overlay import colormap, overlay, to_png
from actors.modeling.preprocess import decode_image, resize_map, resize_rgb
from configs.serve_schema import GateConfig, LimitsConfig

log = logging.getLogger(__name__)


class InspectError(Exception):
    """A request the caller must fix (or retry): HTTP status, short kind, reason."""

    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(f"{error}: {reason}")
        self.status, self.error, self.reason = status, error, reason

    def as_dict(self) -> dict:
        return {"status": self.status, "error": self.error, "reason": self.reason}


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


class Pipeline:
    """Holds the deployment handles; one per ingress replica."""

    def __init__(self, experts: dict, multiplexed, encoder, llm, conversations,
                 work_size: int, limits: LimitsConfig) -> None:
        self.experts, self.multiplexed = experts, multiplexed
        self.encoder, self.llm, self.conversations = encoder, llm, conversations
        self.lines = sorted(experts) if experts else []
        self.work_size, self.limits = work_size, limits
        self.gate = GateConfig()
        self.inflight = 0
        self.background: set[asyncio.Task] = set()

    def set_lines(self, lines: list[str]) -> None:
        self.lines = sorted(lines)

    # -- inputs -------------------------------------------------------------------------
    def decode(self, data: bytes | np.ndarray, source: str = "upload") -> np.ndarray:
        """Bytes (or an RGB uint8 array) -> (work, work, 3) uint8. Blocking."""
        if isinstance(data, np.ndarray):
            if data.ndim != 3 or data.shape[2] != 3 or data.dtype != np.uint8:
                raise InspectError(422, "bad_image", f"expected RGB uint8 (H, W, 3), got {data.dtype} {data.shape}")
            if data.shape[0] * data.shape[1] > self.limits.max_image_pixels:
                raise InspectError(413, "image_too_large", f"{data.shape[1]}x{data.shape[0]} exceeds the pixel limit")
            image = data
        else:
            if len(data) > self.limits.max_body_bytes:
                raise InspectError(413, "too_large", f"{len(data)} bytes exceed {self.limits.max_body_bytes}")
            try:
                image = decode_image(data, self.limits.max_image_pixels, source)
            except ImageDecodeError as exc:
                status = 413 if exc.reason == "too large" else 422
                raise InspectError(status, "bad_image", str(exc)) from None
        return resize_rgb(image, self.work_size)

    def expert(self, line: str):
        if line not in self.lines:
            raise InspectError(404, "unknown_line", f"line {line!r} is not served; see GET /v1/lines")
        if self.multiplexed is not None:
            return self.multiplexed.options(multiplexed_model_id=line)
        return self.experts[line]

    # -- inspect ------------------------------------------------------------------------
    async def inspect(self, image: np.ndarray, line: str, frame_id: str | None = None,
                      llm_mode: str = "auto", question: str | None = None,
                      map_format: str = "none") -> dict:
        t0 = time.perf_counter()
        verdict = await self.expert(line).predict.remote(image, line)
        reason = self.gate_reason(llm_mode, verdict["anomalous"])
        amap = resize_map(verdict["map"], image.shape[0], image.shape[1]).clip(0.0, 1.0)
        if reason is None:
            llm = await self.ask_llm(image, amap, question, None, self.gate.budget_s)
        else:
            llm = skipped(reason)
        return {
            "ok": True, "frame_id": frame_id, "line": line, "anomalous": bool(verdict["anomalous"]),
            "score": verdict["score"], "threshold": verdict["threshold"], "expert_ms": verdict["ms"],
            "total_ms": (time.perf_counter() - t0) * 1000.0,
            "map_png": await asyncio.to_thread(render_map, image, amap, map_format), "llm": llm,
        }

    def gate_reason(self, llm_mode: str, anomalous: bool) -> str | None:
        """None when the LLM should run, else the skip reason."""
        if self.llm is None:
            return "disabled"
        if llm_mode == "never":
            return "not_requested"
        if llm_mode == "always":
            return None
        if self.gate.mode == "never":
            return "not_requested"
        if self.gate.mode == "always" or anomalous or random.random() < self.gate.sample_rate:
            return None
        return "not_flagged"

    async def ask_llm(self, image: np.ndarray | None, amap: np.ndarray | None, question: str | None,
                      conversation: dict | None, budget: float, tokens=None) -> dict:
        """Encoder -> LLM within ``budget`` seconds; never raises (returns skipped + reason)."""
        if self.inflight >= self.gate.max_inflight:
            return skipped("overloaded")
        t0 = time.perf_counter()
        self.inflight += 1
        if tokens is None:
            tokens = self.encoder.encode.remote(image, amap)
        history = conversation["turns"] if conversation else None
        task = asyncio.ensure_future(self._generate(tokens, question, history))
        try:
            answer = await asyncio.wait_for(asyncio.shield(task), budget)
        except asyncio.TimeoutError:
            self.background.add(task)
            task.add_done_callback(self.background.discard)
            return skipped("timeout")
        except ModelInputError as exc:  # the question (+ history) does not fit the context
            return {**skipped("prompt_too_long"), "text": str(exc)[:300]}
        except Exception as exc:  # noqa: BLE001 - the verdict must still go out
            log.warning("LLM failed: %s", exc)
            return skipped("error")
        return {"status": "answered", **answer, "ms": (time.perf_counter() - t0) * 1000.0}

    async def _generate(self, tokens, question, history) -> dict:
        try:
            return await self.llm.generate.remote(tokens, question, history)
        finally:
            self.inflight -= 1

    # -- chat ---------------------------------------------------------------------------
    async def chat(self, question: str, conversation_id: str | None, line: str | None,
                   image_bytes: bytes | None) -> dict:
        t0 = time.perf_counter()
        if self.llm is None:
            raise InspectError(409, "llm_disabled", "this deployment serves the expert only")
        if len(question) > self.limits.max_question_chars:
            raise InspectError(422, "question_too_long", f"at most {self.limits.max_question_chars} characters")
        expert_info, conv = None, None
        if conversation_id:
            conv = await self.conversations.get.remote(conversation_id)
            if conv is None:
                raise InspectError(404, "unknown_conversation", f"{conversation_id!r} is unknown or expired")
            if conv["full"]:
                raise InspectError(409, "conversation_full", f"at most {self.limits.max_turns} turns; start a new one")
            tokens = conv["tokens"]
        else:
            if not line or image_bytes is None:
                raise InspectError(422, "missing_image", "a new conversation needs `line` and `image_b64`")
            expert_handle = self.expert(line)
            image = await asyncio.to_thread(self.decode, image_bytes, "image_b64")
            verdict = await expert_handle.predict.remote(image, line)
            expert_info = {k: verdict[k] for k in ("score", "threshold", "anomalous")}
            amap = resize_map(verdict["map"], image.shape[0], image.shape[1]).clip(0.0, 1.0)
            tokens = await self.encoder.encode.remote(image, amap)
            conversation_id = await self.conversations.create.remote(line, tokens)
            conv = {"turns": []}
        result = await self.ask_llm(None, None, question, conv, self.gate.chat_budget_s, tokens=tokens)
        if result["status"] != "answered":
            status = {"overloaded": 429, "timeout": 504, "prompt_too_long": 422}.get(result["reason"], 500)
            raise InspectError(status, result["reason"], result.get("text") or "the LLM could not answer; retry later")
        turn = await self.conversations.append.remote(conversation_id, question, result["text"])
        return {"conversation_id": conversation_id, "turn": turn, "answer": result["text"],
                "verdict": result["verdict"], "expert": expert_info,
                "ms": (time.perf_counter() - t0) * 1000.0}


def render_map(image: np.ndarray, amap: np.ndarray, fmt: str) -> str | None:
    if fmt == "none":
        return None
    rgb = overlay(image, amap) if fmt == "overlay" else colormap(amap)
    return base64.b64encode(to_png(rgb)).decode("ascii")


def decode_b64(data: str, limit: int) -> bytes:
    if len(data) > limit * 4 // 3 + 4:
        raise InspectError(413, "too_large", f"image_b64 exceeds {limit} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        raise InspectError(422, "bad_base64", "image_b64 is not valid base64") from None

