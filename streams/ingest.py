"""The ingest loop of one line consumer: poll -> decode -> inspect -> produce -> commit.

A ``LineWorker`` polls frame records in its line's consumer group (auto-commit off), decodes
and guards each (``streams.messages.decode_frame``; a bad record becomes a DLQ record, never a
stalled partition), sends the good frames in batches to the injected inference handle with at
most ``consumer.max_in_flight`` calls outstanding, asks the LMM for the flagged frames within
``llm`` limits (beyond them the answer is shed and the verdict says so), produces verdicts and
DLQ records (acks=all, idempotent) and commits the batch's offsets only after the broker
acknowledged every one of them. Batches complete in poll order, so a commit never covers a
frame whose verdict is not out. A crash replays from the last commit: at-least-once, and the
verdict key is the frame id, so a replayed frame yields the same key.

The inference handle contract (a Serve ``DeploymentHandle``, a Ray actor handle, or any
object whose methods return values; ``.remote`` is used when the method has it, and an
``ObjectRef`` / ``DeploymentResponse`` result is resolved)::

    inspect_batch(frames: list[dict]) -> list[dict]
        frames[i]: {"frame_id", "line", "camera", "capture_ts_ms", "content_type",
                    "image": bytes (encoded JPEG/PNG as received)}
        result[i] (same order, same frame_id): ExpertResult fields
            {"frame_id", "score", "threshold", "decision": "OK"|"NG", "positions": [...],
             "model_versions": {...}, "timings_ms": {...}}
          or FrameFailure {"frame_id", "error": {"reason", "detail"}} for a frame that cannot
          be processed (e.g. an image that fails to decode): it goes to the DLQ.
    answer_batch(requests: list[dict]) -> list[dict]
        requests[i]: frames[i] fields plus "expert": the ExpertResult dict
        result[i]: LmmAnswer {"frame_id", "answer", "anomalous", "positions", "model_version",
                   "timings_ms"} or FrameFailure: with reason "shed" (the handle's LLM pool
                   refused it for load or ran out of time) the verdict's lmm.status is "shed",
                   otherwise "failed".

Errors: a raised application error (``RayTaskError`` or a plain exception) splits the batch
to isolate the bad frame (DLQ, stage "inference"); system errors (actor or replica died,
timeouts, back-pressure) are retried ``consumer.inference_retries`` times, then the worker
fails and its actor is restarted by Ray from the last committed offset.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from kafka.structs import TopicPartition

from configs.streams_schema import LlmMode, StreamsConfig
from streams.messages import (
    ExpertResult,
    Frame,
    FrameError,
    FrameFailure,
    LmmAnswer,
    LmmOutcome,
    Reason,
    Verdict,
    decode_frame,
)
from streams.sink import VerdictSink
from streams.source import FrameSource

log = logging.getLogger(__name__)


class InferenceUnavailable(RuntimeError):
    """The inference handle kept failing with system errors: the consumer must restart."""


def _resolve(call, timeout_s: float):
    import ray

    if isinstance(call, ray.ObjectRef):
        return ray.get(call, timeout=timeout_s)
    if hasattr(call, "result") and callable(call.result):  # serve DeploymentResponse
        return call.result(timeout_s=timeout_s)
    return call


def call_handle(handle, method: str, payload: list, timeout_s: float):
    fn = getattr(handle, method)
    return _resolve(fn.remote(payload) if hasattr(fn, "remote") else fn(payload), timeout_s)


def is_transient(exc: BaseException) -> bool:
    """System errors worth a retry; application errors (the frames' fault) are not."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):  # raised by the handle's code: transient only when
        cause = getattr(exc, "cause", None)  # it is itself a system error (a replica behind died)
        return cause is not None and cause is not exc and is_transient(cause)
    if isinstance(exc, (rex.RayError, TimeoutError, ConnectionError)):
        return True
    return type(exc).__name__ in ("BackPressureError", "DeploymentUnavailableError")


@dataclass
class _Batch:
    records: list  # every polled record, poll order
    frames: list[tuple[object, Frame]]  # (record, frame) of the good ones
    rejected: list[tuple[object, FrameError]]
    offsets: dict[TopicPartition, int]  # next offset per partition
    polled_ms: int
    future: cf.Future | None = None


@dataclass
class _Stats:
    frames_in: int = 0
    verdicts_out: int = 0
    dlq_out: int = 0
    ng: int = 0
    llm_answered: int = 0
    llm_shed: int = 0
    llm_failed: int = 0
    batches: int = 0
    commits: int = 0
    dlq_reasons: collections.Counter = field(default_factory=collections.Counter)
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=2048))


class LineWorker:
    """One consumer of one line; ``run`` until ``stop``. Built only from config + a handle."""

    def __init__(self, cfg: StreamsConfig, line: str, handle, *, bootstrap: str | None = None,
                 member: str = "0", max_pixels: int = 64_000_000, fault: dict | None = None) -> None:
        cfg.line(line)  # unknown line: KeyError naming the configured ones
        self.cfg, self.line, self.handle, self.member = cfg, line, handle, member
        self.bootstrap, self.max_pixels, self.fault = bootstrap, max_pixels, fault or {}
        self.known_lines = {x.name for x in cfg.lines}
        self.stats_ = _Stats()
        self.lag: dict[str, int] = {}
        self._pending: collections.deque[_Batch] = collections.deque()
        self._llm_pending: list[tuple[cf.Future, int]] = []
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._stats_lock = threading.Lock()
        self.source: FrameSource | None = None
        self.sink: VerdictSink | None = None
        n = cfg.consumer.max_in_flight + cfg.llm.max_in_flight + 1
        self.pool = cf.ThreadPoolExecutor(max_workers=n, thread_name_prefix=f"infer-{line}")

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        c = self.cfg.consumer
        tag = f"{self.line}-{self.member}"
        self.sink = VerdictSink(self.cfg, self.bootstrap, tag)
        self.source = FrameSource(self.cfg, [self.cfg.topic(self.line, "frames")], self.cfg.group(self.line),
                                  self.bootstrap, tag, on_revoked=self._on_revoked)
        try:
            while not self._stop.is_set():
                if self._fatal is not None:
                    raise self._fatal
                room = len(self._pending) < c.max_in_flight
                records = []
                if room:
                    timeout = min(c.poll_timeout_ms, 5) if self._pending else c.poll_timeout_ms
                    records = self.source.poll(timeout, c.batch_size)
                    if records:
                        self._pending.append(self._submit(records))
                head = self._pending[0] if self._pending else None
                if head is not None and (not room or not records or head.future is None or head.future.done()):
                    self._complete(self._pending.popleft())
                self.lag = self.source.lag()
            self.drain()
            self.lag = self.source.lag(every_s=0.0)  # after the last commit
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.source.close()
            self.sink.close()

    def stop(self) -> None:
        self._stop.set()

    def _on_revoked(self, parts: list) -> None:
        try:  # kafka-python swallows listener errors: keep it for the loop to raise
            self.drain()
        except BaseException as exc:
            self._fatal = exc

    def drain(self) -> None:
        """Complete and commit every polled batch (before a rebalance or a stop)."""
        while self._pending:
            self._complete(self._pending.popleft())

    # -- one batch ----------------------------------------------------------------------------
    def _submit(self, records: list) -> _Batch:
        frames, rejected, offsets = [], [], {}
        for r in records:
            offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
            try:
                frame = decode_frame(r.key, r.value, r.headers, topic_line=self.line, known_lines=self.known_lines,
                                     max_record_bytes=self.cfg.max_record_bytes, max_pixels=self.max_pixels,
                                     content_types=self.cfg.content_types)
                frames.append((r, frame))
            except FrameError as exc:
                rejected.append((r, exc))
        self.stats_.frames_in += len(records)
        batch = _Batch(records, frames, rejected, offsets, int(time.time() * 1000))
        if frames:
            batch.future = self.pool.submit(self._inspect, [f.request() for _, f in frames])
        return batch

    def _inspect(self, requests: list[dict], attempt: int = 0) -> list[ExpertResult | FrameFailure]:
        c = self.cfg.consumer
        try:
            out = call_handle(self.handle, "inspect_batch", requests, c.inference_timeout_s)
            return _validate(out, requests, ExpertResult)
        except Exception as exc:
            if is_transient(exc):
                if attempt >= c.inference_retries:
                    raise InferenceUnavailable(f"inspect_batch failed {attempt + 1} times: {exc!r}") from exc
                log.warning("inspect_batch: %r, retry %d/%d", exc, attempt + 1, c.inference_retries)
                time.sleep(min(0.2 * 2 ** attempt, 5.0))
                return self._inspect(requests, attempt + 1)
            if len(requests) == 1:
                detail = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
                return [FrameFailure(frame_id=requests[0]["frame_id"],
                                     error={"reason": Reason.INFERENCE, "detail": detail})]
            return [r for req in requests for r in self._inspect([req], attempt)]

    def _complete(self, batch: _Batch) -> None:
        results = batch.future.result() if batch.future else []
        expert_done_ms = int(time.time() * 1000)
        outcomes = self._lmm(batch, results)
        for record, err in batch.rejected:
            self.sink.send_dlq(self.line, record, err)
        verdicts = []
        for (record, frame), res in zip(batch.frames, results):
            if isinstance(res, FrameFailure):
                err = FrameError(res.error.get("reason", Reason.INFERENCE), res.error.get("detail", ""), "inference")
                self.sink.send_dlq(self.line, record, err)
                batch.rejected.append((record, err))
                continue
            now = int(time.time() * 1000)
            timings = {**res.timings_ms, "queue_ms": batch.polled_ms - frame.capture_ts_ms,
                       "inspect_ms": expert_done_ms - batch.polled_ms, "total_ms": now - frame.capture_ts_ms}
            v = Verdict(frame_id=frame.frame_id, line=frame.line, camera=frame.camera,
                        capture_ts_ms=frame.capture_ts_ms, decision=res.decision, image_score=res.score,
                        threshold=res.threshold, positions=res.positions, model_versions=res.model_versions,
                        lmm=outcomes[frame.frame_id], timings_ms=timings, verdict_ts_ms=now,
                        source=f"{record.topic}/{record.partition}/{record.offset}")
            self.sink.send_verdict(v)
            verdicts.append(v)
        self.sink.flush_and_check(self.cfg.consumer.inference_timeout_s)
        self._fault_point()
        self.source.commit(batch.offsets)
        s = self.stats_
        now = int(time.time() * 1000)
        with self._stats_lock:
            s.batches += 1
            s.commits += 1
            s.verdicts_out += len(verdicts)
            s.dlq_out += len(batch.records) - len(verdicts)
            s.ng += sum(v.decision == "NG" for v in verdicts)
            s.latencies_ms.extend(now - v.capture_ts_ms for v in verdicts)
            for _, err in batch.rejected:
                s.dlq_reasons[err.reason] += 1

    # -- the LMM, with shedding -----------------------------------------------------------------
    def _wants_lmm(self, res: ExpertResult) -> bool:
        mode = self.cfg.llm.mode
        if mode == LlmMode.none:
            return False
        if mode == LlmMode.all or res.decision == "NG":
            return True
        return zlib.crc32(res.frame_id.encode()) % 10_000 < self.cfg.llm.sample_rate * 10_000

    def _lmm(self, batch: _Batch, results: list) -> dict[str, LmmOutcome]:
        policy, s = self.cfg.llm, self.stats_
        outcomes: dict[str, LmmOutcome] = {}
        wanted = []
        for (_, frame), res in zip(batch.frames, results):
            if isinstance(res, FrameFailure):
                continue
            if self._wants_lmm(res):
                wanted.append({**frame.request(), "expert": res.model_dump()})
            else:
                why = "llm.mode is none" if policy.mode == LlmMode.none else "expert verdict OK, not sampled"
                outcomes[res.frame_id] = LmmOutcome(status="skipped", reason=why)
        self._llm_pending = [(f, n) for f, n in self._llm_pending if not f.done()]
        busy = sum(n for _, n in self._llm_pending)
        take = wanted[: max(0, policy.max_in_flight - busy)]
        for req in wanted[len(take):]:
            why = f"LLM pool busy: {busy + len(take)} answers in flight (max {policy.max_in_flight})"
            outcomes[req["frame_id"]] = LmmOutcome(status="shed", reason=why)
            s.llm_shed += 1
        if not take:
            return outcomes
        future = self.pool.submit(call_handle, self.handle, "answer_batch", take, self.cfg.consumer.inference_timeout_s)
        self._llm_pending.append((future, len(take)))
        try:
            answers = _validate(future.result(timeout=policy.deadline_ms / 1000), take, LmmAnswer)
        except cf.TimeoutError:
            for req in take:
                outcomes[req["frame_id"]] = LmmOutcome(status="shed", reason=f"no answer within {policy.deadline_ms} ms")
            s.llm_shed += len(take)
            return outcomes
        except Exception as exc:
            answers = [FrameFailure(frame_id=r["frame_id"], error={"reason": "answer_batch failed", "detail": repr(exc)[:300]})
                       for r in take]
        for a in answers:
            if isinstance(a, FrameFailure) and a.error.get("reason") == "shed":
                why = a.error.get("detail") or "shed by the LLM pool"
                outcomes[a.frame_id] = LmmOutcome(status="shed", reason=why)
                s.llm_shed += 1
            elif isinstance(a, FrameFailure):
                outcomes[a.frame_id] = LmmOutcome(status="failed", reason=f"{a.error.get('reason')}: {a.error.get('detail', '')}")
                s.llm_failed += 1
            else:
                outcomes[a.frame_id] = LmmOutcome(status="answered", answer=a.answer, anomalous=a.anomalous,
                                                  positions=a.positions)
                s.llm_answered += 1
        return outcomes

    # -- observability and fault injection --------------------------------------------------------
    def _fault_point(self) -> None:
        """Tests and fault runs: die after producing batch N, before its commit (once)."""
        n = self.fault.get("crash_after_produce")
        if n is None or self.stats_.batches + 1 < n:
            return
        marker = Path(self.fault["marker"])
        if not marker.exists():
            marker.write_text(f"{os.getpid()}\n")
            log.warning("fault injection: exiting after producing batch %d, before its commit", n)
            os._exit(1)

    def stats(self) -> dict:
        s = self.stats_
        with self._stats_lock:
            lat, reasons = sorted(s.latencies_ms), dict(s.dlq_reasons)
        pct = (lambda q: float(lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else None)
        return {"line": self.line, "member": self.member, "frames_in": s.frames_in,
                "verdicts_out": s.verdicts_out, "dlq_out": s.dlq_out, "ng": s.ng,
                "llm_answered": s.llm_answered, "llm_shed": s.llm_shed, "llm_failed": s.llm_failed,
                "batches": s.batches, "commits": s.commits, "dlq_reasons": reasons,
                "latency_p50_ms": pct(0.5), "latency_p99_ms": pct(0.99), "lag": dict(self.lag),
                "lag_total": sum(self.lag.values()), "in_flight": len(self._pending),
                "assigned": len(self.source.assigned) if self.source else 0}


def _validate(out, requests: list[dict], model) -> list:
    """The handle's answer, checked: one item per request, same frame ids, valid fields."""
    if not isinstance(out, (list, tuple)) or len(out) != len(requests):
        raise ValueError(f"handle returned {type(out).__name__} of {len(out) if hasattr(out, '__len__') else '?'} "
                         f"items for {len(requests)} frames")
    items = []
    for req, item in zip(requests, out):
        if isinstance(item, (model, FrameFailure)):
            parsed = item
        elif isinstance(item, dict):
            parsed = FrameFailure.model_validate(item) if "error" in item else model.model_validate(item)
        else:
            raise ValueError(f"handle returned a {type(item).__name__} item, expected a dict")
        if parsed.frame_id != req["frame_id"]:
            raise ValueError(f"handle answered frame {parsed.frame_id!r} for {req['frame_id']!r}")
        items.append(parsed)
    return items


def run_line_consumers(cfg, handle_factory, **kwargs):
    """Start every configured line's consumer actors (and the archiver); see ``streams.runtime``."""
    from streams.runtime import start_streams

    return start_streams(cfg, handle_factory, **kwargs)
