"""The one config schema, presets that override a few of its options, and `--set` overrides.

`schema.py` holds every option with its one default; `load.py` the presets and `--set` overrides."""
from dualerase.config.load import (
    all_keys,
    apply_mapping,
    differing,
    load_config,
    model_overrides,
    parse_set,
    saved_config,
    to_dict,
)
from dualerase.config.schema import (
    ComputeConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    RobustnessConfig,
    SampleConfig,
)
from dualerase.storage import PRESETS, preset_names

__all__ = ["PRESETS", "ComputeConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig",
           "RobustnessConfig", "SampleConfig", "all_keys", "apply_mapping", "differing",
           "load_config", "model_overrides", "parse_set", "preset_names", "saved_config", "to_dict"]
