"""A located YAML mapping read into a dataclass by its fields and type hints, field by field: each
value of the wrong type, or out of range, is an error at the file:line where it was written."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Sequence
from typing import Any

from dsv4serve.errors import oneline
from dsv4serve.profiles.document import KINDS, STR_HINT, Loc, LocatedList, LocatedMap, fail, join, kind
from dsv4serve.redact import is_secret

MAX_INT = 2**63 - 1  # vLLM, safetensors and C take 64-bit integers
_HINTS = {
    bool: "write true or false",
    int: "write a whole number without quotes, e.g. 8",
    float: "write a number, e.g. 0.9",
    str: STR_HINT,
}


def build(cls: type, raw: Any, path: str, at: Loc = ("", 0), skip: Sequence[str] = ()) -> Any:
    """Validate a mapping against a dataclass's fields and type hints, field by field."""
    if not isinstance(raw, LocatedMap):
        raise fail(
            at,
            path or "(top level)",
            f"expected a mapping, got {kind(raw)}",
            f"indent the {path or 'profile'} fields under `{path.rsplit('.', 1)[-1]}:`",
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    known = sorted(fields) + (["extends"] if skip else [])
    for key in [*raw, *raw.cleared]:  # a key an `extends` child cleared with null must exist too
        if key not in fields:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else f"known fields: {', '.join(known)}"
            raise fail(raw.where.get(key) or raw.cleared[key], join(path, key), "unknown field", hint)
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(raw[name], hints[name], join(path, name), raw.where[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if name in raw.cleared:
                raise cleared_required(raw, name, path)
            raise fail(
                raw.at,
                join(path, name),
                "missing required field",
                f"add `{name}:` to {path or 'the profile'}",
            )
    return cls(**values)


def cleared_required(section: LocatedMap, name: str, path: str) -> Exception:
    """A required field an `extends` child set to null: name the null, not a missing field."""
    return fail(
        section.cleared[name],
        join(path, name),
        "null clears the inherited value, and this field is required",
        f"give {name} a value, or remove the `{name}: null` line to keep the parent's",
    )


def _convert(value: Any, hint: Any, path: str, at: Loc) -> Any:
    """Check one value against a type hint and convert YAML shapes (lists, mappings) to frozen ones."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(value, next(a for a in args if a is not type(None)), path, at)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, path, at)
    if origin is tuple and args[-1] is Ellipsis:
        return _convert_tuple(value, args[0], path, at)
    ok = type(value) is hint or (hint is float and type(value) is int)  # bool is not an int here
    if not ok:
        raise fail(at, path, f"expected {KINDS.get(hint, hint)}, got {kind(value)}", _HINTS.get(hint, ""))
    # Every number in range here, once: later stages (plan, show, JSON) never see 10**400 or .inf.
    if hint in (int, float) and (abs(value) > MAX_INT if type(value) is int else not math.isfinite(value)):
        raise fail(
            at, path, f"out of range, got {kind(value)}", f"write a finite number of at most {MAX_INT}"
        )
    if hint in (int, float) and value < 0:
        raise fail(at, path, f"must not be negative, got {value}", "sizes and counts are 0 or more")
    return float(value) if hint is float else value


def _convert_tuple(value: Any, item: Any, path: str, at: Loc) -> tuple:
    """A YAML list -> tuple of items; a YAML mapping -> sorted tuple of (key, value) pairs (env)."""
    if typing.get_origin(item) is tuple:  # tuple[tuple[str, str], ...]: written as a mapping
        if not isinstance(value, LocatedMap):
            raise fail(at, path, f"expected a mapping, got {kind(value)}", 'write NAME: "value" lines')
        pairs = []
        for key, val in value.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise fail(
                    value.where[key], join(path, key), "not a valid variable name", "use A-Z, 0-9 and _"
                )
            if not isinstance(val, str):
                secret = is_secret(key)  # a token's value is never shown, not even in an error
                raise fail(
                    value.where[key],
                    join(path, key),
                    f"expected a string, got {kind(val, show=not secret)}",
                    f'quote the value: {key}: "{"..." if secret else oneline(val, 40)}"',
                )
            pairs.append((key, val))
        return tuple(sorted(pairs))
    if not isinstance(value, LocatedList):
        raise fail(at, path, f"expected a list, got {kind(value)}", 'write a list, e.g. ["a", "b"]')
    return tuple(_convert(v, item, join(path, i), value.where[i]) for i, v in enumerate(value))


def shown(text: str) -> str:
    """User text quoted in an error: control characters escaped, cut when long."""
    return repr(oneline(text, 60))


def not_a(text: str, what: str) -> str:
    """The problem of a value that is not `what`; a huge one (5,000 digits) by its length alone."""
    if len(text) > 60:
        return f"a {len(text)}-character value is not {what}"
    return f"{shown(text)} is not {what}"


def where(doc: LocatedMap, *keys: str | int) -> Loc:
    """Where a field was written, or the nearest enclosing mapping when it was not."""
    node, loc = doc, doc.at
    for key in keys:
        in_map = isinstance(node, LocatedMap) and key in node
        in_list = isinstance(node, LocatedList) and isinstance(key, int) and key < len(node)
        if not (in_map or in_list):
            break
        loc, node = node.where[key], node[key]
    return loc
