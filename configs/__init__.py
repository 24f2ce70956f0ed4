"""Configuration: one pydantic schema, YAML presets, command-line overrides.

>>> from configs import load_config
>>> cfg = load_config("tiny", overrides=["expert.coreset_ratio=0.2"])
>>> cfg.expert.coreset_ratio
0.2
"""

from configs.loader import ConfigError, load_config, preset_names
from configs.model_schema import ModelConfig
from configs.schema import (
    BackboneConfig,
    BackboneKind,
    ExpertConfig,
    IndexConfig,
    IndexKind,
    MyriadClusterConfig,
    PathsConfig,
)

__all__ = [
    "BackboneConfig",
    "BackboneKind",
    "ConfigError",
    "ExpertConfig",
    "IndexConfig",
    "IndexKind",
    "ModelConfig",
    "MyriadClusterConfig",
    "PathsConfig",
    "load_config",
    "preset_names",
]
