"""The 4M encoder-decoder (Flax NNX): config and presets, layers, adapters, the model."""

from m4.model.batch import BatchError, check_structure, random_batch, validate_batch
from m4.model.configs import SIZES, ConfigError, FourMConfig, preset
from m4.model.fourm import LOSS_TYPES, FourM, count_params

__all__ = [
    "BatchError", "ConfigError", "FourM", "FourMConfig", "LOSS_TYPES", "SIZES", "check_structure",
    "count_params", "preset", "random_batch", "validate_batch",
]
