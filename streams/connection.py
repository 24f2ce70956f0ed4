"""Kafka connection settings from config, and the per-line topics.

``client_kwargs`` turns ``streams.kafka`` into kafka-python keyword arguments (bootstrap
servers, client id, security protocol, SASL from environment variables, TLS files), so
producers, consumers and the admin client are all configured in one place.
"""

from __future__ import annotations

import logging
import os

from configs.streams_schema import KafkaConfig, StreamsConfig

log = logging.getLogger(__name__)


class ConnectionConfigError(ValueError):
    """A Kafka setting cannot be used (missing environment variable, unreadable file)."""


def client_kwargs(kafka: KafkaConfig, bootstrap: str | None = None) -> dict:
    """kafka-python arguments shared by producers, consumers and admin clients.

    ``bootstrap`` overrides the configured servers (the embedded broker's address).
    """
    servers = [bootstrap] if bootstrap else list(kafka.bootstrap_servers)
    if not servers:
        raise ConnectionConfigError(
            "no Kafka bootstrap servers: start the embedded broker (streams.kafka.embedded) "
            "or set streams.kafka.bootstrap_servers"
        )
    out: dict = {
        "bootstrap_servers": servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol.value,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol.value.startswith("SASL"):
        user = os.environ.get(kafka.sasl_username_env)
        password = os.environ.get(kafka.sasl_password_env)
        missing = [n for n, v in ((kafka.sasl_username_env, user), (kafka.sasl_password_env, password)) if not v]
        if missing:
            raise ConnectionConfigError(
                f"streams.kafka uses SASL ({kafka.sasl_mechanism.value}): set the environment "
                f"variable(s) {', '.join(missing)}"
            )
        out.update(sasl_mechanism=kafka.sasl_mechanism.value, sasl_plain_username=user,
                   sasl_plain_password=password)
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(kafka, key)
        if path is not None:
            if not path.is_file():
                raise ConnectionConfigError(f"streams.kafka.{key}: {path} is not a readable file")
            out[key] = str(path)
    return out


def line_topics(cfg: StreamsConfig, line: str) -> dict[str, str]:
    return {kind: cfg.topic(line, kind) for kind in ("frames", "verdicts", "dlq")}


def ensure_topics(cfg: StreamsConfig, bootstrap: str | None = None, lines: list[str] | None = None) -> list[str]:
    """Create the missing per-line topics (frames with the line's partitions). Returns created names.

    Tansu ignores topic configs and cannot add partitions later (PLATFORM.md): create topics
    before the first producer auto-creates them with a default partition count.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**client_kwargs(cfg.kafka, bootstrap))
    try:
        existing = set(admin.list_topics())
        wanted = []
        for line in cfg.lines:
            if lines is not None and line.name not in lines:
                continue
            for name in line_topics(cfg, line.name).values():
                if name not in existing:
                    wanted.append(NewTopic(name, line.partitions, 1))
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # a concurrent creator won the race
                pass
            log.info("created topics %s", [t.name for t in wanted])
        return [t.name for t in wanted]
    finally:
        admin.close()
