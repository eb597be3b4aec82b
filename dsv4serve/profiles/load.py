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
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4serve.errors import DsvError, ProfileError, oneline
from dsv4serve.profiles.document import Loc, LocatedMap, fail, kind, read_document
from dsv4serve.profiles.fields import build
from dsv4serve.profiles.schema import LOADER_FIELDS, check
from dsv4serve.profiles.types import Profile

SYSTEM_PROFILE_DIR = Path("/etc/dsv4serve/profiles")
SUFFIXES = (".yaml", ".yml")
SOURCE_KEYS = ("repo", "path", "generate")
MAX_EXTENDS = 16  # real chains are 1-2 deep; a longer one is a mistake, and recursion is finite
# What reading, merging or checking a profile may raise besides ProfileError: the OS (unreadable files,
# symlink loops: RuntimeError before Python 3.13), recursion, and arithmetic on hostile values. Each one
# still becomes a one-line ProfileError naming the file (exit 2), never an internal error.
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, ArithmeticError, LookupError, TypeError)


def _resolved(path: Path) -> Path:
    """path.resolve(), or the absolute path when resolving fails (a symlink loop, a bad name)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(path))


def _is_file(path: Path) -> bool:
    """Path.is_file() that answers False where the OS refuses to say (no permission, name too long)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _file_problem(path: Path) -> str:
    """Why a path is not a profile file one can read, or "" when it is one."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError) or getattr(err, "errno", 0) == errno.ENOTDIR:
            return "not found"
        return f"cannot be read: {getattr(err, 'strerror', None) or err}"
    if stat.S_ISREG(mode):
        return ""
    if stat.S_ISDIR(mode):
        return "is a directory, not a profile file"
    return "is not a file (a FIFO, device or socket)"


def _check_file(path: Path, shown: str, loc: Loc | None = None) -> None:
    """A profile reference (a path argument, or `extends` at loc) must name a regular file."""
    problem = _file_problem(path)
    if not problem:
        return
    if loc is not None:
        raise fail(
            loc, "extends", f"parent file {oneline(shown)} {problem}", "give a path relative to this file"
        )
    problem = "no such profile file" if problem == "not found" else problem
    raise ProfileError(
        f"{oneline(shown)}: {problem}", "name a profile (see `dsv4serve profiles list`) or a .yaml file"
    )


def builtin_dir() -> Path:
    """The built-in profiles: inside the wheel, or the repository's profiles/ for editable installs."""
    # The package directory, as importlib.resources.files("dsv4serve") gives it, without importing that.
    packaged = Path(__file__).parent.parent / "_builtin_profiles"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "profiles"


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
    seen = {_resolved(builtin)}
    unique = []
    for directory, origin in entries:
        key = _resolved(directory)
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
            if _is_file(file):
                found.append((file, origin))
                break
    return found


def _profile_files(directory: Path) -> list[Path]:
    """The profile files in one directory; an unreadable or missing directory holds none."""
    try:
        return sorted(f for f in directory.iterdir() if f.suffix in SUFFIXES and _is_file(f))
    except (OSError, ValueError):
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
        _check_file(path, name_or_path)
        return path, "path"
    found = _candidates(name_or_path, dirs)
    if not found:
        close = difflib.get_close_matches(name_or_path, _known_names(dirs), n=1)
        searched = ", ".join(str(d) for d, _ in dirs)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ProfileError(
            f"profile {name_or_path[:80]!r} not found",
            f"{hint}see `dsv4serve profiles list`; searched: {searched}",
        )
    return found[0]


def _parent_file(ref: str, child: Path, loc: Loc, dirs: list[tuple[Path, str]]) -> Path:
    """The file `extends: ref` in `child` means; a profile extending its own name gets the next one."""
    if _is_path(ref):
        path = child.parent / Path(ref).expanduser()
        _check_file(path, ref, loc)
        return _resolved(path)
    found = [f for f, _ in _candidates(ref, dirs)]
    me = _resolved(child)
    below = [f for f in found if _resolved(f) == me]
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
    try:
        doc = read_document(path)
    except _LOAD_ERRORS as err:  # read_document's own errors are ProfileErrors; this is the OS's
        raise fail((str(path), 0), "", f"cannot read: {_describe(err)}", "check the file") from None
    doc.setdefault("name", path.stem)  # set before merging so a parent's name is never inherited
    doc.where.setdefault("name", (str(path), 0))
    if "extends" not in doc or doc["extends"] is None:
        doc.pop("extends", None)
        return doc, []
    loc, ref = doc.where["extends"], doc.pop("extends")
    if not isinstance(ref, str) or not ref.strip():
        raise fail(loc, "extends", f"expected a profile name or path, got {kind(ref)}", "e.g. extends: flash")
    if len(stack) + 1 >= MAX_EXTENDS:
        raise fail(
            loc,
            "extends",
            f"chain of more than {MAX_EXTENDS} profiles",
            "extend a profile closer to the base",
        )
    parent = _parent_file(ref, path, loc, dirs)
    if _resolved(parent) in stack + (_resolved(path),):
        chain = " -> ".join(p.stem for p in stack + (path, parent))
        raise fail(loc, "extends", f"cycle: {oneline(chain, 200)}", "remove one `extends` from the cycle")
    base, chain = _resolve(parent, dirs, stack + (_resolved(path),))
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
    """Find a profile by name or path, resolve `extends`, validate, and return it frozen.

    The one error boundary of profile loading: whatever goes wrong is a one-line ProfileError that starts
    with what the user named (a problem in a parent names the parent's file:line after it)."""
    dirs = search_path(profile_dirs)
    path, origin = locate_profile(name_or_path, dirs=dirs)
    try:
        doc, chain = _resolve(path, dirs, ())
        profile = build(Profile, doc, "", skip=LOADER_FIELDS)
        profile = dataclasses.replace(profile, source=str(path), origin=origin, extends=tuple(chain))
        check(profile, doc)
    except ProfileError as err:
        raise _named(err, name_or_path, path) from None
    except _LOAD_ERRORS as err:
        problem = fail((str(path), 0), "", f"cannot load: {_describe(err)}", "check the profile's values")
        raise _named(problem, name_or_path, path) from None
    if profile.model.kv_cache and not profile.model.kv_bytes_per_token:  # derived: the long-context figure
        from dsv4serve.engines.vllm.kv_cache import V4_BLOCK_SIZE, v4_layout

        layout = v4_layout(profile.model.kv_cache, profile.serve.block_size or V4_BLOCK_SIZE)
        model = dataclasses.replace(profile.model, kv_bytes_per_token=round(layout.bytes_per_token))
        profile = dataclasses.replace(profile, model=model)
    return profile


def _describe(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply"
    text = getattr(err, "strerror", None) or str(err)
    return oneline(f"{type(err).__name__}: {text}" if not isinstance(err, OSError) else text, 200)


def _named(err: ProfileError, ref: str, path: Path) -> ProfileError:
    """The error, starting with the profile the user named: the user's spelling of the file when the
    problem is in it, else `ref: ` before the parent's file:line (validate's FAIL lines start so)."""
    message, own = err.message, oneline(str(path))
    if message.startswith(own + ":") and _is_path(ref):
        message = oneline(ref) + message[len(own) :]
    elif not message.startswith(own + ":"):
        message = f"{oneline(ref, 200)}: {message}"
    return ProfileError(message, err.hint)


def shadowed(name_or_path: str, profile_dirs: Sequence[str] = ()) -> tuple[Path, list[Path]]:
    """For a profile name: the file that wins and the files of that name it shadows further down the
    search path (a ./profiles/flash.yaml over the built-in flash). Paths shadow nothing."""
    if _is_path(name_or_path):
        return Path(name_or_path), []
    found = [file for file, _ in _candidates(name_or_path, search_path(profile_dirs))]
    return (found[0], found[1:]) if found else (Path(name_or_path), [])


def profile_to_dict(profile: Profile) -> dict[str, Any]:
    """A JSON-able dict of a resolved profile (env as a mapping, tuples as lists)."""
    data = dataclasses.asdict(profile)
    data["serve"]["env"] = dict(profile.serve.env)
    data["serve"]["extra_args"] = list(profile.serve.extra_args)
    data["model"]["allow_patterns"] = list(profile.model.allow_patterns)
    if profile.model.kv_cache:
        data["model"]["kv_cache"]["compress_ratios"] = list(profile.model.kv_cache.compress_ratios)
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
    # The checkpoint family at a glance: variant (0731, preview, nvfp4), draft (mtp, dspark or ""),
    # the vLLM it needs, its size (a stand-in when weights_exact is false).
    family: str = ""
    variant: str = ""
    draft: str = ""
    min_vllm_version: str = ""
    weights_bytes: int = 0
    weights_exact: bool = True


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
    shadows = tuple(str(f) for f, _ in found[1:]) if rank == 0 else ()
    winner = str(found[0][0]) if rank else ""
    try:
        profile = load_profile(str(file), profile_dirs)
    except DsvError as err:  # one broken file must not hide the others
        return ProfileEntry(name, "", origin, str(file), shadows, winner, err.message)
    m = profile.model
    return ProfileEntry(
        name,
        profile.description,
        origin,
        str(file),
        shadows,
        winner,
        family=m.family,
        variant=m.variant,
        draft=m.draft.method if m.draft else "",
        min_vllm_version=profile.serve.min_vllm_version or "",
        weights_bytes=m.weights_bytes,
        weights_exact=m.weights_exact,
    )
