"""The HTTP ingress (FastAPI) and the handle-level API that stream consumers call.

HTTP (OpenAPI at ``/docs`` and ``/openapi.json``); every ``/v1`` route needs
``Authorization: Bearer <token>`` when a token is configured (``serve.auth``):

- ``POST /v1/inspect?line=L[&llm=auto|always|never][&map=none|png|overlay][&question=...]``
  body: the raw image bytes (PNG, JPEG, ...) -> ``InspectResponse`` (expert verdict, score,
  threshold, map as base64 PNG, LLM answer or why it was skipped).
- ``POST /v1/chat`` JSON ``ChatRequest``: the first turn sends ``line`` + ``image_b64``,
  follow-ups send the returned ``conversation_id``.
- ``GET /v1/lines``: configured lines and their health. ``GET /v1/stats``: this replica's
  counters. ``GET /healthz``: liveness (no auth). Metrics also go to Ray's metrics
  (Prometheus): ``myriad_requests_total``, ``myriad_request_ms``, ``myriad_decisions_total``,
  ``myriad_llm_skipped_total``.

Errors are 4xx with ``{"detail": {"error": kind, "reason": text}}``: 401 bad/missing token,
404 unknown line/conversation, 413 oversize body/image, 422 bad image/JSON/question,
409 full conversation or LLM disabled, 429 LLM overloaded (chat).

Handle API (for ``streams``: no actors import needed, plain Python values in and out)::

    handle = serve.get_app_handle("myriad")
    verdict = await handle.inspect.remote(frame, line, frame_id, want_llm)  # -> dict

``frame`` is encoded image bytes or an RGB uint8 array (H, W, 3); ``want_llm`` is "auto"
(the live gate), "always" or "never". The dict has the ``InspectResponse`` fields; a frame
the caller must drop (undecodable, unknown line, too large) gives
``{"ok": False, "frame_id", "line", "error": {"status", "error", "reason"}}`` instead of
raising, so a consumer can send it to its dead-letter queue.

Batch API for the stream consumers (``streams.ingest``'s handle contract; ``actors.stream_api``)::

    results = await handle.inspect_batch.remote(frames)   # expert verdicts only, never the LLM
    answers = await handle.answer_batch.remote(requests)  # LLM answers of flagged frames, or shed
"""

# No `from __future__ import annotations`: Serve resolves the route signatures at run time.

import asyncio
import hmac
import logging
import os
import time
from pathlib import Path

import numpy as np
from pydantic import ValidationError
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics

from actors.ingress_models import (
    ChatRequest, ChatResponse, InspectResponse, LineHealth, LinesResponse, LLMMode, MapFormat,
)
from actors.inspection import InspectError, Pipeline, decode_b64
from actors.stream_api import StreamBatches
from configs.serve_schema import AuthConfig, GateConfig, LimitsConfig

log = logging.getLogger(__name__)
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    m: {"schema": {"type": "string", "format": "binary"}}
    for m in ("application/octet-stream", "image/png", "image/jpeg")}}}

CHAT_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": ChatRequest.model_json_schema()}}}}

api = FastAPI(title="Myriad Cluster", version="1",
              description="Industrial inspection: PatchCore experts + the Myriad LMM on Ray Serve.")


def load_token(auth: AuthConfig) -> str | None:
    """The bearer token from ``auth.token_file`` or the ``auth.token_env`` variable."""
    token = None
    if auth.token_file is not None:
        try:
            token = Path(auth.token_file).read_text().strip() or None
        except OSError as exc:
            raise RuntimeError(f"serve.auth.token_file {auth.token_file}: {exc.strerror}") from None
    if token is None and auth.token_env:
        token = os.environ.get(auth.token_env, "").strip() or None
    if token is None and auth.required:
        raise RuntimeError(
            f"serve.auth.required but no token: set {auth.token_env or 'serve.auth.token_env'} or "
            "serve.auth.token_file on the nodes that run the ingress")
    return token


# Declares the scheme in the OpenAPI schema; the token is checked in each route (the route
# methods run on the replica; Serve copies ``api`` with its dependencies by value).
_bearer = HTTPBearer(auto_error=False, description="serve.auth token (when configured)")
Bearer = Depends(_bearer)


def check_auth(creds: HTTPAuthorizationCredentials | None, token: str | None) -> None:
    if token is None:
        return
    if creds is None or not hmac.compare_digest(creds.credentials.strip().encode(), token.encode()):
        raise HTTPException(401, {"error": "unauthorized", "reason": "missing or wrong bearer token"},
                            headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise InspectError(413, "too_large", f"body of {length} bytes exceeds {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InspectError(413, "too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_chat(body: bytes) -> ChatRequest:
    try:
        return ChatRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InspectError(422, "bad_request", f"{where}: {err['msg']}") from None


@api.exception_handler(InspectError)
async def _inspect_error(request: Request, exc: InspectError) -> JSONResponse:
    return JSONResponse({"detail": {"error": exc.error, "reason": exc.reason}}, status_code=exc.status)


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Ingress:
    def __init__(self, experts: dict, multiplexed, encoder, llm, conversations,
                 work_size: int, limits: dict, auth: dict, lmm_version: str | None = None) -> None:
        self.limits = LimitsConfig.model_validate(limits)
        self.token = load_token(AuthConfig.model_validate(auth))
        lines = sorted(experts) if experts else sorted(multiplexed[1])
        self.pipeline = Pipeline(experts or {}, multiplexed[0] if multiplexed else None,
                                 encoder, llm, conversations, work_size, self.limits)
        self.pipeline.set_lines(lines)
        self.batches = StreamBatches(self.pipeline, lmm_version if llm is not None else None)
        self.stats: dict = {"requests": {}, "decisions": {}, "llm": {}}
        self._requests = metrics.Counter("myriad_requests_total", "HTTP requests", tag_keys=("route", "status"))
        self._latency = metrics.Histogram("myriad_request_ms", "request latency (ms)",
                                          boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 5000, 30000],
                                          tag_keys=("route",))
        self._decisions = metrics.Counter("myriad_decisions_total", "expert verdicts", tag_keys=("line", "verdict"))
        self._skips = metrics.Counter("myriad_llm_skipped_total", "LLM answers skipped", tag_keys=("reason",))

    # -- HTTP routes ------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/lines", response_model=LinesResponse)
    async def lines(self, creds: HTTPAuthorizationCredentials | None = Bearer) -> LinesResponse:
        check_auth(creds, self.token)
        return LinesResponse(lines=await self.lines_health())

    @api.get("/v1/stats")
    async def get_stats(self, creds: HTTPAuthorizationCredentials | None = Bearer) -> dict:
        check_auth(creds, self.token)
        return self.stats

    @api.post("/v1/inspect", response_model=InspectResponse, openapi_extra=IMAGE_BODY)
    async def inspect_http(
        self, request: Request,
        line: str = Query(..., max_length=64),
        llm: LLMMode = "auto",
        map: MapFormat = "png",  # noqa: A002 - the query parameter's public name
        question: str | None = Query(None, min_length=1, max_length=4000),
        frame_id: str | None = Query(None, max_length=128),
        creds: HTTPAuthorizationCredentials | None = Bearer,
    ) -> dict:
        check_auth(creds, self.token)
        t0 = time.perf_counter()
        try:
            body = await read_body(request, self.limits.max_body_bytes)
            self.pipeline.expert(line)  # 404 before decoding
            image = await asyncio.to_thread(self.pipeline.decode, body)
            out = await self.pipeline.inspect(image, line, frame_id, llm, question, map)
        except InspectError as exc:
            self.count("/v1/inspect", exc.status)
            raise
        self.observe(out, "/v1/inspect", t0)
        return out

    @api.post("/v1/chat", response_model=ChatResponse, openapi_extra=CHAT_BODY)
    async def chat(self, request: Request, creds: HTTPAuthorizationCredentials | None = Bearer) -> dict:
        check_auth(creds, self.token)  # before the body is parsed
        t0 = time.perf_counter()
        try:
            req = parse_chat(await read_body(request, self.limits.max_body_bytes))
            image = decode_b64(req.image_b64, self.limits.max_body_bytes) if req.image_b64 else None
            out = await self.pipeline.chat(req.question, req.conversation_id, req.line, image)
        except InspectError as exc:
            self.count("/v1/chat", exc.status)
            raise
        self.count("/v1/chat", 200, t0)
        return out

    def reconfigure(self, user_config: dict) -> None:
        """``{"gate": GateConfig}``: when the LLM runs, its budget and load shedding (live)."""
        self.pipeline.gate = GateConfig.model_validate(user_config.get("gate") or {})
        log.info("gate now %s", self.pipeline.gate)

    # -- bookkeeping ----------------------------------------------------------------------
    def count(self, route: str, status: int, t0: float | None = None) -> None:
        key = f"{route} {status}"
        self.stats["requests"][key] = self.stats["requests"].get(key, 0) + 1
        self._requests.inc(tags={"route": route, "status": str(status)})
        if t0 is not None:
            self._latency.observe((time.perf_counter() - t0) * 1000.0, tags={"route": route})

    def observe(self, out: dict, route: str, t0: float | None) -> None:
        verdict = "anomalous" if out["anomalous"] else "normal"
        key = f"{out['line']} {verdict}"
        self.stats["decisions"][key] = self.stats["decisions"].get(key, 0) + 1
        self._decisions.inc(tags={"line": out["line"], "verdict": verdict})
        llm = out["llm"]
        name = "answered" if llm["status"] == "answered" else llm["reason"]
        self.stats["llm"][name] = self.stats["llm"].get(name, 0) + 1
        if llm["status"] != "answered":
            self._skips.inc(tags={"reason": llm["reason"]})
        self.count(route, 200, t0)

    async def lines_health(self) -> list[LineHealth]:
        async def one(line: str) -> LineHealth:
            try:
                detail = await asyncio.wait_for(self.pipeline.expert(line).health.remote(line), 30)
                return LineHealth(line=line, status="ok", detail=detail)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                return LineHealth(line=line, status="unavailable", detail={"reason": str(exc)[:200]})

        return list(await asyncio.gather(*(one(line) for line in self.pipeline.lines)))

    # -- handle API -------------------------------------------------------------------------
    async def inspect(self, frame: bytes | np.ndarray, line: str, frame_id: str | None = None,
                      want_llm: str = "auto", map_format: str = "none") -> dict:
        """One frame -> verdict dict (see the module docstring); user errors as ``ok: False``."""
        t0 = time.perf_counter()
        try:
            if want_llm not in ("auto", "always", "never"):
                raise InspectError(422, "bad_argument", f"want_llm {want_llm!r}")
            self.pipeline.expert(line)
            image = await asyncio.to_thread(self.pipeline.decode, frame, f"frame {frame_id}")
            out = await self.pipeline.inspect(image, line, frame_id, want_llm, None, map_format)
        except InspectError as exc:
            self.count("handle.inspect", exc.status)
            return {"ok": False, "frame_id": frame_id, "line": line, "error": exc.as_dict()}
        self.observe(out, "handle.inspect", t0)
        return out

    async def inspect_batch(self, frames: list[dict]) -> list[dict]:
        """Stream frames -> expert results (or per-frame failures), same order; see ``actors.stream_api``."""
        t0 = time.perf_counter()
        out = await self.batches.inspect_batch(frames)
        lines = {f["frame_id"]: f["line"] for f in frames}
        for r in out:
            if "error" in r:
                continue
            key = f"{lines.get(r['frame_id'], '?')} {'anomalous' if r['decision'] == 'NG' else 'normal'}"
            self.stats["decisions"][key] = self.stats["decisions"].get(key, 0) + 1
            self._decisions.inc(tags=dict(zip(("line", "verdict"), key.split(" "))))
        self.count("handle.inspect_batch", 200, t0)
        return out

    async def answer_batch(self, requests: list[dict]) -> list[dict]:
        """Flagged stream frames -> LLM answers within the gate, or ``shed`` failures."""
        return await self.batches.answer_batch(requests)

