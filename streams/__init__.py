"""Kafka camera streams: messages, source, sink, ingest loop, archive, embedded broker.

Imports only ``configs`` from this project; the inference handle is passed in
(``streams.ingest.run_line_consumers(cfg, handle_factory)``).
"""
