"""Run configuration: a config describes one comparison (data, backbone, shared training
settings, methods). :mod:`~edgecl.config.models` holds the typed models,
:mod:`~edgecl.config.files` reads YAML files with ``extends`` and ``--set`` overrides."""

from edgecl.config.files import (
    apply_override,
    deep_merge,
    default_config_text,
    load_config,
    parse_override,
    read_tree,
)
from edgecl.config.models import (
    BackboneConfig,
    Core50Scenario,
    CostConfig,
    DataConfig,
    EvalConfig,
    MethodSpec,
    RunConfig,
    TrainConfig,
)
from edgecl.errors import ConfigError

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "Core50Scenario",
    "CostConfig",
    "DataConfig",
    "EvalConfig",
    "MethodSpec",
    "RunConfig",
    "TrainConfig",
    "apply_override",
    "deep_merge",
    "default_config_text",
    "load_config",
    "parse_override",
    "read_tree",
]
