"""One JSON codec for frozen dataclasses: `to_json` writes `dataclasses.asdict`, `from_json` rebuilds
the typed object (nested dataclasses, tuples, Optional / unions, Literal, Path, dicts) and names
the field of any value that does not fit."""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class CodecError(ValueError):
    """A JSON value that does not fit its field (the message names the field)."""


def _default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-able: {type(value).__name__} {value!r:.80}")


def to_json(obj: Any) -> str:
    """The dataclass `obj` as JSON (`dataclasses.asdict`; Paths as strings)."""
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, default=_default)


def from_json(cls: type[T], text: str) -> T:
    """The `cls` instance that `to_json` wrote as `text`; CodecError naming the field on a misfit."""
    return decode(cls, json.loads(text), cls.__name__)


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _misfit(where: str, tp: Any, value: Any) -> CodecError:
    return CodecError(f"{where}: expected {_name(tp)}, got {type(value).__name__} {value!r:.80}")


def _dataclass(cls: type, value: Any, where: str, ignore_unknown: bool) -> Any:
    if not isinstance(value, dict):
        raise _misfit(where, cls, value)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown and not ignore_unknown:
        raise CodecError(f"{where}: unknown {cls.__name__} fields {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: decode(hints[name], v, f"{where}.{name}", ignore_unknown)
              for name, v in value.items() if name in fields}
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CodecError(f"{where}: missing {cls.__name__} fields {missing}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # the class's own checks (__post_init__)
        raise CodecError(f"{where}: {e}") from None


def _union(args: tuple, value: Any, where: str, ignore_unknown: bool) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return decode(arg, value, where, ignore_unknown)
        except CodecError as e:
            errors.append(str(e))
    raise CodecError(errors[0] if len(errors) == 1 else
                     f"{where}: fits none of {' | '.join(map(_name, args))}, got {value!r:.80}")


def _scalar(tp: type, value: Any, where: str) -> Any:
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is Path and isinstance(value, str):
        return Path(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise _misfit(where, tp, value)


def decode(tp: Any, value: Any, where: str = "value", ignore_unknown: bool = False) -> Any:
    """`value` (parsed JSON) as type `tp`; `where` names it in errors; `ignore_unknown` drops (not refuses)
    dataclass fields the class does not have (stored handles older than a field's removal)."""
    origin, args = typing.get_origin(tp) or (tp if tp in (dict, list, tuple) else None), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where, ignore_unknown)
    if origin in (typing.Union, types.UnionType):
        return _union(args, value, where, ignore_unknown)
    if origin is typing.Literal:
        if value not in args:
            raise CodecError(f"{where}: expected one of {list(args)}, got {value!r:.80}")
        return value
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            raise _misfit(where, tp, value)
        key_tp, value_tp = args or (Any, Any)
        return {_key(key_tp, k, where): decode(value_tp, v, f"{where}[{k!r}]", ignore_unknown)
                for k, v in value.items()}
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise _misfit(where, tp, value)
        fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis
        if fixed and len(args) != len(value):
            raise CodecError(f"{where}: expected {len(args)} items, got {len(value)}")
        items = [decode(args[i] if fixed else (args[0] if args else Any), v, f"{where}[{i}]", ignore_unknown)
                 for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if isinstance(tp, type):
        return _scalar(tp, value, where)
    raise CodecError(f"{where}: cannot decode type {_name(tp)}")


def _key(tp: Any, key: str, where: str) -> Any:
    """A JSON object's key (always a string) as the mapping's key type."""
    if tp is int:
        try:
            return int(key)
        except ValueError:
            raise CodecError(f"{where}: key {key!r} is not an integer") from None
    return decode(tp, key, f"{where} key")
