"""Configuration of the serve side (see the issue that builds it)."""

from __future__ import annotations

from configs.schema_base import Strict


class ServeConfig(Strict):
    """Placeholder section: filled in by the serve issue."""
