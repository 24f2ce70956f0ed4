"""Configuration of the train side (see the issue that builds it)."""

from __future__ import annotations

from configs.schema_base import Strict


class TrainConfig(Strict):
    """Placeholder section: filled in by the train issue."""
