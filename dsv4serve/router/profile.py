"""Router profiles: YAML -> frozen RouterProfile, with the same file:line errors as model profiles.

A router profile says how to classify (the prompt with its criteria, the structured-output method, token
and time limits, an optional confidence threshold), whether Flash starts answering while it classifies,
how conversations keep their model, how long to wait for upstreams, and which rules route a request
without asking the classifier. Router profiles live apart from model profiles (dsv4serve/router/profiles/ and
$XDG_CONFIG_HOME/dsv4serve/router/), so `dsv4serve profiles list` never shows them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dsv4serve.errors import ProfileError
from dsv4serve.profiles.document import LocatedMap, fail, read_document
from dsv4serve.profiles.fields import build, not_a, where  # the model profiles' own helpers

ROUTES = ("flash", "pro")
LEVELS = ("simple", "complex")  # the classifier's answers; complex goes to Pro
METHODS = ("compact_json", "json_schema", "choice")  # see decide.classifier_body
ENDPOINTS = ("chat", "completions")
# classify-first: the classifier answers, then the chosen model starts; parallel: Flash starts answering
# while the classifier runs (see router/app.py)
MODES = ("classify-first", "parallel")
DEFAULT_PROFILE = "default"
SUFFIXES = (".yaml", ".yml")
# The shortest answer, {"level":"simple"}, is 18 characters; byte-level tokenizers spend one token per
# character, so fewer tokens would cut every answer short.
MIN_CLASSIFIER_TOKENS = 24


@dataclass(frozen=True)
class Classifier:
    """How Flash is asked: the system prompt (criteria included) and the limits of that one call."""

    prompt: str
    method: str = "compact_json"  # {"level": ...} without whitespace; json_schema; choice: the bare word
    max_tokens: int = 32
    timeout_s: float = 10.0
    max_input_chars: int = 8000  # the request text shown to the classifier is cut to this (head and tail)
    # Pro when the classifier's P(complex) (from its logprobs) is at least this; None: its label decides.
    # `dsv4serve route eval --target-pro-share` calibrates it on labelled prompts.
    threshold: float | None = None


@dataclass(frozen=True)
class Timeouts:
    """Limits of the proxied call to the chosen upstream."""

    connect_s: float = 3.0
    read_s: float = 600.0  # between two chunks of an answer, not the whole answer
    pro_retry_s: float = 10.0  # after Pro refused a connection, send to Flash without trying for this long


@dataclass(frozen=True)
class Sessions:
    """Conversations keep their model: routing within one only escalates (Flash -> Pro)."""

    enabled: bool = True
    idle_s: float = 1800.0  # a conversation idle this long is forgotten; its next turn is decided afresh
    max_sessions: int = 100_000  # the oldest (least recently seen) go first beyond this
    # A Flash conversation's new user turns are classified again (a Pro one's never are). Off: a
    # conversation is classified once; rules, x-dsv4serve-tier or the context window escalate it.
    reclassify: bool = False


@dataclass(frozen=True)
class Match:
    """Conditions of a rule; all given ones must hold."""

    tools: bool | None = None  # the request has (true) or has no (false) tools
    endpoint: str | None = None  # chat or completions
    min_chars: int | None = None  # the request text is at least this long
    max_chars: int | None = None
    contains: tuple[str, ...] = ()  # any of these substrings (case-insensitive) in the request text


@dataclass(frozen=True)
class Rule:
    """A request that matches goes to `route` without a classifier call; reason rule:<name>."""

    name: str
    route: str
    when: Match


@dataclass(frozen=True)
class RouterProfile:
    name: str
    classifier: Classifier
    description: str = ""
    mode: str = "classify-first"
    sessions: Sessions = Sessions()
    timeouts: Timeouts = Timeouts()
    rules: tuple[Rule, ...] = ()


def builtin_dir() -> Path:
    return Path(__file__).resolve().parent / "profiles"


def search_dirs() -> list[Path]:
    """Named router profiles: the user's directory first, then the built-ins."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return [Path(config) / "dsv4serve" / "router", builtin_dir()]


def locate_router_profile(ref: str) -> Path:
    """The file a router profile name or path means."""
    if "/" in ref or os.sep in ref or ref.endswith(SUFFIXES):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ProfileError(f"{ref}: no such router profile file", "check the path")
        return path
    for directory in search_dirs():
        for suffix in SUFFIXES:
            if (directory / f"{ref}{suffix}").is_file():
                return directory / f"{ref}{suffix}"
    known = sorted({f.stem for d in search_dirs() if d.is_dir() for f in d.iterdir() if f.suffix in SUFFIXES})
    raise ProfileError(
        f"router profile {ref!r} not found",
        f"known: {', '.join(known)}; or give a YAML path (searched {', '.join(map(str, search_dirs()))})",
    )


def load_router_profile(ref: str = DEFAULT_PROFILE) -> RouterProfile:
    """Read, type-check and validate a router profile by name or path."""
    path = locate_router_profile(ref)
    doc = read_document(path)
    doc.setdefault("name", path.stem)
    doc.where.setdefault("name", (str(path), 0))
    profile = build(RouterProfile, doc, "")
    _check(profile, doc)
    return profile


def _check(profile: RouterProfile, doc: LocatedMap) -> None:
    """Rules beyond each field's type: allowed words, positive limits, well-formed rules."""

    def need(ok: bool, keys: tuple[str | int, ...], problem: str, hint: str) -> None:
        if not ok:
            path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in keys).lstrip(".")
            raise fail(where(doc, *keys), path, problem, hint)

    c, t = profile.classifier, profile.timeouts
    need(
        bool(c.prompt.strip()),
        ("classifier", "prompt"),
        "must not be empty",
        "say what simple and complex mean",
    )
    need(
        c.method in METHODS,
        ("classifier", "method"),
        not_a(c.method, "a method"),
        f"one of {', '.join(METHODS)} (each uses vLLM's structured output)",
    )
    need(
        c.max_tokens >= MIN_CLASSIFIER_TOKENS,
        ("classifier", "max_tokens"),
        f"{c.max_tokens} is too few for the answer",
        f"at least {MIN_CLASSIFIER_TOKENS}: the JSON answer is ~18 characters",
    )
    need(c.max_input_chars > 0, ("classifier", "max_input_chars"), "must be positive", "e.g. 8000")
    need(
        c.threshold is None or c.threshold <= 1,
        ("classifier", "threshold"),
        f"{c.threshold} is not a probability",
        "between 0 and 1; `dsv4serve route eval --target-pro-share` calibrates one",
    )
    need(
        profile.mode in MODES,
        ("mode",),
        not_a(profile.mode, "a mode"),
        f"one of {', '.join(MODES)}",
    )
    s = profile.sessions
    need(s.idle_s > 0, ("sessions", "idle_s"), "must be positive", "seconds, e.g. 1800")
    need(s.max_sessions > 0, ("sessions", "max_sessions"), "must be positive", "e.g. 100000")
    for keys, value in (
        (("classifier", "timeout_s"), c.timeout_s),
        (("timeouts", "connect_s"), t.connect_s),
        (("timeouts", "read_s"), t.read_s),
    ):
        need(value > 0, keys, "must be positive", "seconds, e.g. 10")
    seen: dict[str, int] = {}
    for i, rule in enumerate(profile.rules):
        need(
            re.fullmatch(r"[a-z0-9][a-z0-9_-]*", rule.name) is not None,
            ("rules", i, "name"),
            not_a(rule.name, "a rule name"),
            "lower-case letters, digits, '-' and '_' (it becomes the reason rule:<name>)",
        )
        need(
            rule.name not in seen,
            ("rules", i, "name"),
            f"duplicate rule name (first in rules[{seen.get(rule.name)}])",
            "give each rule its own name",
        )
        seen[rule.name] = i
        need(rule.route in ROUTES, ("rules", i, "route"), not_a(rule.route, "a route"), "flash or pro")
        w = rule.when
        given = [w.tools is not None, w.endpoint is not None, w.min_chars is not None]
        given += [w.max_chars is not None, bool(w.contains)]
        need(any(given), ("rules", i, "when"), "no condition", "e.g. when: {tools: true}")
        need(
            w.endpoint is None or w.endpoint in ENDPOINTS,
            ("rules", i, "when", "endpoint"),
            not_a(w.endpoint or "", "an endpoint"),
            "chat or completions",
        )
        need(
            w.min_chars is None or w.max_chars is None or w.min_chars <= w.max_chars,
            ("rules", i, "when", "max_chars"),
            f"{w.max_chars} is below min_chars ({w.min_chars})",
            "no request could match; swap them",
        )
        need(
            all(s.strip() for s in w.contains),
            ("rules", i, "when", "contains"),
            "an empty string matches every request",
            "remove it, or use min_chars: 0 for a rule that always applies",
        )
