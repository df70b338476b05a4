"""Config values checked against their field's type, with one-line errors.

The type gives `Literal` choices, numbers (ints accepted for floats, and 1e-4 as YAML 1.1 leaves it,
a string), and annotated-types bounds (Gt, Ge, Lt, Le)."""
from __future__ import annotations

import difflib
import types
import typing

from annotated_types import Ge, Gt, Le, Lt

from dualerase.errors import ConfigError


def suggest(word: str, options) -> str:
    """A hint for a message: the `options` close to `word`, else all of them."""
    close = difflib.get_close_matches(word, list(options), n=3)
    return (f" (did you mean {', '.join(close)}?)" if close
            else f" (valid: {', '.join(sorted(options))})")


def coerce(key: str, value, hint):
    """`value` checked against the field's type `hint`, as that type (ints accepted for floats).

    `Literal` choices are checked too, and list items one by one. A value that does not fit raises
    ConfigError naming `key`."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    args = (typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType)
            else (hint,))
    if value is None and type(None) in args:
        return None
    for kind in (a for a in args if a is not type(None)):
        if typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            if value is None and "null" in choices:  # YAML reads the choice's word as None
                return "null"
            if any(value == c and type(value) is type(c) for c in choices):
                return value
            raise ConfigError(f"{key} = {value!r} is not valid"
                              f"{suggest(str(value), [str(c) for c in choices])}")
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (str, bool) and isinstance(value, kind):
            return value
        if typing.get_origin(kind) is list and isinstance(value, list):
            (item,) = typing.get_args(kind)
            return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    names = " or ".join(_type_name(k) for k in args)
    raise ConfigError(f"{key} must be {names}, got {value!r}: fix the value in the preset or --set")


def _type_name(kind) -> str:
    """How a message names a type: "null", "a list", or the type's name."""
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) is list:
        return "a list"
    return kind.__name__


def bounds(hint) -> list:
    """The annotated-types bounds (Gt, Ge, Lt, Le) a field's type carries."""
    return list(typing.get_args(hint)[1:]) if typing.get_origin(hint) is typing.Annotated else []


def check_bounds(key: str, value, bounds: list) -> None:
    """A one-line ConfigError when `value` breaks a bound: "must be > 0", "must be in [0, 1)"."""
    if value is None or not bounds:
        return
    low = next((("(", b.gt) for b in bounds if isinstance(b, Gt)), None) or \
        next((("[", b.ge) for b in bounds if isinstance(b, Ge)), None)
    high = next(((")", b.lt) for b in bounds if isinstance(b, Lt)), None) or \
        next((("]", b.le) for b in bounds if isinstance(b, Le)), None)
    ok = (low is None or (value > low[1] if low[0] == "(" else value >= low[1])) and \
        (high is None or (value < high[1] if high[0] == ")" else value <= high[1]))
    if ok:
        return
    if high is None:
        rule = f"{'>' if low[0] == '(' else '>='} {low[1]}"
    else:
        rule = f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    raise ConfigError(f"{key} must be {rule}, got {value!r}")


def looks_numeric(text: str) -> bool:
    """YAML 1.1 reads '1e-4' as a string; accept it as the number a user means."""
    try:
        float(text)
        return text.strip().lower() not in ("nan", "inf", "-inf", "infinity", "-infinity")
    except ValueError:
        return False
