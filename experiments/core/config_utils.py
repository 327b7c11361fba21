"""Reading and comparing `ml_collections` configs with errors that name the offending field.

Each module declares the fields it reads from its config section as a schema (field name ->
`Field`), and `read_fields` checks them all at once. Sections may hold extra fields (other stages
add their own), but every field that is read must have the declared type.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config field that is missing, has the wrong type or an invalid value."""


_REQUIRED = object()
IntTuple = "tuple of int"  # Marker type: a tuple (or, after a JSON round trip, a list) of ints.


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field that a module reads.

    Attributes:
      types: the accepted types (`int` excludes `bool`; `float` also accepts `int`), or `IntTuple`.
      default: the value used when the field is absent; absent fields without one are an error.
    """

    types: Any
    default: Any = _REQUIRED


def _type_names(types: Any) -> str:
    if types is IntTuple:
        return IntTuple
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("None" if t is type(None) else t.__name__ for t in types)


def _convert(value: Any, types: Any) -> tuple[bool, Any]:
    """Returns (whether `value` is one of `types`, the value in its canonical form)."""
    if types is IntTuple:
        ok = isinstance(value, (tuple, list)) and all(
            isinstance(item, int) and not isinstance(item, bool) for item in value
        )
        return ok, tuple(value) if ok else value
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types, value
    if isinstance(value, int) and float in types and int not in types:
        return True, float(value)
    return isinstance(value, types), value


def read_fields(
    section: ml_collections.ConfigDict | Mapping[str, Any],
    schema: Mapping[str, Field],
    where: str,
) -> dict[str, Any]:
    """Reads and type-checks the fields of one config section.

    Args:
      section: the config section, e.g. `config.model`.
      schema: the fields to read and their types and defaults.
      where: the section's name in messages, e.g. `"config.model"`.

    Returns:
      A dict from field name to value, with defaults filled in, ints converted to float where a
      float is expected and int sequences converted to tuples.

    Raises:
      ConfigError: naming the first field that is missing or has the wrong type.
    """
    if not isinstance(section, (ml_collections.ConfigDict, Mapping)):
        raise ConfigError(f"{where} must be a ConfigDict section; got {type(section).__name__}.")
    values = {}
    for name, field in schema.items():
        if name not in section:
            if field.default is _REQUIRED:
                raise ConfigError(
                    f"{where}.{name} is missing; expected {_type_names(field.types)}."
                )
            values[name] = field.default
            continue
        ok, value = _convert(section[name], field.types)
        if not ok:
            raise ConfigError(
                f"{where}.{name} must be {_type_names(field.types)}; got "
                f"{type(section[name]).__name__} {section[name]!r}."
            )
        values[name] = value
    return values


def choose(name: str, options: Mapping[str, Any], where: str) -> Any:
    """Returns `options[name]`, or raises a `ConfigError` that lists the valid names."""
    if name not in options:
        raise ConfigError(f"Unknown {where} {name!r}; expected one of {sorted(options)}.")
    return options[name]


def to_plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Returns `config` as plain JSON data (tuples become lists), as it is saved to disk."""
    return json.loads(config.to_json())


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "config"
) -> list[str]:
    """Lists the fields in which two plain (JSON) configs differ.

    Args:
      old: the first config, as from `to_plain`.
      new: the second config.
      prefix: the name printed before each field path.

    Returns:
      One line per differing leaf field, `"config.a.b: OLD -> NEW"`, sorted by path; fields present
      in only one config show `<absent>` on the other side.
    """
    lines = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}"
        old_value, new_value = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(old_value, Mapping) and isinstance(new_value, Mapping):
            lines.extend(differences(old_value, new_value, path))
        elif old_value != new_value:
            lines.append(f"{path}: {old_value!r} -> {new_value!r}")
    return lines
