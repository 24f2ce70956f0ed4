"""The verdict archive: Parquet files partitioned by line and date (Hive layout).

    <archive dir>/line=<line>/date=<YYYY-MM-DD>/part-<ms>-<member>-<n>.parquet

It is a consumer of the ``verdicts`` topics in its own group (``<prefix>.<line>.archive``):
rows are buffered, written when ``archive.max_rows`` or ``archive.max_seconds`` is reached
(atomically: temp name, then rename), and the offsets are committed only after the file is
on disk. Delivery is at-least-once: readers dedupe by ``frame_id`` (``read_archive`` does).
The date is the capture date (UTC). These rows are the data that later train Myriad again.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from kafka.structs import TopicPartition

from configs.streams_schema import StreamsConfig
from streams.messages import Verdict
from streams.source import FrameSource

log = logging.getLogger(__name__)

SCHEMA = pa.schema([
    ("frame_id", pa.string()), ("camera", pa.string()), ("capture_ts_ms", pa.int64()),
    ("verdict_ts_ms", pa.int64()), ("decision", pa.string()), ("image_score", pa.float64()),
    ("threshold", pa.float64()), ("positions", pa.list_(pa.string())), ("lmm_status", pa.string()),
    ("lmm_answer", pa.string()), ("lmm_reason", pa.string()), ("model_versions", pa.string()),
    ("timings_ms", pa.string()), ("source", pa.string()), ("schema_version", pa.int32()),
])


def verdict_row(v: Verdict) -> dict:
    return {"frame_id": v.frame_id, "camera": v.camera, "capture_ts_ms": v.capture_ts_ms,
            "verdict_ts_ms": v.verdict_ts_ms, "decision": v.decision, "image_score": v.image_score,
            "threshold": v.threshold, "positions": list(v.positions), "lmm_status": v.lmm.status,
            "lmm_answer": v.lmm.answer, "lmm_reason": v.lmm.reason,
            "model_versions": json.dumps(v.model_versions, sort_keys=True),
            "timings_ms": json.dumps(v.timings_ms, sort_keys=True), "source": v.source,
            "schema_version": v.schema_version}


def capture_date(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%d")


def write_partitioned(root: Path, verdicts: list[Verdict], member: str, seq: int) -> list[Path]:
    """One file per (line, date) of ``verdicts`` (deduped by frame id, last wins)."""
    groups: dict[tuple[str, str], dict[str, Verdict]] = {}
    for v in verdicts:
        groups.setdefault((v.line, capture_date(v.capture_ts_ms)), {})[v.frame_id] = v
    written = []
    for (line, date), rows in sorted(groups.items()):
        folder = root / f"line={line}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{int(time.time() * 1000)}-{member}-{seq}.parquet"
        table = pa.Table.from_pylist([verdict_row(v) for v in rows.values()], schema=SCHEMA)
        tmp = folder / f".{name}.tmp"  # readers skip dot files
        pq.write_table(table, tmp)
        tmp.rename(folder / name)
        written.append(folder / name)
    return written


def read_archive(root: Path, dedupe: bool = True) -> pa.Table:
    """The archive as one table with ``line`` and ``date`` columns (deduped by frame id)."""
    import pyarrow.dataset as ds

    table = ds.dataset(str(root), format="parquet", partitioning="hive", schema=SCHEMA.append(
        pa.field("line", pa.string())).append(pa.field("date", pa.string()))).to_table()
    if not dedupe or table.num_rows == 0:
        return table
    seen: dict[tuple[str, str], int] = {}
    for i, key in enumerate(zip(table["line"].to_pylist(), table["frame_id"].to_pylist())):
        seen[key] = i  # the last written copy wins
    return table.take(sorted(seen.values()))


class ArchiveWorker:
    """Consumes verdict topics and writes the Parquet archive; commit after write."""

    def __init__(self, cfg: StreamsConfig, root: Path, lines: list[str], bootstrap: str | None,
                 member: str = "archive", drain_s: float = 15.0) -> None:
        self.cfg, self.root, self.member, self.drain_s = cfg, Path(root), member, drain_s
        topics = [cfg.topic(line, "verdicts") for line in lines]
        self.source = FrameSource(cfg, topics, f"{cfg.topic_prefix}.archive", bootstrap, member,
                                  on_revoked=lambda parts: self.flush())
        self._buffer: list[Verdict] = []
        self._offsets: dict = {}
        self._oldest = 0.0
        self._seq = 0
        self._stop = threading.Event()
        self.rows_written = 0
        self.files_written = 0
        self.bad_records = 0

    def step(self) -> int:
        records = self.source.poll(200, 500)
        for record in records:
            try:
                self._buffer.append(Verdict.decode(record.value))
            except ValueError as exc:  # not ours to fix: skip, count, keep going
                self.bad_records += 1
                log.warning("archive: unreadable verdict at %s/%s/%s: %s", record.topic,
                            record.partition, record.offset, str(exc)[:200])
            self._offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
            if len(self._buffer) == 1:
                self._oldest = time.monotonic()
        a = self.cfg.archive
        if self._offsets and (len(self._buffer) >= a.max_rows or time.monotonic() - self._oldest >= a.max_seconds):
            self.flush()
        return len(records)

    def flush(self) -> None:
        """Write the buffered rows, then commit their offsets."""
        if self._buffer:
            self._seq += 1
            files = write_partitioned(self.root, self._buffer, self.member, self._seq)
            self.rows_written += len(self._buffer)
            self.files_written += len(files)
        if self._offsets:
            self.source.commit(self._offsets)
        self._buffer, self._offsets = [], {}

    def run(self) -> None:
        try:
            while not self._stop.is_set():
                self.step()
            # Stopping: catch up with what the consumers produced before they stopped.
            deadline = time.monotonic() + self.drain_s
            while time.monotonic() < deadline and (
                    self.step() or not self.source.assigned or sum(self.source.lag(every_s=0).values())):
                pass
            self.flush()
        finally:
            self.source.close()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> dict:
        return {"rows_written": self.rows_written, "files_written": self.files_written,
                "bad_records": self.bad_records, "buffered": len(self._buffer),
                "assigned": len(self.source.assigned)}
