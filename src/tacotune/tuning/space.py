"""The search space: `tuning.space` dimensions sampled by an Optuna trial into a config.

Optuna parameter names are the config keys themselves (`train.learning_rate`), so a
trial's params read like the overrides they are. Integer settings get integer ranges,
`when` makes a dimension conditional (`loss.ddc_weight` only when `model.ddc` is on).
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tacotune.config.load import config_from_dict, config_to_dict
from tacotune.config.rules import validate
from tacotune.config.schema import Config, SearchDimension

if TYPE_CHECKING:  # the trial process applies values without importing Optuna
    import optuna


def sample(trial: optuna.Trial, config: Config) -> dict[str, Any]:
    """Sample every dimension of `config.tuning.space`; returns {config key: value}."""
    values: dict[str, Any] = {}
    for dim in config.tuning.space:
        if dim.when and not values.get(dim.when, current_value(config, dim.when)):
            continue
        values[dim.key] = _suggest(trial, dim, config)
    return values


def apply(config: Config, values: Mapping[str, Any]) -> Config:
    """`config` with the sampled values set (validated: an impossible combination raises)."""
    tree = config_to_dict(config)
    for key, value in values.items():
        section, _, name = key.partition(".")
        tree[section][name] = value
    return validate(config_from_dict(tree))


def current_value(config: Config, key: str) -> Any:
    """The value of `section.key` in a config."""
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


def short_values(values: Mapping[str, Any]) -> str:
    """`learning_rate=0.002, reduction_factor=3`: sampled values for logs and tables."""
    return ", ".join(
        f"{key.split('.')[-1]}={value:.3g}"
        if isinstance(value, float)
        else f"{key.split('.')[-1]}={value}"
        for key, value in values.items()
    )


def _suggest(trial: optuna.Trial, dim: SearchDimension, config: Config) -> Any:
    if dim.choices:
        return trial.suggest_categorical(dim.key, list(dim.choices))
    assert dim.low is not None and dim.high is not None  # rules.validate() checked it
    section, _, name = dim.key.partition(".")
    kind = typing.get_type_hints(type(getattr(config, section)))[name]
    if kind is int:
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high), log=dim.log)
    return trial.suggest_float(dim.key, dim.low, dim.high, log=dim.log)
