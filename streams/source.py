"""The frame source: a kafka-python consumer in a line's group, manual commits, lag.

Auto-commit is off; ``commit`` is called by the ingest loop only after every verdict and DLQ
record of the polled records is acknowledged by the broker. ``lag`` reports, per assigned
partition, end offset minus position (note: Tansu reports the end offset as the last batch's
base offset + 1, so on Tansu the lag under-counts by up to a producer batch; PLATFORM.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from configs.streams_schema import StreamsConfig
from streams.connection import client_kwargs

log = logging.getLogger(__name__)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_revoked: Callable[[list], None], on_assigned: Callable[[list], None]):
        self.on_revoked, self.on_assigned = on_revoked, on_assigned

    def on_partitions_revoked(self, revoked):
        self.on_revoked(list(revoked))

    def on_partitions_assigned(self, assigned):
        self.on_assigned(list(assigned))


class FrameSource:
    """Polls a topic in a consumer group; commits only what it is told to."""

    def __init__(
        self, cfg: StreamsConfig, topics: list[str], group_id: str, bootstrap: str | None = None,
        member: str = "", on_revoked: Callable[[list], None] | None = None,
        value_limit: int | None = None,
    ) -> None:
        c = cfg.consumer
        limit = max(1 << 20, (value_limit or cfg.max_record_bytes) + (64 << 10))
        kwargs = client_kwargs(cfg.kafka, bootstrap)
        if member:
            kwargs["client_id"] = f"{kwargs['client_id']}-{member}"
        self.consumer = KafkaConsumer(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group reads the line from its start
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            max_poll_interval_ms=c.max_poll_interval_ms,
            fetch_max_wait_ms=c.fetch_max_wait_ms,
            max_partition_fetch_bytes=limit,
            fetch_max_bytes=max(limit, 50 << 20),
            **kwargs,
        )
        self.assigned: list[TopicPartition] = []
        self._on_revoked = on_revoked or (lambda parts: None)
        self.consumer.subscribe(topics, listener=_Listener(self._revoked, self._assigned))
        self._lag: dict[str, int] = {}
        self._lag_at = 0.0

    def _revoked(self, parts: list) -> None:
        log.info("partitions revoked: %s", parts)
        self._on_revoked(parts)
        self.assigned = []

    def _assigned(self, parts: list) -> None:
        log.info("partitions assigned: %s", parts)
        self.assigned = parts

    def poll(self, timeout_ms: int, max_records: int) -> list:
        """Records in poll order (partition by partition, offsets increasing)."""
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        return [r for records in batches.values() for r in records]

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``next offset to read`` per partition (synchronously)."""
        if offsets:
            self.consumer.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()})

    def lag(self, every_s: float = 2.0) -> dict[str, int]:
        """``{"topic/partition": records behind}`` for the assigned partitions (cached ``every_s``)."""
        now = time.monotonic()
        if now - self._lag_at < every_s:
            return self._lag
        self._lag_at = now
        parts = list(self.consumer.assignment())
        if not parts:
            self._lag = {}
            return self._lag
        try:
            ends = self.consumer.end_offsets(parts)
            self._lag = {f"{tp.topic}/{tp.partition}": max(0, ends[tp] - self.consumer.position(tp))
                         for tp in parts if tp in ends}
        except Exception as exc:  # a metric: never stop the line for it
            log.debug("lag unavailable: %s", exc)
        return self._lag

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class TopicReader:
    """Reads whole topics from the beginning without a group (checks, benchmarks, reports)."""

    def __init__(self, cfg: StreamsConfig, topics: list[str], bootstrap: str | None = None,
                 timeout_s: float = 30.0) -> None:
        self.consumer = KafkaConsumer(enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10,
                                      max_partition_fetch_bytes=cfg.max_record_bytes + (64 << 10),
                                      **client_kwargs(cfg.kafka, bootstrap))
        parts: list[TopicPartition] = []
        deadline = time.monotonic() + timeout_s
        for topic in topics:
            found = self.consumer.partitions_for_topic(topic)
            while not found:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic!r} has no partitions (does it exist?)")
                time.sleep(0.1)
                self.consumer.topics()  # refresh metadata
                found = self.consumer.partitions_for_topic(topic)
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)

    def poll(self, timeout_ms: int = 200) -> list:
        batches = self.consumer.poll(timeout_ms=timeout_ms, max_records=10_000)
        return [r for records in batches.values() for r in records]

    def read_until(self, done: Callable[[list], bool], timeout_s: float) -> list:
        """Every record read until ``done(records)`` is true or ``timeout_s`` passed."""
        records: list = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records += self.poll()
            if done(records):
                break
        return records

    def close(self) -> None:
        self.consumer.close(autocommit=False)
