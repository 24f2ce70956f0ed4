"""Helpers of the streams tests: a per-test line config, frame records, a producer."""

from __future__ import annotations

import io
import time
from pathlib import Path


def stream_config(tmp_path: Path, line: str, overrides: list[str] = ()):
    """The tiny preset with one line named ``line`` (unique per test: topics and groups)."""
    from configs import load_config

    return load_config("tiny", [
        f"streams.lines=[{{name: {line}, partitions: 2, consumers: 1}}]",
        f"streams.archive.dir={tmp_path / 'archive'}",
        "streams.archive.max_seconds=0.5",
        *overrides,
    ])


def frame(line: str, frame_id: str, value: bytes, content_type: str = "image/png", camera: str = "cam-1",
          drop: tuple[str, ...] = (), **header_over) -> tuple[bytes, bytes, list]:
    h = {"frame_id": frame_id, "line": line, "camera": camera,
         "capture_ts_ms": str(int(time.time() * 1000)), "content_type": content_type}
    h.update(header_over)
    return camera.encode(), value, [(k, v.encode()) for k, v in h.items() if k not in drop]


def good_images(dataset: Path) -> list[tuple[str, bytes]]:
    """(kind, PNG bytes) of the tiny dataset's test images: 4 good, 4 with a blob defect."""
    paths = sorted((dataset / "stripes" / "test").glob("*/*.png"))
    return [(p.parent.name, p.read_bytes()) for p in paths]


def jpeg_of(png: bytes) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def produce(cfg, bootstrap: str, topic: str, records: list[tuple[bytes, bytes, list]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True,
                             max_request_size=4 << 20)
    try:
        for key, value, headers in records:
            producer.send(topic, key=key, value=value, headers=headers)
        producer.flush()
    finally:
        producer.close()
