"""YAML with locations: mappings and lists that remember file and line, and one-line errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from dsv4serve.errors import ProfileError, oneline
from dsv4serve.redact import is_secret

_MAX_NODES = 20000  # alias bombs expand exponentially; real profiles have ~100 nodes
MAX_DEPTH = 32  # real profiles nest 4 deep; deeper is a mistake (and Python recursion is finite)
MAX_BYTES = 1 << 20  # real profiles are ~2 KB: never read a huge file whole
_MERGE_TAG = "tag:yaml.org,2002:merge"
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
    """Build the one-line error: file:line: field.path: problem (a path of 10,000-character keys cut)."""
    file, line = loc
    place = f"{oneline(file)}:{line}" if line else oneline(file)
    path = oneline(path, 120)
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
        if id(node) in stack:
            raise fail(at, path, "a YAML alias that contains itself", "write the values out")
        if self.count > _MAX_NODES:
            raise fail(
                at, path, f"more than {_MAX_NODES} values (exploding YAML aliases?)", "write the values out"
            )
        if len(stack) >= MAX_DEPTH:
            raise fail(
                at, path, f"nested deeper than {MAX_DEPTH} levels", "check the indentation and brackets"
            )
        stack += (id(node),)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_TAGS:
            raise fail(at, path or "(top level)", f"unsupported YAML tag {node.tag}", "remove the tag")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, at, path, stack)
        if isinstance(node, yaml.SequenceNode):
            seq = LocatedList(at)
            for i, item in enumerate(node.value):
                seq.append(self.build(item, join(path, i), stack))
                seq.where.append((self.file, item.start_mark.line + 1))
            return seq
        return self._scalar(node, at, path)

    def _mapping(self, node: yaml.MappingNode, at: Loc, path: str, stack: tuple[int, ...]) -> LocatedMap:
        """A mapping; YAML merge keys (<<: *base) give defaults that the mapping's own keys override."""
        own = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        self.flatten_mapping(node)  # puts the merged pairs first
        merged = len(node.value) - own
        out = LocatedMap(at)
        from_merge: set[str] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key_at = (self.file, key_node.start_mark.line + 1)
            key = self._scalar(key_node, key_at, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = oneline(repr(key), 40) if key is not None else "a collection"
                raise fail(key_at, path or "(top level)", f"key {shown} is not a string", STR_HINT)
            if key in out:
                if i < merged:  # the first merged mapping that sets a key wins (YAML merge rules)
                    continue
                if key not in from_merge:
                    first = out.where[key][1]
                    raise fail(
                        key_at,
                        join(path, key),
                        f"duplicate key (first set on line {first})",
                        "keep one of them",
                    )
            if i < merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            out[key] = self.build(value_node, join(path, key), stack)
            out.where[key] = key_at
        return out

    def _scalar(self, node: yaml.Node, at: Loc, path: str) -> Any:
        """A scalar as YAML types it; a value its tag cannot hold (!!int abc, 2024-13-45, an empty
        !!timestamp) is an error. Any failure of a constructor, not only the ones PyYAML means to raise:
        `!!timestamp` with no date in it fails with an AttributeError inside PyYAML."""
        try:
            return self.construct_object(node, deep=True)
        except yaml.YAMLError:
            raise
        except Exception as err:
            kind_ = node.tag.rsplit(":", 1)[-1]
            text = str(node.value)
            # PyYAML's own words only where they say what is wrong (month must be in 1..12)
            why = f" ({oneline(err, 80)})" if isinstance(err, (ValueError, ArithmeticError)) else ""
            if kind_ == "int" and len(text) > 30:
                problem = f"a {len(text)}-character integer is far too large"
            elif is_secret(path.rsplit(".", 1)[-1]):  # HF_TOKEN: !!int hf_x: never show a secret
                problem = f"the value is not a valid YAML {kind_}"
            else:
                shown = repr(text) if len(text) <= 40 else repr(text[:37]) + "..."
                problem = f"{shown} is not a valid YAML {kind_}{why}"
            raise fail(
                at, path or "(top level)", problem, f"quote it if it is text, or write a valid {kind_}"
            ) from None


def read_document(path: Path) -> LocatedMap:
    """Read one profile file into a located mapping (no `extends` resolution, no validation)."""
    file = str(path)
    data = read_bounded(path, file)
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
        problem = oneline(" ".join(p for p in (err.context, err.problem) if p), 200)
        raise fail(
            (file, mark.line + 1 if mark else 0),
            "",
            f"invalid YAML: {problem}",
            "fix the YAML syntax (indentation, colons, quotes)",
        ) from None
    except yaml.YAMLError as err:
        raise fail((file, 0), "", f"invalid YAML: {oneline(err, 200)}", "fix the YAML syntax") from None
    except RecursionError:  # merge keys (<<) that merge themselves, or nest beyond Python's stack
        raise fail((file, 0), "", "YAML nested or merged too deeply", "write the values out") from None
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


def read_bounded(path: Path, file: str) -> bytes:
    """The bytes of a regular file of at most MAX_BYTES; never blocks on a FIFO or reads a device."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise fail((file, 0), "", f"cannot read: {err.strerror or err}", "check the path") from None
    try:
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise fail((file, 0), "", "is a directory, not a profile file", "name a .yaml file")
            if not stat.S_ISREG(mode):
                raise fail(
                    (file, 0), "", "is not a regular file (a FIFO, device or socket)", "name a .yaml file"
                )
            data = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise fail((file, 0), "", f"cannot read: {err.strerror or err}", "check the file") from None
    if len(data) > MAX_BYTES:
        raise fail((file, 0), "", f"larger than {MAX_BYTES >> 20} MiB: not a profile", "name a .yaml file")
    return data


def kind(value: Any, show: bool = True) -> str:
    """How a YAML value reads in an error: its kind, and the value itself when short (and `show`)."""
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if not show:
        return KINDS.get(type(value), "a value")
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"  # repr() refuses past 4,300 digits
    shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML writes it
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{KINDS.get(type(value), type(value).__name__)} ({shown})"
