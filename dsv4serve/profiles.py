"""Profiles: find YAML files on the search path, resolve `extends`, validate into a frozen Profile.

`extends: NAME` merges the child over its parent: mappings key by key, everything else (lists too) the
child replaces. A child's `null` clears the inherited value: the key is dropped from the merge and the
field takes its default, e.g. `model: {generate: null, repo: me/model}`, `serve: {env: null}` or
`hardware: null`. A required field cleared this way is an error naming the null line (a profile without
`extends` has nothing to clear: there null is checked against the field's type as any value). A child
that names its own weights (a non-null repo, path or generate) inherits neither the parent's source nor
its revision.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4serve.errors import ProfileError
from dsv4serve.profile_schema import LOADER_FIELDS, build, check
from dsv4serve.profile_types import Profile
from dsv4serve.profile_yaml import Loc, LocatedMap, fail, kind, read_document

SYSTEM_PROFILE_DIR = Path("/etc/dsv4serve/profiles")
SUFFIXES = (".yaml", ".yml")
SOURCE_KEYS = ("repo", "path", "generate")


def builtin_dir() -> Path:
    """The built-in profiles: inside the wheel, or the repository's profiles/ for editable installs."""
    # The package directory, as importlib.resources.files("dsv4serve") gives it, without importing that.
    packaged = Path(__file__).parent / "_builtin_profiles"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "profiles"


def search_path(profile_dirs: Sequence[str] = ()) -> list[tuple[Path, str]]:
    """Directories searched for profiles, first wins, with an origin label for each."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    entries = [(Path(d), "profile-dir") for d in profile_dirs]
    env = os.environ.get("DSV4SERVE_PROFILE_PATH", "")
    entries += [(Path(d), "env") for d in env.split(os.pathsep) if d]
    entries += [(Path.cwd() / "profiles", "cwd"), (Path(config) / "dsv4serve" / "profiles", "user")]
    entries += [(SYSTEM_PROFILE_DIR, "system")]
    builtin = builtin_dir()
    # A directory listed twice counts once; the built-in one keeps its label even when it is ./profiles.
    seen = {builtin.resolve()}
    unique = []
    for directory, origin in entries:
        key = directory.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((directory, origin))
    return unique + [(builtin, "builtin")]


def _is_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.endswith(SUFFIXES)


def _candidates(name: str, dirs: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Every file on the search path that the name could mean, first wins."""
    found = []
    for directory, origin in dirs:
        for suffix in SUFFIXES:
            file = directory / f"{name}{suffix}"
            if file.is_file():
                found.append((file, origin))
                break
    return found


def _profile_files(directory: Path) -> list[Path]:
    """The profile files in one directory; an unreadable or missing directory holds none."""
    try:
        return sorted(f for f in directory.iterdir() if f.suffix in SUFFIXES and f.is_file())
    except OSError:
        return []


def _known_names(dirs: list[tuple[Path, str]]) -> list[str]:
    return sorted({f.stem for d, _ in dirs for f in _profile_files(d)})


def locate_profile(
    name_or_path: str, profile_dirs: Sequence[str] = (), dirs: list[tuple[Path, str]] | None = None
) -> tuple[Path, str]:
    """The file a name or path means, and its origin label (`dirs`: the search path, if already built)."""
    if dirs is None:
        dirs = search_path(profile_dirs)
    if _is_path(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ProfileError(f"{name_or_path}: no such profile file", "check the path")
        return path, "path"
    found = _candidates(name_or_path, dirs)
    if not found:
        close = difflib.get_close_matches(name_or_path, _known_names(dirs), n=1)
        searched = ", ".join(str(d) for d, _ in dirs)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ProfileError(
            f"profile {name_or_path!r} not found",
            f"{hint}see `dsv4serve profiles list`; searched: {searched}",
        )
    return found[0]


def _parent_file(ref: str, child: Path, loc: Loc, dirs: list[tuple[Path, str]]) -> Path:
    """The file `extends: ref` in `child` means; a profile extending its own name gets the next one."""
    if _is_path(ref):
        path = (child.parent / Path(ref).expanduser()).resolve()
        if not path.is_file():
            raise fail(loc, "extends", f"parent file {ref} not found", "give a path relative to this file")
        return path
    found = [f for f, _ in _candidates(ref, dirs)]
    me = child.resolve()
    below = [f for f in found if f.resolve() == me]
    if below:  # the child is on the search path: only files after it can be its parent
        found = found[found.index(below[0]) + 1 :]
    if not found:
        where = "below this one " if below else ""
        raise fail(
            loc,
            "extends",
            f"parent profile {ref!r} not found {where}on the search path",
            "see `dsv4serve profiles list`, or give a file path",
        )
    return found[0]


def _merge(parent: LocatedMap, child: LocatedMap) -> LocatedMap:
    """Deep merge: mappings merge key by key, everything else (lists too) the child replaces; a child's
    null removes the key, inherited or not, so the field takes its default (recorded in `cleared`)."""
    out = LocatedMap(child.at)
    out.cleared.update(parent.cleared)
    for source in (parent, child):
        for key, value in source.items():
            old = out.get(key)
            if source is child and value is None:
                out.pop(key, None)
                out.where.pop(key, None)
                out.cleared[key] = child.where[key]
                continue
            out.cleared.pop(key, None)
            out[key] = (
                _merge(old, value) if isinstance(old, LocatedMap) and isinstance(value, LocatedMap) else value
            )
            out.where[key] = source.where[key]
    return out


def _resolve(
    path: Path, dirs: list[tuple[Path, str]], stack: tuple[Path, ...]
) -> tuple[LocatedMap, list[str]]:
    """Read a file and merge in its `extends` chain; returns the merged mapping and parent names."""
    doc = read_document(path)
    doc.setdefault("name", path.stem)  # set before merging so a parent's name is never inherited
    doc.where.setdefault("name", (str(path), 0))
    if "extends" not in doc or doc["extends"] is None:
        doc.pop("extends", None)
        return doc, []
    loc, ref = doc.where["extends"], doc.pop("extends")
    if not isinstance(ref, str) or not ref.strip():
        raise fail(loc, "extends", f"expected a profile name or path, got {kind(ref)}", "e.g. extends: flash")
    parent = _parent_file(ref, path, loc, dirs)
    if parent.resolve() in stack + (path.resolve(),):
        chain = " -> ".join(p.stem for p in stack + (path, parent))
        raise fail(loc, "extends", f"cycle: {chain}", "remove one `extends` from the cycle")
    base, chain = _resolve(parent, dirs, stack + (path.resolve(),))
    return _merge(_without_source(base, doc), doc), [parent.stem, *chain]


def _without_source(base: LocatedMap, child: LocatedMap) -> LocatedMap:
    """A child that names its own weights inherits neither the parent's source nor its revision."""
    model, base_model = child.get("model"), base.get("model")
    if not isinstance(model, LocatedMap) or not isinstance(base_model, LocatedMap):
        return base
    if all(model.get(key) is None for key in SOURCE_KEYS):  # `generate: null` alone names no weights
        return base
    trimmed = LocatedMap(base_model.at)
    trimmed.cleared.update(base_model.cleared)
    for key, value in base_model.items():
        if key not in (*SOURCE_KEYS, "revision"):
            trimmed[key], trimmed.where[key] = value, base_model.where[key]
    out = LocatedMap(base.at)
    out.update(base)
    out.where.update(base.where)
    out.cleared.update(base.cleared)
    out["model"] = trimmed
    return out


def load_profile(name_or_path: str, profile_dirs: Sequence[str] = ()) -> Profile:
    """Find a profile by name or path, resolve `extends`, validate, and return it frozen."""
    dirs = search_path(profile_dirs)
    path, origin = locate_profile(name_or_path, dirs=dirs)
    doc, chain = _resolve(path, dirs, ())
    profile = build(Profile, doc, "", skip=LOADER_FIELDS)
    profile = dataclasses.replace(profile, source=str(path), origin=origin, extends=tuple(chain))
    check(profile, doc)
    return profile


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """A JSON-able dict of a resolved profile (env as a mapping, tuples as lists)."""
    data = dataclasses.asdict(profile)
    data["serve"]["env"] = dict(profile.serve.env)
    data["serve"]["extra_args"] = list(profile.serve.extra_args)
    data["model"]["allow_patterns"] = list(profile.model.allow_patterns)
    data["hardware"] = [dataclasses.asdict(rule) for rule in profile.hardware]
    data["extends"] = list(profile.extends)
    return data


@dataclass(frozen=True)
class ProfileEntry:
    """One profile file on the search path, as `profiles list` shows it."""

    name: str
    description: str
    origin: str
    path: str
    shadows: tuple[str, ...] = ()  # files of the same name further down the search path
    shadowed_by: str = ""  # the file that wins over this one, if any
    error: str = ""  # why it does not load, if it does not


def list_profiles(profile_dirs: Sequence[str] = ()) -> list[ProfileEntry]:
    """Every profile file on the search path, by name, the winner first, each with what it shadows."""
    found: dict[str, list[tuple[Path, str]]] = {}
    for directory, origin in search_path(profile_dirs):
        # name.yaml beats name.yml in one directory, as in lookups
        for stem in dict.fromkeys(f.stem for f in _profile_files(directory)):
            found.setdefault(stem, []).append(_candidates(stem, [(directory, origin)])[0])
    return [
        _entry(name, rank, found[name], profile_dirs)
        for name in sorted(found)
        for rank in range(len(found[name]))
    ]


def _entry(name: str, rank: int, found: list[tuple[Path, str]], profile_dirs: Sequence[str]) -> ProfileEntry:
    file, origin = found[rank]
    try:
        description, error = load_profile(str(file), profile_dirs).description, ""
    except ProfileError as err:  # one broken file must not hide the others
        description, error = "", err.message
    shadows = tuple(str(f) for f, _ in found[1:]) if rank == 0 else ()
    winner = str(found[0][0]) if rank else ""
    return ProfileEntry(name, description, origin, str(file), shadows, winner, error)
