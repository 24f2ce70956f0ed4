"""The verdict and DLQ sink: an idempotent kafka-python producer with acks=all.

``send_*`` return futures; ``flush_and_check`` blocks until every one of them is acknowledged
by the broker and raises ``SinkError`` when any failed, so the caller commits the source
offsets only after a clean return (commit-after-produce).
"""

from __future__ import annotations

import logging

from kafka import KafkaProducer
from kafka.errors import KafkaError

from configs.streams_schema import StreamsConfig
from streams.connection import client_kwargs
from streams.messages import FrameError, Verdict, dlq_headers

log = logging.getLogger(__name__)


class SinkError(RuntimeError):
    """A verdict or DLQ record was not acknowledged: the batch must not be committed."""


class VerdictSink:
    def __init__(self, cfg: StreamsConfig, bootstrap: str | None = None, member: str = "") -> None:
        kwargs = client_kwargs(cfg.kafka, bootstrap)
        if member:
            kwargs["client_id"] = f"{kwargs['client_id']}-{member}"
        self.cfg = cfg
        self.producer = KafkaProducer(
            acks="all",
            enable_idempotence=True,
            retries=2_147_483_647,  # bounded by delivery_timeout_ms
            linger_ms=2,
            # A DLQ record carries the original value (up to max_record_bytes).
            max_request_size=cfg.max_record_bytes + (64 << 10),
            **kwargs,
        )
        self._futures: list = []

    def send_verdict(self, verdict: Verdict) -> None:
        self._futures.append(self.producer.send(
            self.cfg.topic(verdict.line, "verdicts"), key=verdict.frame_id.encode(), value=verdict.encode(),
            headers=[("schema_version", str(verdict.schema_version).encode()),
                     ("content_type", b"application/json")],
        ))

    def send_dlq(self, line: str, record, error: FrameError) -> None:
        """The original record (key, value, headers) plus the reason, to ``<line>.dlq``."""
        value = record.value or b""
        size = len(value)
        if size > self.cfg.max_record_bytes:  # never re-ship what was refused for its size
            value = b""
        source = f"{record.topic}/{record.partition}/{record.offset}"
        self._futures.append(self.producer.send(
            self.cfg.topic(line, "dlq"), key=record.key, value=value,
            headers=dlq_headers(record.headers, error, source, size),
        ))

    def flush_and_check(self, timeout_s: float = 60.0) -> int:
        """Wait for every record sent since the last call; returns how many were acknowledged."""
        futures, self._futures = self._futures, []
        if not futures:
            return 0
        self.producer.flush(timeout=timeout_s)
        failed = []
        for f in futures:
            try:
                f.get(timeout=timeout_s)
            except KafkaError as exc:
                failed.append(exc)
        if failed:
            raise SinkError(f"{len(failed)} of {len(futures)} records not acknowledged: {failed[0]!r}")
        return len(futures)

    def close(self) -> None:
        self.producer.close(timeout=10)
