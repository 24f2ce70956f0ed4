"""Wire types of the HTTP API (pydantic: validated in, documented in the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

LLMMode = Literal["auto", "always", "never"]  # auto: the live gate decides
MapFormat = Literal["none", "png", "overlay"]  # base64 PNG of the map / of the overlay


class ParsedVerdict(BaseModel):
    anomalous: bool | None
    positions: list[str]
    parsed: bool
    reason: str = ""


class LLMResult(BaseModel):
    status: Literal["answered", "skipped"]
    # skipped: disabled, not_requested, not_flagged, overloaded, timeout, error
    reason: str = ""
    text: str | None = None
    verdict: ParsedVerdict | None = None
    new_tokens: int | None = None
    ms: float | None = None


class InspectResponse(BaseModel):
    ok: bool = True
    frame_id: str | None = None
    line: str
    anomalous: bool = Field(description="the expert's verdict: score > threshold")
    score: float
    threshold: float
    expert_ms: float
    total_ms: float
    map_png: str | None = Field(None, description="base64 PNG (map or overlay), per `map`")
    llm: LLMResult


class ChatRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    conversation_id: str | None = Field(None, max_length=64)
    line: str | None = Field(None, max_length=64, description="needed to start a conversation")
    image_b64: str | None = Field(None, description="base64 image; needed to start a conversation")


class ChatResponse(BaseModel):
    conversation_id: str
    turn: int
    answer: str
    verdict: ParsedVerdict
    expert: dict | None = Field(None, description="score/threshold/anomalous on the first turn")
    ms: float


class LineHealth(BaseModel):
    line: str
    status: Literal["ok", "unavailable"]
    detail: dict = Field(default_factory=dict)


class LinesResponse(BaseModel):
    lines: list[LineHealth]


class ErrorBody(BaseModel):
    error: str
    reason: str
