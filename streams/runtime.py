"""Line consumers and the verdict archiver as long-running, restartable Ray actors.

    runtime = start_streams(cfg, handle_factory, bootstrap=broker.bootstrap)
    ...                       # runtime.stats() -> per-line frames, NG, p50/p99, lag
    runtime.stop()

``handle_factory(line) -> handle`` is called inside each consumer actor (again after a
restart), so it must be picklable, e.g. ``cluster.stream_handles.ServeHandles`` (the Serve
application's ingress handle); the handle contract is in ``streams.ingest``. Each actor runs
its loop in a thread started by ``__init__``: when Ray restarts a dead actor
(``consumer.max_restarts``), ``__init__`` runs again and the loop resumes from the group's
committed offsets. A loop that fails exits the process so Ray restarts it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ray

from configs.schema import MyriadClusterConfig
from streams.archive import ArchiveWorker
from streams.connection import ensure_topics
from streams.ingest import LineWorker

log = logging.getLogger(__name__)


def _actor_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)


def _run_or_die(target: Callable[[], None], name: str) -> None:
    try:
        target()
    except BaseException:  # noqa: BLE001 - any failure: let Ray restart us from the last commit
        log.exception("%s failed; exiting so that Ray restarts it", name)
        logging.shutdown()
        os._exit(1)


LAG_METRIC = "myriad_consumer_lag"


class LagExporter:
    """Consumer lag per partition as a Ray metric (Prometheus ``ray_myriad_consumer_lag``)."""

    def __init__(self, worker: LineWorker, every_s: float = 2.0) -> None:
        from ray.util.metrics import Gauge

        self.worker, self.every_s = worker, every_s
        self.gauge = Gauge(LAG_METRIC, description="frame records not yet consumed, per line partition",
                           tag_keys=("line", "partition", "member"))
        self.last: dict[str, int] = {}  # what was last set, for stats()
        self.thread = threading.Thread(target=self._run, name=f"lag-{worker.line}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        w = self.worker
        while not w._stop.wait(self.every_s):
            self.export()

    def export(self) -> None:
        w = self.worker
        for part, lag in dict(w.lag).items():
            self.gauge.set(lag, tags={"line": w.line, "partition": part, "member": w.member})
            self.last[part] = lag


@ray.remote(max_concurrency=4)
class LineConsumer:
    """One consumer of one line's group (config passed as JSON, re-validated here)."""

    def __init__(self, cfg_json: dict, line: str, member: str, bootstrap: str | None,
                 handle_factory: Callable[[str], object], fault: dict | None = None) -> None:
        _actor_logging()
        cfg = MyriadClusterConfig.model_validate(cfg_json)
        self.restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.worker = LineWorker(cfg.streams, line, handle_factory(line), bootstrap=bootstrap, member=member,
                                 max_pixels=cfg.expert.max_image_pixels, fault=fault)
        self.thread = threading.Thread(target=_run_or_die, args=(self.worker.run, f"consumer {line}/{member}"),
                                       name=f"consume-{line}-{member}", daemon=True)
        self.thread.start()
        self.lag_metric = LagExporter(self.worker)

    def stats(self) -> dict:
        return {**self.worker.stats(), "restarted": self.restarted, "pid": os.getpid(),
                "running": self.thread.is_alive(), "lag_metric": dict(self.lag_metric.last)}

    def stop(self, timeout_s: float = 60.0) -> dict:
        self.worker.stop()
        self.thread.join(timeout_s)
        self.lag_metric.export()
        return self.stats()


@ray.remote(max_concurrency=4)
class VerdictArchiver:
    def __init__(self, cfg_json: dict, root: str, lines: list[str], bootstrap: str | None) -> None:
        _actor_logging()
        cfg = MyriadClusterConfig.model_validate(cfg_json)
        self.worker = ArchiveWorker(cfg.streams, Path(root), lines, bootstrap)
        self.thread = threading.Thread(target=_run_or_die, args=(self.worker.run, "archiver"), daemon=True)
        self.thread.start()

    def stats(self) -> dict:
        return {**self.worker.stats(), "running": self.thread.is_alive()}

    def stop(self, timeout_s: float = 60.0) -> dict:
        self.worker.stop()
        self.thread.join(timeout_s)
        return self.stats()


def archive_dir(cfg: MyriadClusterConfig) -> Path:
    return cfg.streams.archive.dir or cfg.paths.home / "verdicts"


@dataclass
class StreamRuntime:
    """Handles of the running actors; ``stop`` drains, commits and removes them."""

    consumers: dict[str, list] = field(default_factory=dict)
    archiver: object | None = None
    archive_root: Path | None = None

    def stats(self) -> dict[str, dict]:
        """Per line: the sum over its consumers plus each consumer's own figures."""
        out = {}
        for line, actors in self.consumers.items():
            parts = ray.get([a.stats.remote() for a in actors])
            total = {k: sum(p[k] for p in parts) for k in ("frames_in", "verdicts_out", "dlq_out", "ng",
                                                            "llm_answered", "llm_shed", "lag_total")}
            total["latency_p50_ms"] = max((p["latency_p50_ms"] or 0) for p in parts)
            total["latency_p99_ms"] = max((p["latency_p99_ms"] or 0) for p in parts)
            out[line] = {**total, "consumers": parts}
        if self.archiver is not None:
            out["_archive"] = ray.get(self.archiver.stats.remote())
        return out

    def wait_ready(self, partitions: dict[str, int], timeout_s: float) -> bool:
        """True once each line's partitions (and the archiver's) are all assigned."""
        deadline = time.monotonic() + timeout_s
        while True:
            owned = {line: sum(st["assigned"] for st in ray.get([a.stats.remote() for a in actors]))
                     for line, actors in self.consumers.items()}
            archived = ray.get(self.archiver.stats.remote())["assigned"] if self.archiver is not None else None
            if all(owned[n] >= p for n, p in partitions.items()) and archived in (None, sum(partitions.values())):
                return True
            if time.monotonic() > deadline:
                log.warning("streams: partitions still unassigned after %.0fs: %s", timeout_s, owned)
                return False
            time.sleep(0.2)

    def stop(self, timeout_s: float = 60.0) -> dict:
        final = {}
        actors = [a for group in self.consumers.values() for a in group]
        try:
            final["consumers"] = ray.get([a.stop.remote(timeout_s) for a in actors], timeout=timeout_s + 10)
            if self.archiver is not None:  # after the consumers: their last verdicts get archived
                final["archive"] = ray.get(self.archiver.stop.remote(timeout_s), timeout=timeout_s + 10)
        finally:
            for a in actors + ([self.archiver] if self.archiver is not None else []):
                ray.kill(a, no_restart=True)
        return final


def start_streams(
    cfg: MyriadClusterConfig, handle_factory: Callable[[str], object], *, bootstrap: str | None = None,
    lines: list[str] | None = None, archive: bool | None = None, fault: dict | None = None,
    ready_timeout_s: float = 60.0,
) -> StreamRuntime:
    """Create the topics, then start ``consumers`` actors per line and the archiver.

    ``bootstrap``: the embedded broker's address (else the configured servers). ``fault``:
    fault injection for tests and fault runs (``{"crash_after_produce": n, "marker": path}``).
    Returns once every partition has an owner (Tansu: ~3 s per group join), or after
    ``ready_timeout_s`` with a warning; frames sent meanwhile are not lost (earliest offsets).
    """
    if cfg.streams is None:
        raise ValueError("the config has no `streams` section")
    s = cfg.streams
    names = lines or [x.name for x in s.lines]
    for name in names:
        s.line(name)
    ensure_topics(s, bootstrap, names)
    cfg_json = cfg.model_dump(mode="json")
    opts = {"num_cpus": s.consumer.num_cpus, "max_restarts": s.consumer.max_restarts, "max_task_retries": 0}
    runtime = StreamRuntime()
    for name in names:
        runtime.consumers[name] = [
            LineConsumer.options(**opts).remote(cfg_json, name, str(i), bootstrap, handle_factory, fault)
            for i in range(s.line(name).consumers)
        ]
    if archive if archive is not None else s.archive.enabled:
        runtime.archive_root = archive_dir(cfg)
        runtime.archiver = VerdictArchiver.options(**opts).remote(cfg_json, str(runtime.archive_root), names, bootstrap)
    t0 = time.monotonic()
    ready = runtime.wait_ready({n: s.line(n).partitions for n in names}, ready_timeout_s)
    log.info("streams: %d consumer actor(s) for %s %s in %.1fs", sum(map(len, runtime.consumers.values())),
             names, "joined their groups" if ready else "still joining", time.monotonic() - t0)
    return runtime
