"""Configuration of the Kafka camera streams (DESIGN.md 4; ``streams/``).

Per line ``<line>`` the topics are ``<topic_prefix>.<line>.frames`` (in),
``<topic_prefix>.<line>.verdicts`` (out) and ``<topic_prefix>.<line>.dlq``. Connection
settings pass straight through to kafka-python; secrets never live in the YAML: the SASL
user and password are read from the environment variables named here.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from configs.schema_base import Strict

NAME_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,47}$"


class SecurityProtocol(str, enum.Enum):
    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(str, enum.Enum):
    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class KafkaConfig(Strict):
    """Where the broker is and how to talk to it (kafka-python's settings, passed through)."""

    # true: start the embedded Tansu broker (development, tests, the demo) and ignore
    # bootstrap_servers; false: connect to the plant's Kafka cluster.
    embedded: bool = True
    bootstrap_servers: tuple[str, ...] = ()
    client_id: str = Field(default="myriad", min_length=1)
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    # Names of the environment variables holding the SASL user and password.
    sasl_username_env: str = "MYRIAD_KAFKA_USERNAME"
    sasl_password_env: str = "MYRIAD_KAFKA_PASSWORD"
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    request_timeout_ms: int = Field(default=30_000, ge=1_000)

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for server in v:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"bootstrap server {server!r} must look like host:port")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "KafkaConfig":
        if not self.embedded and not self.bootstrap_servers:
            raise ValueError("bootstrap_servers is required when embedded is false")
        sasl = self.security_protocol.value.startswith("SASL")
        if sasl and self.sasl_mechanism is None:
            raise ValueError(f"security_protocol {self.security_protocol.value} needs sasl_mechanism")
        return self


class LineConfig(Strict):
    """One production line: its topics, partitions and consumer actors."""

    name: str = Field(pattern=NAME_PATTERN)
    partitions: int = Field(default=2, ge=1, le=256)
    # Consumer actors of this line's group (more than partitions leaves some idle).
    consumers: int = Field(default=1, ge=1, le=64)


class ConsumerConfig(Strict):
    """How a line consumer polls, batches and bounds its work."""

    batch_size: int = Field(default=8, ge=1, le=1024)  # frames per inference call
    # Inference calls outstanding per consumer (polled, not yet committed).
    max_in_flight: int = Field(default=2, ge=1, le=64)
    poll_timeout_ms: int = Field(default=100, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)  # PLATFORM.md: p50 ~5 ms at 10
    # Tansu: a new member waits ~session_timeout/2 before it joins (PLATFORM.md).
    session_timeout_ms: int = Field(default=6_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=1_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    # A failing inference call is retried this many times (transient errors) before the
    # consumer gives up, exits, and is restarted by Ray from the last committed offset.
    inference_retries: int = Field(default=5, ge=0)
    inference_timeout_s: float = Field(default=60.0, gt=0)
    max_restarts: int = Field(default=-1, ge=-1)  # Ray actor restarts (-1: unlimited)
    num_cpus: float = Field(default=0.25, ge=0)  # Ray resources per consumer actor

    @model_validator(mode="after")
    def _heartbeat(self) -> "ConsumerConfig":
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be at most a third of session_timeout_ms")
        return self


class LlmMode(str, enum.Enum):
    flagged = "flagged"  # frames the expert calls NG, plus sample_rate of the OK ones
    all = "all"  # every frame
    none = "none"  # never (expert-only verdicts)


class LlmPolicy(Strict):
    """When a frame asks the LMM, and when the answer is shed so expert verdicts keep flowing."""

    mode: LlmMode = LlmMode.flagged
    sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # LMM requests (frames) outstanding per consumer; a frame beyond it is shed at once.
    max_in_flight: int = Field(default=4, ge=0)
    # A verdict waits at most this long for its answer; later answers are shed.
    deadline_ms: int = Field(default=2_000, ge=0)


class ArchiveConfig(Strict):
    """Verdicts archived as Parquet, partitioned by line and date (a consumer of verdicts)."""

    enabled: bool = True
    # None: <paths.home>/verdicts
    dir: Path | None = None
    max_rows: int = Field(default=512, ge=1)  # a file is written at this many rows ...
    max_seconds: float = Field(default=10.0, gt=0)  # ... or when the oldest row is this old


class StreamsConfig(Strict):
    """Kafka camera streams: connection, lines, topics, consumers, limits, archive."""

    kafka: KafkaConfig = KafkaConfig()
    lines: tuple[LineConfig, ...] = Field(default=(), max_length=256)
    topic_prefix: str = Field(default="myriad", pattern=r"^[a-zA-Z0-9_\-.]{1,64}$")
    consumer: ConsumerConfig = ConsumerConfig()
    # Records above this size go to the DLQ (Tansu enforces no limit itself, PLATFORM.md).
    max_record_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # Accepted image formats (PIL names) and their content types.
    content_types: tuple[str, ...] = ("image/jpeg", "image/png", "image/bmp", "image/tiff", "image/webp")
    llm: LlmPolicy = LlmPolicy()
    archive: ArchiveConfig = ArchiveConfig()

    @field_validator("lines")
    @classmethod
    def _unique(cls, v: tuple[LineConfig, ...]) -> tuple[LineConfig, ...]:
        names = [line.name for line in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"line names must be unique, repeated: {dupes}")
        return v

    def line(self, name: str) -> LineConfig:
        for line in self.lines:
            if line.name == name:
                return line
        raise KeyError(f"unknown line {name!r}; configured lines: {[x.name for x in self.lines]}")

    def topic(self, line: str, kind: str) -> str:
        if kind not in ("frames", "verdicts", "dlq"):
            raise ValueError(f"topic kind {kind!r} is not frames, verdicts or dlq")
        return f"{self.topic_prefix}.{line}.{kind}"

    def group(self, line: str, role: str = "inspect") -> str:
        return f"{self.topic_prefix}.{line}.{role}"
