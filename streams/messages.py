"""What travels on the streams' topics, and what the inference handle takes and returns.

Frame record (``<prefix>.<line>.frames``): key = camera id (UTF-8); value = the encoded image
(JPEG/PNG/... bytes, as a camera gateway sends it); headers (UTF-8 values)::

    frame_id        unique id of the frame, [A-Za-z0-9._:-], 1..128 chars (the verdict key)
    line            the production line; must equal the topic's line
    camera          camera id; must equal the record key
    capture_ts_ms   capture time, integer milliseconds since the epoch
    content_type    image/jpeg, image/png, ... (must match the bytes)

Verdict record (``<prefix>.<line>.verdicts``): key = frame id; value = ``Verdict`` as JSON
(``schema_version``). DLQ record (``<prefix>.<line>.dlq``): the original key, value and
headers plus ``dlq_reason``, ``dlq_detail``, ``dlq_stage`` and ``dlq_source`` headers (the
value is dropped, ``dlq_original_bytes`` kept, when the record itself was too large).
No pickles anywhere: bytes, UTF-8 headers and JSON.
"""

from __future__ import annotations

import io
import re
import time
import warnings
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

VERDICT_SCHEMA_VERSION = 1
HEADERS = ("frame_id", "line", "camera", "capture_ts_ms", "content_type")
FRAME_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp",
                 "TIFF": "image/tiff", "WEBP": "image/webp"}
# Captures older than this or in the future beyond the skew are refused as wrong headers.
MIN_CAPTURE_MS = 946_684_800_000  # 2000-01-01
MAX_CLOCK_SKEW_MS = 24 * 3600 * 1000


class Reason:
    """DLQ reasons (short, stable, machine-friendly); the detail says more."""

    EMPTY = "empty"
    RECORD_TOO_LARGE = "record too large"
    MISSING_HEADER = "missing header"
    BAD_HEADER = "bad header"
    UNKNOWN_LINE = "unknown line"
    NOT_AN_IMAGE = "not an image"
    UNSUPPORTED_FORMAT = "unsupported format"
    CONTENT_TYPE_MISMATCH = "content type mismatch"
    IMAGE_TOO_LARGE = "image too large"
    TRUNCATED = "truncated"
    INFERENCE = "inference failed"


class FrameError(ValueError):
    """A record that cannot become a ``Frame`` (or cannot be inspected): goes to the DLQ."""

    def __init__(self, reason: str, detail: str = "", stage: str = "decode") -> None:
        self.reason, self.detail, self.stage = reason, detail, stage
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Frame:
    """A decoded frame record. ``image`` is still encoded (JPEG/PNG bytes)."""

    frame_id: str
    line: str
    camera: str
    capture_ts_ms: int
    content_type: str
    image: bytes
    width: int = 0
    height: int = 0

    def headers(self) -> list[tuple[str, bytes]]:
        return [("frame_id", self.frame_id.encode()), ("line", self.line.encode()),
                ("camera", self.camera.encode()), ("capture_ts_ms", str(self.capture_ts_ms).encode()),
                ("content_type", self.content_type.encode())]

    def key(self) -> bytes:
        return self.camera.encode()

    def request(self) -> dict:
        """The inference handle's input for this frame (see ``streams.ingest`` for the contract)."""
        return {"frame_id": self.frame_id, "line": self.line, "camera": self.camera,
                "capture_ts_ms": self.capture_ts_ms, "content_type": self.content_type,
                "image": self.image}


def _header_map(headers) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, value in headers or ():
        if name in out:
            raise FrameError(Reason.BAD_HEADER, f"header {name!r} appears twice")
        out[name] = value if value is not None else b""
    return out


def _text(headers: dict[str, bytes], name: str) -> str:
    if name not in headers:
        raise FrameError(Reason.MISSING_HEADER, name)
    try:
        value = headers[name].decode("utf-8").strip()
    except UnicodeDecodeError:
        raise FrameError(Reason.BAD_HEADER, f"{name} is not UTF-8") from None
    if not value:
        raise FrameError(Reason.BAD_HEADER, f"{name} is empty")
    return value


def inspect_image_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """(PIL format, width, height) from the image header, without decoding pixels.

    Refuses non-images, unsupported formats, images above ``max_pixels`` (decompression-bomb
    guard, from the header) and JPEG/PNG files without their end marker (truncated).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (w, h) = img.format or "", img.size
    except (UnidentifiedImageError, SyntaxError) as exc:
        raise FrameError(Reason.NOT_AN_IMAGE, str(exc).splitlines()[0][:200]) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FrameError(Reason.IMAGE_TOO_LARGE, str(exc)[:200]) from None
    except (OSError, ValueError, EOFError) as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        cut = isinstance(exc, EOFError) or "truncated" in msg.lower()
        raise FrameError(Reason.TRUNCATED if cut else Reason.NOT_AN_IMAGE, msg) from None
    if fmt not in CONTENT_TYPES:
        raise FrameError(Reason.UNSUPPORTED_FORMAT, f"{fmt or 'unknown'} (accepted: {sorted(CONTENT_TYPES)})")
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise FrameError(Reason.IMAGE_TOO_LARGE, f"{w}x{h} exceeds the {max_pixels} pixel limit")
    tail = data.rstrip(b"\x00")[-32:]
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        raise FrameError(Reason.TRUNCATED, "JPEG without its end-of-image marker")
    if fmt == "PNG" and b"IEND" not in tail:
        raise FrameError(Reason.TRUNCATED, "PNG without its IEND chunk")
    return fmt, w, h


def decode_frame(
    key: bytes | None, value: bytes | None, headers, *, topic_line: str, known_lines: set[str],
    max_record_bytes: int, max_pixels: int, content_types: tuple[str, ...] = tuple(CONTENT_TYPES.values()),
) -> Frame:
    """A validated ``Frame`` from a record's parts, or ``FrameError`` with the reason."""
    size = len(value or b"")
    if size > max_record_bytes:
        raise FrameError(Reason.RECORD_TOO_LARGE, f"{size} bytes > the {max_record_bytes} byte limit")
    h = _header_map(headers)
    frame_id = _text(h, "frame_id")
    if not FRAME_ID.match(frame_id):
        raise FrameError(Reason.BAD_HEADER, f"frame_id {frame_id[:64]!r} must match {FRAME_ID.pattern}")
    line = _text(h, "line")
    if line not in known_lines:
        raise FrameError(Reason.UNKNOWN_LINE, f"{line[:64]!r} is not a configured line {sorted(known_lines)}")
    if line != topic_line:
        raise FrameError(Reason.BAD_HEADER, f"line {line!r} arrived on line {topic_line!r}'s topic")
    camera = _text(h, "camera")
    if key is not None and key.decode("utf-8", "replace") != camera:
        raise FrameError(Reason.BAD_HEADER, f"camera header {camera!r} differs from the record key")
    raw_ts = _text(h, "capture_ts_ms")
    if not raw_ts.isdigit():
        raise FrameError(Reason.BAD_HEADER, f"capture_ts_ms {raw_ts[:32]!r} is not integer milliseconds")
    ts = int(raw_ts)
    if not MIN_CAPTURE_MS <= ts <= time.time() * 1000 + MAX_CLOCK_SKEW_MS:
        raise FrameError(Reason.BAD_HEADER, f"capture_ts_ms {ts} is not a plausible capture time")
    content_type = _text(h, "content_type").lower()
    if content_type not in content_types:
        raise FrameError(Reason.BAD_HEADER, f"content_type {content_type[:64]!r} not in {list(content_types)}")
    if size == 0:
        raise FrameError(Reason.EMPTY, "zero-byte value")
    fmt, w, hh = inspect_image_header(value, max_pixels)
    if CONTENT_TYPES[fmt] != content_type:
        raise FrameError(Reason.CONTENT_TYPE_MISMATCH, f"header says {content_type}, bytes are {fmt}")
    return Frame(frame_id, line, camera, ts, content_type, value, w, hh)


def dlq_headers(headers, error: FrameError, source: str, original_bytes: int) -> list[tuple[str, bytes]]:
    """The original headers (kept as they came) plus the DLQ's own."""
    own = [("dlq_reason", error.reason), ("dlq_detail", error.detail[:1000]), ("dlq_stage", error.stage),
           ("dlq_source", source), ("dlq_original_bytes", str(original_bytes))]
    kept = [(k, v if v is not None else b"") for k, v in (headers or ()) if not k.startswith("dlq_")]
    return kept + [(k, v.encode()) for k, v in own]


# -- the inference handle's results (validated at the boundary) ---------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpertResult(_Wire):
    """The expert's verdict for one frame (``inspect_batch`` output item)."""

    frame_id: str
    score: float
    threshold: float
    decision: Literal["OK", "NG"]
    positions: list[str] = []
    model_versions: dict[str, str] = {}
    timings_ms: dict[str, float] = {}


class FrameFailure(_Wire):
    """``inspect_batch``/``answer_batch`` output item for a frame that cannot be processed."""

    frame_id: str
    error: dict[str, str]  # {"reason": ..., "detail": ...}


class LmmAnswer(_Wire):
    """The LMM's answer for one frame (``answer_batch`` output item)."""

    frame_id: str
    answer: str
    anomalous: bool | None = None
    positions: list[str] = []
    model_version: str = ""
    timings_ms: dict[str, float] = {}


class LmmOutcome(_Wire):
    status: Literal["answered", "shed", "skipped", "failed"]
    answer: str | None = None
    anomalous: bool | None = None
    positions: list[str] = []
    reason: str | None = None  # why shed / skipped / failed


class Verdict(_Wire):
    """The verdict record's value (JSON, ``schema_version``); the record key is ``frame_id``."""

    schema_version: Literal[1] = VERDICT_SCHEMA_VERSION
    frame_id: str
    line: str
    camera: str
    capture_ts_ms: int
    decision: Literal["OK", "NG"]
    image_score: float
    threshold: float
    positions: list[str] = []
    model_versions: dict[str, str] = {}
    lmm: LmmOutcome
    timings_ms: dict[str, float] = {}
    verdict_ts_ms: int = Field(default_factory=lambda: int(time.time() * 1000))
    source: str = ""  # topic/partition/offset of the frame record

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> "Verdict":
        return cls.model_validate_json(data)
