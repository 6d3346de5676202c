"""Configuration: frozen dataclasses loaded from YAML plus overrides."""

from tacotune.config.load import (
    all_keys,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    save_config,
)
from tacotune.config.schema import (
    AlertsConfig,
    AudioConfig,
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    SupervisionConfig,
    TextConfig,
    TrackingConfig,
    TrainConfig,
    TuningConfig,
    VocoderConfig,
    reduction_factors,
)

__all__ = [
    "AlertsConfig",
    "AudioConfig",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "SupervisionConfig",
    "TextConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuningConfig",
    "VocoderConfig",
    "all_keys",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
    "load_config",
    "reduction_factors",
    "save_config",
]
