"""``myriad bench stream``: the expert path end to end through the broker, and fault runs.

One run, one machine: the embedded broker, a local Ray cluster, one line consumer actor and
one expert actor (``cluster.local_inspector``; the Serve application replaces it later).

1. in-process expert images/s: ``inspect_batch`` called inside the expert actor itself (decode +
   PatchCore, no Kafka, no Ray calls), right before and right after the end-to-end run;
2. sustained frames/s: a backlog of frames sent as fast as possible, first to last verdict;
3. frame-to-verdict latency (capture timestamp -> verdict read back) p50/p99 with the camera
   simulator at 50% and 90% of that rate; ratio = sustained / in-process (target >= 0.6);
4. ``--faults``: a consumer actor killed mid-stream (Ray restarts it) and 10% malformed
   records; each prints frames in, verdicts out, DLQ records, duplicates and missing frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

import numpy as np

from cluster.cli import add_config_args, config_from_args

log = logging.getLogger(__name__)
INSPECTOR = "myriad-bench-inspector"


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


def shared_inspector(line: str):
    """Every bench line uses the one expert actor."""
    import ray

    return ray.get_actor(INSPECTOR)


def _bank(cfg, data: Path, category: str) -> Path:
    from training.memory_bank import fit_bank
    from training.mvtec import open_category

    out = cfg.paths.home / "bench" / "stream" / f"{cfg.preset}-{category}"
    if not (out / "bank.json").is_file():
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


def kill_run(cfg, runtime, images, fps: float, seconds: float, bootstrap: str) -> dict:
    import ray

    line = "bench-kill"
    cam = _camera(cfg, line, images, fps, bootstrap)
    w = Watcher(cfg, line, bootstrap)
    try:
        t = threading.Thread(target=cam.run, kwargs={"duration_s": seconds})
        t.start()
        time.sleep(seconds / 3)
        victim = runtime.consumers[line][0]
        ray.kill(victim, no_restart=False)  # Ray restarts it; it resumes from the last commit
        print(f"  killed the {line} consumer actor at t={seconds / 3:.0f}s")
        t.join()
        ids = {fid for fid, _ in cam.sent}
        w.wait_for(ids, timeout_s=120)
        out = _count(w, ids, 0)
        out["restarted"] = ray.get(victim.stats.remote())["restarted"]
    finally:
        w.close()
        cam.close()
    return out


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

    from cluster.cmd_streams import camera_images
    from cluster.local_inspector import start_inspector
    from streams.broker import EmbeddedBroker
    from streams.ingest import run_line_consumers

    logging.getLogger("kafka").setLevel(logging.WARNING)
    lines = ["bench"] + (["bench-kill", "bench-bad"] if args.faults else [])
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
            inspector = start_inspector(cfg, bank, name=INSPECTOR, num_cpus=1, torch_threads=args.torch_threads)
            runtime = run_line_consumers(cfg, shared_inspector, bootstrap=broker.bootstrap)
            try:
                # The reference: the same actor, same threads, called in-process, just before
                # and just after the end-to-end run (the machine's load drifts; both are shown).
                raw, bs = [im[1] for im in images], cfg.streams.consumer.batch_size
                before = ray.get(inspector.self_bench.remote(raw, args.frames, bs))
                result["sustained"] = sustained_rate(cfg, images, args.frames, broker.bootstrap)
                after = ray.get(inspector.self_bench.remote(raw, args.frames, bs))
                result["in_process_ips"] = {"before": before, "after": after, "mean": (before + after) / 2}
                print(f"in-process expert: {before:.2f} images/s before, {after:.2f} after")
                fps = result["sustained"]["fps"]
                result["ratio"] = fps / result["in_process_ips"]["mean"]
                print(f"end to end: {fps:.2f} frames/s sustained; ratio {result['ratio']:.2f} (target >= 0.6)")
                for share in (0.5, 0.9):
                    r = latency_run(cfg, "bench", images, share * fps, args.seconds, broker.bootstrap)
                    result[f"latency_{int(share * 100)}"] = r
                    print(f"at {int(share * 100)}% ({r['fps_sent']:.1f} fps, {r['frames']} frames): "
                          f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms")
                if args.faults:
                    result["fault_kill_consumer"] = kill_run(cfg, runtime, images, 0.5 * fps, args.seconds,
                                                             broker.bootstrap)
                    print(f"fault: consumer killed: {result['fault_kill_consumer']}")
                    result["fault_malformed_10pct"] = malformed_run(cfg, images, 0.5 * fps, args.seconds,
                                                                    broker.bootstrap)
                    print(f"fault: 10% malformed: {result['fault_malformed_10pct']}")
            finally:
                runtime.stop()
    finally:
        ray.shutdown()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0
