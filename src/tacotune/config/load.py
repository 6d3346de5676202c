"""Build a `Config` from defaults, a YAML file and command-line overrides.

Order: dataclass defaults -> YAML file -> `--set section.key=value` -> legacy
`--hparams "name=value,..."`. Every key is checked against the schema; an
unknown key is an error that names the closest valid one; values are checked
against the field's type (no silent coercion of "1e-3x" into anything).

Why `coerce` and not pydantic (measured with pydantic 2.14 on the same schema and nine
bad inputs): pydantic validates stdlib dataclasses only with a `__pydantic_config__`
on every section (pydantic would become a core dependency; today only the serve extra
brings it). Its lax mode silently turns `batch_size: true` into 1; its strict mode
refuses every YAML mapping and list ("Input should be an instance of Config"). Its
messages carry no "did you mean" ("Unexpected keyword argument" for `learning_rte`)
and a URL each, so a wrapper would have to rewrite them. `coerce` is ~110 lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from tacotune.config.legacy import translate_hparams
from tacotune.config.rules import validate
from tacotune.config.safe_yaml import load_yaml
from tacotune.config.schema import Config
from tacotune.errors import ConfigError, short_repr

PRESETS: Traversable = files("tacotune") / "configs"  # the bundled presets, shipped in the wheel
MAX_CONFIG_BYTES = 1 << 20  # a real config is a few KB; a larger file is refused before parsing
_YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    hparams: str | None = None,
) -> Config:
    """Resolve a configuration.

    Args:
        path: a YAML file, or the name of a bundled preset (``demo.yaml`` or ``demo``).
        overrides: ``section.key=value`` strings; values are YAML (``1e-3``, ``true``, ``[1, 2]``).
        hparams: the predecessor's flat ``name=value,name=value`` string.
    """
    tree: dict[str, dict[str, Any]] = {}
    if path is not None:
        _merge(tree, _read_yaml(resolve_config_path(path)))
    _merge(tree, parse_overrides(overrides))
    if hparams:
        _merge(tree, translate_hparams(hparams))
    return validate(config_from_dict(tree))


def override_config(config: Config, overrides: Iterable[str]) -> Config:
    """`config` with `section.key=value` overrides applied (and validated)."""
    tree: dict[str, Any] = config_to_dict(config)
    _merge(tree, parse_overrides(overrides))
    return validate(config_from_dict(tree))


def parse_overrides(overrides: Iterable[str]) -> dict[str, dict[str, Any]]:
    """`["train.batch_size=16"]` -> `{"train": {"batch_size": 16}}` (values parsed as YAML)."""
    tree: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, value = _split_assignment(item, "--set")
        section, _, name = key.partition(".")
        if not name:
            raise ConfigError(f"--set needs section.key=value, found {short_repr(item)}")
        _merge(tree, {section: {name: load_yaml(value, f"--set {short_repr(item)}")}})
    return tree


def resolve_config_path(path: str | Path) -> Path | Traversable:
    """The file itself if it exists, else the bundled preset of that name (`demo`, `demo.yaml`)."""
    candidate = Path(path)
    if candidate.exists():
        return candidate
    name = candidate.name if candidate.suffix else f"{candidate.name}.yaml"
    bundled = PRESETS / name
    if bundled.is_file():
        return bundled
    raise ConfigError(
        f"config file {short_repr(str(path))} not found, and it is no bundled preset; "
        f"presets: {preset_names()}"
    )


def preset_names() -> list[str]:
    """The bundled presets (`tacotune/configs/*.yaml`)."""
    return sorted(p.name for p in PRESETS.iterdir() if p.name.endswith(".yaml"))


def config_from_dict(tree: Mapping[str, Any]) -> Config:
    """Build a Config from a nested mapping of overrides (missing keys keep defaults)."""
    return typing.cast(Config, _coerce_dataclass(tree, Config, ""))


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """A plain nested dict (tuples as lists) suitable for YAML/JSON."""
    return typing.cast(dict[str, dict[str, Any]], _plain(dataclasses.asdict(cfg)))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved configuration as YAML (the record of what a job actually used)."""
    Path(path).write_text(dump_config(cfg), encoding="utf-8")


def dump_config(cfg: Config) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False)


def all_keys() -> list[str]:
    """Every valid `section.key`."""
    return [
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(_section_type(s.name))
    ]


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation and convert lists to tuples."""
    origin = get_origin(annotation)
    if origin is Literal:
        choices = get_args(annotation)
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/no/on/yes as a boolean
            value = next((c for c in _YAML_BOOL_WORDS[value] if c in choices), value)
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, found {short_repr(value)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for option in get_args(annotation):
            try:
                return coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            f"{key}: {short_repr(value)} fits none of the allowed types ({'; '.join(errors)})"
        )
    if origin is tuple:
        return _coerce_tuple(value, get_args(annotation), key)
    if dataclasses.is_dataclass(annotation):
        return _coerce_dataclass(value, annotation, key)
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{key} must be null, found {short_repr(value)}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, found {short_repr(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, found {short_repr(value)}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            value = _number_or_text(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, found {short_repr(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, found {short_repr(value)}")
        return value
    raise TypeError(f"config field {key} has an unsupported annotation {annotation!r}")


def _coerce_dataclass(value: Any, cls: Any, key: str) -> Any:
    """A mapping -> an instance of the dataclass `cls`, every field checked."""
    if isinstance(value, cls):
        return value
    where = key or "the config"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, found {short_repr(value)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, raw in value.items():
        path = f"{key}.{name}" if key else str(name)
        if name not in fields:
            kind = "section" if not key else "key"
            raise ConfigError(_unknown(kind, path, [f"{key}.{n}" if key else n for n in fields]))
        kwargs[name] = coerce(raw, hints[name], path)
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where} needs {', '.join(missing)}")
    return cls(**kwargs)


def _coerce_tuple(value: Any, args: tuple[Any, ...], key: str) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} must be a list, found {short_repr(value)}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{key} must have {len(args)} items, found {short_repr(value)}")
    return tuple(
        coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
    )


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _section_type(name: str) -> type:
    hints = typing.get_type_hints(Config)
    return typing.cast(type, hints[name])


def _unknown(kind: str, name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config {kind} {short_repr(name)}{hint}"


def _split_assignment(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} needs key=value, found {short_repr(item)}")
    return key.strip(), value.strip()


def _read_yaml(path: Path | Traversable) -> dict[str, Any]:
    """A config file's mapping of sections; every way it can be unreadable is a ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a YAML file; give the config file itself")
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror or error}") from error
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is larger than {MAX_CONFIG_BYTES} bytes: that is no tacotune config "
            "(a full one is a few KB)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{path} is not a UTF-8 text file (byte {error.start}): a config is YAML text "
            "such as the config.yaml of a run; re-save it as UTF-8"
        ) from error
    data = load_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, found {type(data).__name__}")
    return data


def _merge(into: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = dict(value)
        else:
            into[key] = value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
