"""Strict reading of JSON objects with field paths in every error.

The registry contract says unknown fields are errors (a typo must not pass
silently), booleans are not numbers, and every error names the field. Readers
here raise :class:`~xds_server.errors.ValidationError` with a dotted path
(``load_balancer.session_affinity.ttl_ms``, ``destinations[1].weight``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import orjson

from xds_server.errors import ValidationError

T = TypeVar("T")

MAX_VALUE_BYTES = 1024 * 1024
"""Values over 1 MiB are rejected (registry contract)."""

_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def join(path: str, name: str | int) -> str:
    """Extend a field path with an attribute name or a list index."""
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode one registry value: at most 1 MiB of UTF-8 JSON holding one object."""
    if len(raw) > MAX_VALUE_BYTES:
        raise ValidationError("", f"value is {len(raw)} bytes, over the 1 MiB limit")
    # orjson decodes much faster (a cold start decodes every value). Whatever it refuses
    # goes through the json module, which decides and words the error, so the outcome for
    # every input is the json module's: it takes what orjson is stricter about (NaN, 1e400,
    # lone surrogates). orjson reads integers beyond 64 bits as floats where json keeps
    # them exact: values with such long digit runs take the json module too.
    if not _LONG_DIGITS.search(raw):
        try:
            fast = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            if type(fast) is dict:
                return fast
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValidationError("", f"value is not UTF-8: {exc.reason}") from None
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ValidationError("", f"value must be a JSON object, not {_kind(data)}")
    return data


def fast_decode(decode: Callable[[bytes], T], raw: bytes) -> T | None:
    """``decode(raw)`` with a msgspec decoder of a common value shape, or None when the
    value is over the size limit or not of that shape (the strict reader then decides and
    words the error)."""
    if len(raw) > MAX_VALUE_BYTES:
        return None
    try:
        return decode(raw)
    except ValueError:  # msgspec's DecodeError and ValidationError; UnicodeDecodeError
        return None


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Obj:
    """A JSON object being read field by field; :meth:`done` rejects what was not read."""

    def __init__(self, data: object, path: str = "") -> None:
        if not isinstance(data, dict):
            raise ValidationError(path, f"must be an object, not {_kind(data)}")
        self._data: dict[str, Any] = data
        self._path = path
        self._seen: set[str] = set()

    @property
    def path(self) -> str:
        return self._path

    def has(self, name: str) -> bool:
        return name in self._data

    def field(self, name: str) -> str:
        """The full path of one of this object's fields."""
        return join(self._path, name)

    def _get(self, name: str) -> object:
        self._seen.add(name)
        return self._data.get(name)

    def str_(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name)
        if value is None:
            if required or default is None:
                raise ValidationError(self.field(name), "is required")
            return default
        if not isinstance(value, str):
            raise ValidationError(self.field(name), f"must be a string, not {_kind(value)}")
        return value

    def opt_str(self, name: str) -> str | None:
        if self._data.get(name) is None:
            self._seen.add(name)
            return None
        return self.str_(name)

    def int_(
        self,
        name: str,
        default: int | None = None,
        *,
        lo: int | None = None,
        hi: int | None = None,
    ) -> int:
        value = self._get(name)
        if value is None:
            if default is None:
                raise ValidationError(self.field(name), "is required")
            return default
        # JSON has one number type; bool is an int subclass in Python, so exclude it.
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValidationError(self.field(name), f"must be an integer, not {_kind(value)}")
        if lo is not None and value < lo:
            raise ValidationError(self.field(name), f"must be at least {lo}, got {value}")
        if hi is not None and value > hi:
            raise ValidationError(self.field(name), f"must be at most {hi}, got {value}")
        return value

    def opt_int(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        if self._data.get(name) is None:
            self._seen.add(name)
            return None
        return self.int_(name, lo=lo, hi=hi)

    def bool_(self, name: str, default: bool) -> bool:
        value = self._get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ValidationError(self.field(name), f"must be true or false, not {_kind(value)}")
        return value

    def obj(self, name: str) -> Obj | None:
        """A nested object, or ``None`` when the field is absent or null."""
        value = self._get(name)
        return None if value is None else Obj(value, self.field(name))

    def list_(self, name: str) -> list[tuple[str, object]] | None:
        """A list as (path, item) pairs, or ``None`` when absent."""
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise ValidationError(self.field(name), f"must be an array, not {_kind(value)}")
        return [(join(self.field(name), i), item) for i, item in enumerate(value)]

    def str_list(self, name: str) -> list[str] | None:
        items = self.list_(name)
        if items is None:
            return None
        out = []
        for path, item in items:
            if not isinstance(item, str):
                raise ValidationError(path, f"must be a string, not {_kind(item)}")
            out.append(item)
        return out

    def str_map(self, name: str) -> dict[str, str] | None:
        """An object whose values are all strings (labels, header matches)."""
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValidationError(self.field(name), f"must be an object, not {_kind(value)}")
        for key, item in value.items():
            if not isinstance(item, str):
                raise ValidationError(
                    join(self.field(name), key), f"must be a string, not {_kind(item)}"
                )
        return dict(value)

    def items(self) -> Iterator[tuple[str, object]]:
        """Every field (for maps with free keys); marks them all as read."""
        for key, value in self._data.items():
            self._seen.add(key)
            yield key, value

    def done(self) -> None:
        """Reject fields that were never read: unknown fields are errors, never ignored."""
        unknown = [k for k in self._data if k not in self._seen]
        if unknown:
            name = unknown[0]
            hint = difflib.get_close_matches(name, sorted(self._seen), n=1)
            suffix = f" (did you mean {hint[0]!r}?)" if hint else ""
            allowed = ", ".join(sorted(self._seen))
            raise ValidationError(self.field(name), f"unknown field{suffix}; allowed: {allowed}")
