"""Configuration of the streams side (see the issue that builds it)."""

from __future__ import annotations

from configs.schema_base import Strict


class StreamsConfig(Strict):
    """Placeholder section: filled in by the streams issue."""
