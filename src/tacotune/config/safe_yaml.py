"""YAML written by a user (a config file, a `--set` or `--hparams` value), parsed safely."""

from __future__ import annotations

from typing import Any

import yaml

from tacotune.errors import ConfigError

MAX_YAML_DEPTH = 16  # configs nest section > key > list (> list); deeper input is no config


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and nesting deeper than MAX_YAML_DEPTH.

    An alias makes a few hundred bytes expand into billions of values ("billion laughs"),
    and a config never needs one; deep nesting would exhaust the recursive composer.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(
                "anchors and aliases (&name, *name) are not allowed in tacotune configs; "
                "write each value out",
                event.start_mark,
            )
        if self._depth >= MAX_YAML_DEPTH:
            raise _Refused(
                f"nested more than {MAX_YAML_DEPTH} levels deep; a config is "
                "section: {key: value}",
                event.start_mark,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(yaml.YAMLError):
    """Valid YAML that tacotune refuses to load (see _ConfigLoader)."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(f"{problem} (line {mark.line + 1}, column {mark.column + 1})")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML written by a user (a config file, a --set value): safe types only,
    no anchors or aliases, bounded depth. `source` names it in errors."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as error:
        raise ConfigError(f"{source}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {error}") from error
    except ValueError as error:  # a number of 5000 digits, a date such as 2020-13-45
        raise ConfigError(
            f"{source} holds a value that cannot be converted ({error}); quote it if it is text"
        ) from error
    finally:
        loader.dispose()
