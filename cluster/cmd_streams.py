"""``myriad camera`` (frame simulator) and ``myriad broker`` (the embedded Kafka broker).

    myriad broker                                     # Tansu on 127.0.0.1:<free port>, Ctrl-C stops
    myriad camera --line brick --fps 5 --duration 30 --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from cluster.cli import UserError, add_config_args, config_from_args

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    cam = sub.add_parser("camera", help="simulate a line camera: texture test images -> frame records")
    add_config_args(cam)
    cam.add_argument("--line", required=True, help="a line of streams.lines")
    cam.add_argument("--fps", type=float, required=True, help="frames per second (0: as fast as possible)")
    cam.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    cam.add_argument("--frames", type=int, default=None, help="stop after this many frames")
    cam.add_argument("--data", type=Path, default=None,
                     help="MVTec-layout folder (default: <home>/data/textures, built when missing)")
    cam.add_argument("--category", default=None, help="category whose test images are sent (default: the line)")
    cam.add_argument("--camera", default=None, help="camera id (default: <line>-cam-1)")
    cam.add_argument("--bootstrap", default=None, help="host:port (default: streams.kafka.bootstrap_servers)")
    cam.set_defaults(handler=run_camera)

    br = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) until Ctrl-C")
    br.add_argument("--port", type=int, default=None, help="port on 127.0.0.1 (default: a free one)")
    br.set_defaults(handler=run_broker)


def camera_images(data: Path, category: str, max_pixels: int) -> list:
    from streams.camera import load_images, mvtec_test_images
    from training.textures import PHOTOS, build_textures

    if not (data / category / "test").is_dir():
        if category not in PHOTOS:
            raise UserError(f"{data / category / 'test'} not found; pass --data with an MVTec-layout "
                            f"folder or --category one of {sorted(PHOTOS)} to build it")
        print(f"building the {category!r} texture benchmark in {data}")
        build_textures(data, seed=0, categories=(category,), progress=False)
    return load_images(mvtec_test_images(data, category), max_pixels)


def run_camera(args: argparse.Namespace) -> int:
    from streams.camera import CameraSimulator

    logging.getLogger("kafka").setLevel(logging.WARNING)
    cfg = config_from_args(args)
    if cfg.streams is None:
        raise UserError(f"config {args.config!r} has no `streams` section")
    try:
        cfg.streams.line(args.line)
    except KeyError as exc:
        raise UserError(str(exc.args[0])) from None
    if args.bootstrap is None and cfg.streams.kafka.embedded:
        raise UserError("streams.kafka.embedded is set: pass --bootstrap host:port of the running broker "
                        "(`myriad broker` prints it)")
    if args.fps < 0:
        raise UserError("--fps must be >= 0")
    data = args.data or cfg.paths.home / "data" / "textures"
    images = camera_images(data, args.category or args.line, cfg.expert.max_image_pixels)
    cam = CameraSimulator(cfg.streams, args.line, images, args.fps, args.bootstrap, args.camera)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, lambda *_: cam.stop())
    print(f"camera {cam.camera}: {len(images)} images -> {cam.topic} at {args.fps:g} fps")
    try:
        duration = args.duration if (args.duration is not None or args.frames is not None) else float("inf")
        result = cam.run(duration_s=duration, frames=args.frames)
    finally:
        cam.close()
    print(f"sent {result['sent']} frames in {result['seconds']:.1f}s ({result['fps']:.1f} fps)")
    return 0


def run_broker(args: argparse.Namespace) -> int:
    from streams.broker import EmbeddedBroker

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port) as broker:
        print(f"embedded Kafka broker (tansu, memory storage) on {broker.bootstrap}; Ctrl-C stops it", flush=True)
        while not stop.wait(1.0):
            if not broker.running():
                raise UserError(f"the broker exited: {broker.log_tail()}")
    return 0
