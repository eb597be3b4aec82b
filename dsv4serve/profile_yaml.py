"""YAML with locations: mappings and lists that remember file and line, and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dsv4serve.errors import ProfileError

_MAX_NODES = 20000  # alias bombs expand exponentially; real profiles have ~100 nodes
KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", type(None): "null"}
Loc = tuple[str, int]  # (file, line); line 0 = unknown
_PLAIN_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")
STR_HINT = 'write text; quote values YAML would read otherwise, e.g. "9.0" or "on"'


class LocatedMap(dict):
    """A YAML mapping that remembers where it and each of its keys were written."""

    def __init__(self, at: Loc):
        super().__init__()
        self.at = at
        self.where: dict[str, Loc] = {}
        # Keys an `extends` child set to null, which removed the inherited value (see profiles.py).
        self.cleared: dict[str, Loc] = {}


class LocatedList(list):
    """A YAML sequence that remembers where it and each item were written."""

    def __init__(self, at: Loc):
        super().__init__()
        self.at = at
        self.where: list[Loc] = []


def fail(loc: Loc, path: str, problem: str, hint: str = "") -> ProfileError:
    """Build the one-line error: file:line: field.path: problem."""
    file, line = loc
    place = f"{file}:{line}" if line else file
    return ProfileError(f"{place}: {path}: {problem}" if path else f"{place}: {problem}", hint)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class MarkedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml parses ~10x faster
    """SafeLoader that records each key's line, refuses duplicate keys and non-string keys."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file = file
        self.count = 0

    def build(self, node: yaml.Node, path: str, stack: tuple[int, ...] = ()) -> Any:
        """Turn a composed node into LocatedMap/LocatedList/scalars, naming the field path on errors."""
        at = (self.file, node.start_mark.line + 1)
        self.count += 1
        if id(node) in stack or self.count > _MAX_NODES:
            raise fail(at, path, "recursive or exploding YAML aliases", "write the values out")
        stack += (id(node),)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise fail(at, path or "(top level)", f"unsupported YAML tag {node.tag}", "remove the tag")
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # YAML merge keys (<<: *base)
            out = LocatedMap(at)
            for key_node, value_node in node.value:
                key = self.construct_object(key_node, deep=True)
                key_at = (self.file, key_node.start_mark.line + 1)
                if not isinstance(key, str):
                    raise fail(key_at, path or "(top level)", f"key {key!r} is not a string", STR_HINT)
                if key in out:
                    first = out.where[key][1]
                    raise fail(
                        key_at,
                        join(path, key),
                        f"duplicate key (first set on line {first})",
                        "keep one of them",
                    )
                out[key] = self.build(value_node, join(path, key), stack)
                out.where[key] = key_at
            return out
        if isinstance(node, yaml.SequenceNode):
            seq = LocatedList(at)
            for i, item in enumerate(node.value):
                seq.append(self.build(item, join(path, i), stack))
                seq.where.append((self.file, item.start_mark.line + 1))
            return seq
        return self.construct_object(node, deep=True)


def read_document(path: Path) -> LocatedMap:
    """Read one profile file into a located mapping (no `extends` resolution, no validation)."""
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise fail((file, 0), "", f"cannot read: {err.strerror or err}", "check the path") from None
    if b"\x00" in data:
        raise fail((file, 0), "", "binary data, not a YAML profile", "pass a .yaml profile file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise fail(
            (file, line), "", f"not UTF-8 text (byte 0x{data[err.start]:02x})", "save the file as UTF-8"
        ) from None
    loader = MarkedLoader(text, file)
    try:
        node = loader.get_single_node()
        doc = None if node is None else loader.build(node, "")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise fail(
            (file, mark.line + 1 if mark else 0),
            "",
            f"invalid YAML: {problem}",
            "fix the YAML syntax (indentation, colons, quotes)",
        ) from None
    except yaml.YAMLError as err:
        raise fail((file, 0), "", f"invalid YAML: {err}", "fix the YAML syntax") from None
    finally:
        loader.dispose()
    if doc is None:
        raise fail((file, 0), "", "empty profile", "start from `dsv4serve profiles show flash`")
    if not isinstance(doc, LocatedMap):
        raise fail(
            (file, 1),
            "(top level)",
            f"expected a mapping of profile fields, got {kind(doc)}",
            "write `name: ...`, `model: ...`, `serve: ...` at the top level",
        )
    return doc


def kind(value: Any) -> str:
    """How a YAML value reads in an error: its kind, and the value itself when short."""
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML writes it
    return f"{KINDS.get(type(value), type(value).__name__)} ({shown})"
