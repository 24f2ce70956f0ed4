"""``myriad bench stream``: the expert path end to end through the broker, and fault runs.

One run, one machine: the embedded broker, a local Ray cluster, the Serve application (one
multiplexed expert deployment serving every bench line from one bank, LLM off: the expert
path) and one line consumer actor per line calling it through Serve handles.

1. in-process expert images/s: decode + PatchCore over the same bank in one Ray task with the
   same torch threads (no Kafka, no Serve), right before and right after the end-to-end run;
2. sustained frames/s: a backlog of frames sent as fast as possible, first to last verdict;
3. frame-to-verdict latency (capture timestamp -> verdict read back) p50/p99 with the camera
   simulator at 50% and 90% of that rate; ratio = sustained / in-process (target >= 0.6);
4. ``--faults``: a consumer actor killed mid-stream (Ray restarts it), the expert's Serve
   replica killed mid-stream (Serve replaces it) and 10% malformed records; each prints frames
   in, verdicts out, DLQ records, duplicates and missing frames.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

import numpy as np

from cluster.cli import add_config_args, config_from_args, dump_json

log = logging.getLogger(__name__)
APP = "myriad-bench-stream"


def register_bench(bsub: argparse._SubParsersAction) -> None:
    p = bsub.add_parser("stream", help="frames/s and latency through the broker; fault runs")
    add_config_args(p)
    p.add_argument("--data", type=Path, default=None, help="MVTec folder (default: <home>/data/textures)")
    p.add_argument("--category", default="brick")
    p.add_argument("--frames", type=int, default=120, help="backlog frames for the sustained rate")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each latency and fault run")
    p.add_argument("--torch-threads", type=int, default=1, help="torch threads of the expert (both sides)")
    p.add_argument("--faults", action="store_true", help="also run the fault runs")
    p.add_argument("--json", type=Path, default=None)
    p.set_defaults(handler=run_stream_bench)


def in_process_ips(cfg_json: dict, bank: str, images: list[bytes], frames: int, batch: int, threads: int) -> float:
    """Images/s of decode + PatchCore over ``bank`` in this process: the reference."""
    import torch

    from actors.modeling.bank import bank_config, open_bank
    from actors.modeling.preprocess import decode_image, to_batch
    from configs.schema import MyriadClusterConfig

    torch.set_num_threads(max(1, threads))
    cfg = MyriadClusterConfig.model_validate(cfg_json)
    ecfg = bank_config(Path(bank), cfg.expert)
    expert, _ = open_bank(Path(bank), ecfg, cfg.paths.weights_dir)
    mean, std = expert.mean_std

    def run(n: int) -> None:
        for i in range(0, n, batch):
            ims = [decode_image(images[j % len(images)], ecfg.max_image_pixels) for j in range(i, min(n, i + batch))]
            expert.predict(to_batch(ims, ecfg.image_size, mean, std))

    run(batch)  # warm-up
    t0 = time.perf_counter()
    run(frames)
    return frames / (time.perf_counter() - t0)


def start_app(cfg, bank: Path, lines: list[str], torch_threads: int):
    """The Serve application over ``bank`` for every bench line (LLM off); its handle factory."""
    from ray import serve

    from cluster.app import build_app
    from cluster.stream_handles import ServeHandles, serve_line_overrides
    from configs import load_config

    app_cfg = load_config(cfg.preset, [f"serve.app_name={APP}", "serve.llm.enabled=false", "serve.auth.token_env=null",
                                       "serve.auth.required=false", "serve.expert.multiplex=true",
                                       f"serve.expert.max_lines_per_replica={len(lines)}",
                                       f"serve.torch_threads={torch_threads}",
                                       *serve_line_overrides({n: str(bank) for n in lines})])
    serve.start(http_options={"host": "127.0.0.1", "port": _free_port()}, logging_config={"enable_access_log": False})
    serve.run(build_app(app_cfg), name=APP, route_prefix=f"/{APP}")
    return ServeHandles(APP)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bank(cfg, data: Path, category: str) -> Path:
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    from actors.modeling.bank import bank_config

    out = cfg.paths.home / "bench" / "stream" / f"{cfg.preset}-{category}"
    try:
        bank_config(out, cfg.expert)
        usable = True
    except Exception:  # noqa: BLE001 - missing, or fit by an older version: fit again
        usable = False
    if not usable:
        print(f"fitting the {category!r} expert ({cfg.preset}) into {out}")
        fit_bank(cfg.expert, cfg.paths.weights_dir, open_category(data, category).train_good(), out, category, False)
    return out


class Watcher:
    """Reads a line's verdicts and DLQ in a thread; keeps receive times per frame id."""

    def __init__(self, cfg, line: str, bootstrap: str) -> None:
        from streams.source import TopicReader

        s = cfg.streams
        self.reader = TopicReader(s, [s.topic(line, "verdicts"), s.topic(line, "dlq")], bootstrap)
        self.verdicts: dict[str, list[float]] = {}  # frame id -> receive times (ms)
        self.latency_ms: dict[str, float] = {}
        self.dlq: dict[str, str] = {}  # frame id -> reason
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from streams.messages import Verdict

        while not self._stop.is_set():
            for r in self.reader.poll(50):
                now = time.time() * 1000
                if r.topic.endswith(".dlq"):
                    h = dict(r.headers)
                    self.dlq[h.get("frame_id", b"?").decode() + f"@{r.offset}"] = h["dlq_reason"].decode()
                    continue
                v = Verdict.decode(r.value)
                self.verdicts.setdefault(v.frame_id, []).append(now)
                self.latency_ms.setdefault(v.frame_id, now - v.capture_ts_ms)

    def wait_for(self, ids: set[str], dlq: int = 0, timeout_s: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ids <= set(self.verdicts) and len(self.dlq) >= dlq:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.reader.close()


def _camera(cfg, line, images, fps, bootstrap):
    from streams.camera import CameraSimulator

    return CameraSimulator(cfg.streams, line, images, fps, bootstrap, camera=f"{line}-cam")


def sustained_rate(cfg, images, frames: int, bootstrap: str) -> dict:
    cam = _camera(cfg, "bench", images, 0, bootstrap)
    w = Watcher(cfg, "bench", bootstrap)
    try:
        warm = {cam.send_one(images[i % len(images)]) for i in range(2 * cfg.streams.consumer.batch_size)}
        cam.producer.flush()
        w.wait_for(warm)
        t0 = time.time() * 1000
        ids = {cam.send_one(images[i % len(images)]) for i in range(frames)}
        cam.producer.flush()
        ok = w.wait_for(ids, timeout_s=600)
        last = max(max(w.verdicts[i]) for i in ids if i in w.verdicts)
    finally:
        w.close()
        cam.close()
    return {"frames": frames, "complete": ok, "fps": frames / ((last - t0) / 1000)}


def latency_run(cfg, line: str, images, fps: float, seconds: float, bootstrap: str) -> dict:
    cam = _camera(cfg, line, images, fps, bootstrap)
    w = Watcher(cfg, line, bootstrap)
    try:
        sent = cam.run(duration_s=seconds)
        ids = {fid for fid, _ in cam.sent}
        ok = w.wait_for(ids, timeout_s=120)
        lat = np.array([w.latency_ms[i] for i in ids if i in w.latency_ms])
    finally:
        w.close()
        cam.close()
    return {"fps_target": fps, "fps_sent": sent["fps"], "frames": len(ids), "complete": ok,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def _count(w: Watcher, ids: set[str], bad: int) -> dict:
    records = sum(len(v) for v in w.verdicts.values())
    got = ids & set(w.verdicts)
    return {"frames_in": len(ids) + bad, "good_frames": len(ids), "verdicts_out": len(got),
            "verdict_records": records, "duplicates": records - len(set(w.verdicts)),
            "missing": len(ids - got), "dlq": len(w.dlq), "malformed_sent": bad,
            "dlq_reasons": sorted(set(w.dlq.values()))}


def _fault_run(cfg, line: str, images, fps: float, seconds: float, bootstrap: str,
               kill, timeout_s: float) -> tuple[dict, object]:
    """Stream ``line`` for ``seconds``; call ``kill()`` a third of the way in; count outcomes.

    Returns the counts (``_count``) and whatever ``kill`` returned.
    """
    cam = _camera(cfg, line, images, fps, bootstrap)
    w = Watcher(cfg, line, bootstrap)
    try:
        t = threading.Thread(target=cam.run, kwargs={"duration_s": seconds})
        t.start()
        time.sleep(seconds / 3)
        victim = kill()
        t.join()
        ids = {fid for fid, _ in cam.sent}
        w.wait_for(ids, timeout_s=timeout_s)
        return _count(w, ids, 0), victim
    finally:
        w.close()
        cam.close()


def kill_run(cfg, runtime, images, fps: float, seconds: float, bootstrap: str) -> dict:
    import ray

    line = "bench-kill"

    def kill():
        victim = runtime.consumers[line][0]
        ray.kill(victim, no_restart=False)  # Ray restarts it; it resumes from the last commit
        print(f"  killed the {line} consumer actor at t={seconds / 3:.0f}s")
        return victim

    out, victim = _fault_run(cfg, line, images, fps, seconds, bootstrap, kill, timeout_s=120)
    out["restarted"] = ray.get(victim.stats.remote())["restarted"]
    return out


def replica_run(cfg, images, fps: float, seconds: float, bootstrap: str) -> dict:
    """The expert's Serve replica killed a third of the way in; Serve starts a new one."""
    from cluster.stream_handles import kill_replica

    def kill():
        victim = kill_replica(APP, "expert")
        print(f"  killed the Serve replica {victim} at t={seconds / 3:.0f}s")
        return victim

    out, victim = _fault_run(cfg, "bench-replica", images, fps, seconds, bootstrap, kill, timeout_s=180)
    return {**out, "killed": victim}


def malformed_run(cfg, images, fps: float, seconds: float, bootstrap: str) -> dict:
    line = "bench-bad"
    cam = _camera(cfg, line, images, fps, bootstrap)
    w = Watcher(cfg, line, bootstrap)
    bad_kinds = [b"", images[0][1][: len(images[0][1]) // 2], b"camera offline", None]
    n_bad = 0
    try:
        t0, n = time.monotonic(), 0
        while time.monotonic() - t0 < seconds:
            time.sleep(max(0.0, t0 + n / fps - time.monotonic()))
            if n % 10 == 9:
                kind = bad_kinds[n_bad % len(bad_kinds)]
                path, data, ctype = images[0]
                if kind is None:  # a good image with a wrong header
                    cam.producer.send(cam.topic, key=b"x", value=data, headers=[("frame_id", b"bad-header")])
                else:
                    cam.send_one((path, kind, ctype))
                    cam.sent.pop()
                n_bad += 1
            else:
                cam.send_one(images[n % len(images)])
            n += 1
        cam.producer.flush()
        ids = {fid for fid, _ in cam.sent}
        w.wait_for(ids, dlq=n_bad, timeout_s=120)
        return _count(w, ids, n_bad)
    finally:
        w.close()
        cam.close()


def run_stream_bench(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from cluster.cmd_streams import camera_images
    from streams.broker import EmbeddedBroker
    from streams.ingest import run_line_consumers

    logging.getLogger("kafka").setLevel(logging.WARNING)
    lines = ["bench"] + (["bench-kill", "bench-replica", "bench-bad"] if args.faults else [])
    cfg = config_from_args(argparse.Namespace(config=args.config, overrides=[
        *args.overrides, "streams.lines=[" + ", ".join(f"{{name: {n}, partitions: 2}}" for n in lines) + "]",
        "streams.llm.mode=none", "streams.archive.enabled=false"]))
    data = args.data or cfg.paths.home / "data" / "textures"
    images = camera_images(data, args.category, cfg.expert.max_image_pixels)
    bank = _bank(cfg, data, args.category)
    result: dict = {"config": cfg.preset, "category": args.category, "torch_threads": args.torch_threads}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with EmbeddedBroker() as broker:
            handles = start_app(cfg, bank, lines, args.torch_threads)
            runtime = run_line_consumers(cfg, handles, bootstrap=broker.bootstrap)
            reference = ray.remote(num_cpus=1)(in_process_ips)
            try:
                # The reference: the same bank and threads in one process, just before and just
                # after the end-to-end run (the machine's load drifts; both are shown).
                raw, bs = [im[1] for im in images], cfg.streams.consumer.batch_size
                ref_args = (cfg.model_dump(mode="json"), str(bank), raw, args.frames, bs, args.torch_threads)
                before = ray.get(reference.remote(*ref_args))
                result["sustained"] = sustained_rate(cfg, images, args.frames, broker.bootstrap)
                after = ray.get(reference.remote(*ref_args))
                result["in_process_ips"] = {"before": before, "after": after, "mean": (before + after) / 2}
                print(f"in-process expert: {before:.2f} images/s before, {after:.2f} after")
                fps = result["sustained"]["fps"]
                result["ratio"] = fps / result["in_process_ips"]["mean"]
                print(f"end to end (Serve): {fps:.2f} frames/s sustained; ratio {result['ratio']:.2f} (target >= 0.6)")
                for share in (0.5, 0.9):
                    r = latency_run(cfg, "bench", images, share * fps, args.seconds, broker.bootstrap)
                    result[f"latency_{int(share * 100)}"] = r
                    print(f"at {int(share * 100)}% ({r['fps_sent']:.1f} fps, {r['frames']} frames): "
                          f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
                if args.faults:
                    runs = {"fault_kill_consumer": lambda: kill_run(cfg, runtime, images, 0.5 * fps, args.seconds,
                                                                    broker.bootstrap),
                            "fault_kill_serve_replica": lambda: replica_run(cfg, images, 0.5 * fps, args.seconds,
                                                                            broker.bootstrap),
                            "fault_malformed_10pct": lambda: malformed_run(cfg, images, 0.5 * fps, args.seconds,
                                                                           broker.bootstrap)}
                    for name, fault in runs.items():
                        result[name] = fault()
                        print(f"fault {name}: {result[name]}")
            finally:
                runtime.stop()
                serve.shutdown()
    finally:
        ray.shutdown()
    dump_json(result, args.json)
    return 0
