"""The one config schema (`schema.py`: every option with its one default), presets that override a few,
and `--set` overrides (`load.py`)."""
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
           "RobustnessConfig", "SampleConfig", "all_keys", "apply_mapping", "differing", "load_config",
           "model_overrides", "parse_set", "preset_names", "saved_config", "to_dict"]
