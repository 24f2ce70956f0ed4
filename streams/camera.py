"""A camera simulator: image files -> frame records on a line's topic at a given rate.

It sends what a camera gateway sends: the encoded file bytes as they are (PNG/JPEG), the
camera id as key and the frame headers (``streams.messages``), with the capture time taken
when the frame is sent. Frame ids are ``<camera>-<start ms>-<seq>``, unique across runs.

    cam = CameraSimulator(cfg.streams, "brick", images, fps=10, bootstrap=broker.bootstrap)
    cam.run(duration_s=30)      # -> {"sent": 300, "seconds": 30.0, "fps": 10.0, ...}
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from pathlib import Path

from kafka import KafkaProducer

from configs.streams_schema import StreamsConfig
from streams.connection import client_kwargs
from streams.messages import CONTENT_TYPES, FrameError, inspect_image_header

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def frame_headers(frame_id: str, line: str, camera: str, capture_ts_ms: int, content_type: str) -> list:
    return [("frame_id", frame_id.encode()), ("line", line.encode()), ("camera", camera.encode()),
            ("capture_ts_ms", str(capture_ts_ms).encode()), ("content_type", content_type.encode())]


def load_images(paths: list[Path], max_pixels: int = 64_000_000) -> list[tuple[Path, bytes, str]]:
    """(path, bytes, content type) of each readable image; unreadable ones are skipped, logged."""
    out = []
    for path in paths:
        data = Path(path).read_bytes()
        try:
            fmt, _, _ = inspect_image_header(data, max_pixels)
        except FrameError as exc:
            log.warning("camera: skipping %s (%s)", path, exc)
            continue
        out.append((Path(path), data, CONTENT_TYPES[fmt]))
    if not out:
        raise FileNotFoundError(f"no usable images among {len(paths)} files")
    return out


def mvtec_test_images(data: Path, category: str) -> list[Path]:
    """``<data>/<category>/test/<kind>/*`` (normal and defective), sorted by name within kind."""
    root = Path(data) / category / "test"
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no test images (MVTec layout <category>/test/<kind>/*.png)")
    return sorted(p for p in root.glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES)


class CameraSimulator:
    """Sends frames round-robin over ``images`` at ``fps`` (0: as fast as possible)."""

    def __init__(self, cfg: StreamsConfig, line: str, images: list[tuple[Path, bytes, str]], fps: float,
                 bootstrap: str | None = None, camera: str | None = None, shuffle_seed: int | None = 0) -> None:
        cfg.line(line)
        self.cfg, self.line, self.fps = cfg, line, float(fps)
        self.camera = camera or f"{line}-cam-1"
        self.images = list(images)
        if shuffle_seed is not None:
            import random

            random.Random(shuffle_seed).shuffle(self.images)
        self.producer = KafkaProducer(acks="all", enable_idempotence=True, linger_ms=1,
                                      max_request_size=cfg.max_record_bytes + (64 << 10),
                                      **client_kwargs(cfg.kafka, bootstrap))
        self.topic = cfg.topic(line, "frames")
        self.start_ms = int(time.time() * 1000)
        self.sent: list[tuple[str, str]] = []  # (frame id, source path)
        self._seq = itertools.count()
        self._stop = threading.Event()

    def send_one(self, image: tuple[Path, bytes, str]) -> str:
        path, data, content_type = image
        frame_id = f"{self.camera}-{self.start_ms}-{next(self._seq):07d}"
        now = int(time.time() * 1000)
        self.producer.send(self.topic, key=self.camera.encode(), value=data,
                           headers=frame_headers(frame_id, self.line, self.camera, now, content_type))
        self.sent.append((frame_id, str(path)))
        return frame_id

    def run(self, duration_s: float | None = None, frames: int | None = None) -> dict:
        """Send until ``duration_s`` passed or ``frames`` were sent (or ``stop``); flushes."""
        if duration_s is None and frames is None:
            raise ValueError("give duration_s or frames")
        t0 = time.monotonic()
        n = 0
        for image in itertools.cycle(self.images):
            if self._stop.is_set() or (frames is not None and n >= frames):
                break
            if duration_s is not None and time.monotonic() - t0 >= duration_s:
                break
            if self.fps > 0:
                wait = t0 + n / self.fps - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self.send_one(image)
            n += 1
        self.producer.flush()
        seconds = time.monotonic() - t0
        return {"line": self.line, "camera": self.camera, "sent": n, "seconds": seconds,
                "fps": n / seconds if seconds > 0 else 0.0}

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self.producer.close(timeout=10)
