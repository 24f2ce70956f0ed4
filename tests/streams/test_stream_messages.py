"""Frame decoding and guards, the verdict schema, streams config, the import direction."""

from __future__ import annotations

import ast
import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import ConfigError, load_config
from streams.messages import (
    FrameError,
    LmmOutcome,
    Reason,
    Verdict,
    decode_frame,
    dlq_headers,
)

ROOT = Path(__file__).resolve().parents[2]


def png_bytes(size=32, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def bomb_png(width=20000, height=20000) -> bytes:
    """A PNG whose header claims width x height (the pixels never need to exist)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def headers(**over) -> list:
    h = {"frame_id": "cam-1-0001", "line": "brick", "camera": "cam-1",
         "capture_ts_ms": str(int(time.time() * 1000)), "content_type": "image/png"}
    h.update(over)
    return [(k, v.encode()) for k, v in h.items() if v is not None]


def decode(value, hdrs=None, key=b"cam-1", **kw):
    args = dict(topic_line="brick", known_lines={"brick", "grass"}, max_record_bytes=1 << 20, max_pixels=10_000_000)
    args.update(kw)
    return decode_frame(key, value, headers() if hdrs is None else hdrs, **args)


def test_good_frame_decodes():
    f = decode(png_bytes())
    assert (f.frame_id, f.line, f.camera, f.content_type, f.width, f.height) == (
        "cam-1-0001", "brick", "cam-1", "image/png", 32, 32)
    assert f.request()["image"] == png_bytes()
    jpg = png_bytes(fmt="JPEG")
    assert decode(jpg, headers(content_type="image/jpeg")).content_type == "image/jpeg"


@pytest.mark.parametrize("value, hdrs, kw, reason", [
    (b"", None, {}, Reason.EMPTY),
    (png_bytes(fmt="JPEG")[:300], headers(content_type="image/jpeg"), {}, Reason.TRUNCATED),
    (png_bytes()[:-20], None, {}, Reason.TRUNCATED),
    (b"GIF? no: just some bytes from a misconfigured gateway", None, {}, Reason.NOT_AN_IMAGE),
    (bomb_png(), None, {}, Reason.IMAGE_TOO_LARGE),
    (png_bytes(), headers(frame_id=None), {}, Reason.MISSING_HEADER),
    (png_bytes(), headers(capture_ts_ms="yesterday"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(capture_ts_ms="12"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(frame_id="bad id with spaces"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(camera="cam-2"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(content_type="text/plain"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(line="nosuchline"), {}, Reason.UNKNOWN_LINE),
    (png_bytes(), headers(line="grass"), {}, Reason.BAD_HEADER),
    (png_bytes(), headers(content_type="image/jpeg"), {}, Reason.CONTENT_TYPE_MISMATCH),
    (b"\0" * 5000, None, {"max_record_bytes": 4096}, Reason.RECORD_TOO_LARGE),
])
def test_bad_records_have_reasons(value, hdrs, kw, reason):
    with pytest.raises(FrameError) as err:
        decode(value, hdrs, **kw)
    assert err.value.reason == reason, str(err.value)


def test_duplicate_and_non_utf8_headers():
    with pytest.raises(FrameError, match="twice"):
        decode(png_bytes(), headers() + [("line", b"brick")])
    bad = [(k, b"\xff\xfe" if k == "camera" else v) for k, v in headers()]
    with pytest.raises(FrameError, match="UTF-8"):
        decode(png_bytes(), bad)


def test_dlq_headers_keep_the_original():
    err = FrameError(Reason.BAD_HEADER, "capture_ts_ms 'x'", "decode")
    h = dict(dlq_headers(headers(), err, "myriad.brick.frames/1/42", 77))
    assert h["frame_id"] == b"cam-1-0001" and h["dlq_reason"] == b"bad header"
    assert h["dlq_source"] == b"myriad.brick.frames/1/42" and h["dlq_original_bytes"] == b"77"


def test_verdict_json_roundtrip_and_version():
    v = Verdict(frame_id="f1", line="brick", camera="c", capture_ts_ms=1, decision="NG", image_score=2.5,
                threshold=1.0, positions=["top left"], model_versions={"expert": "x"},
                lmm=LmmOutcome(status="shed", reason="LLM pool busy"), timings_ms={"total_ms": 3.0})
    back = Verdict.decode(v.encode())
    assert back == v and back.schema_version == 1
    with pytest.raises(ValueError):
        Verdict.decode(v.encode().replace(b'"schema_version":1', b'"schema_version":2'))
    assert b"pickle" not in v.encode() and v.encode().startswith(b"{")


def test_streams_config_validation(monkeypatch):
    cfg = load_config("tiny")
    assert cfg.streams.topic("brick", "dlq") == "myriad.brick.dlq"
    assert cfg.streams.consumer.session_timeout_ms == 6000
    with pytest.raises(ConfigError, match="streams.kafka"):
        load_config("tiny", ["streams.kafka.embedded=false"])
    with pytest.raises(ConfigError, match="streams.lines"):
        load_config("tiny", ["streams.lines=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match="streams.consumer.batch_size"):
        load_config("tiny", ["streams.consumer.batch_size=0"])
    from streams.connection import ConnectionConfigError, client_kwargs

    sasl = load_config("tiny", ["streams.kafka.embedded=false", "streams.kafka.bootstrap_servers=[k1:9093]",
                                "streams.kafka.security_protocol=SASL_SSL", "streams.kafka.sasl_mechanism=SCRAM-SHA-512"])
    monkeypatch.delenv("MYRIAD_KAFKA_PASSWORD", raising=False)
    monkeypatch.setenv("MYRIAD_KAFKA_USERNAME", "inspector")
    with pytest.raises(ConnectionConfigError, match="MYRIAD_KAFKA_PASSWORD"):
        client_kwargs(sasl.streams.kafka)
    monkeypatch.setenv("MYRIAD_KAFKA_PASSWORD", "s3cret")
    kw = client_kwargs(sasl.streams.kafka)
    assert kw["bootstrap_servers"] == ["k1:9093"] and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "inspector" and kw["security_protocol"] == "SASL_SSL"


def test_streams_never_imports_actors_or_cluster():
    forbidden = ("actors", "cluster", "training")
    for path in sorted((ROOT / "streams").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
