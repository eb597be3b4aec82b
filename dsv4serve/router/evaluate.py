"""`dsv4serve route eval`: the router's real decisions on labelled prompts, against simple baselines.

Each prompt is decided as the router decides it (its profile's rules, Flash's classifier call), one
conversation each. The report: the confusion matrix, the Pro share, the cost against always-Pro at the
prices given (the classifier's own tokens charged to the router), the decision's latency, and the same
figures for always-Flash, always-Pro, a length rule and random routing at the router's Pro share. With
the classifier's confidences (logprobs), the threshold that gives a target Pro share (RouteLLM's
calibration) and a few points of the share/accuracy curve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsv4serve.errors import LaunchError, UsageError, oneline
from dsv4serve.router.profile import LEVELS, RouterProfile
from dsv4serve.router.upstreams import Upstream

BUILTIN = "builtin"  # the name of the dataset shipped with dsv4serve
CURVE_SHARES = (0.1, 0.25, 0.5, 0.75)
# Without --price: relative cost per token, by active parameters (Flash 13B, Pro 49B; facts/deepseek-v4.md).
DEFAULT_PRICES = {"flash": (13.0, 13.0), "pro": (49.0, 49.0)}
PRICE_RE = re.compile(
    r"(?P<tier>flash|pro)=(?P<a>[0-9.]+)(?:/(?P<b>[0-9.]+)|(?P<gpu>gpus?@)(?P<tps>[0-9.]+))?"
)


def builtin_dataset() -> Path:
    return Path(__file__).resolve().parent / "datasets" / "route-eval.jsonl"


@dataclass(frozen=True)
class Example:
    """One labelled prompt."""

    line: int
    messages: tuple[dict, ...]
    level: str  # simple | complex: what the router should make of it
    kind: str  # code, math, chat, ...: for the per-kind breakdown
    prompt_tokens: int | None = None  # the line's own token counts for the cost, when it gives them
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Prices:
    """Per million tokens (input, output) of each model, and what the unit is."""

    flash: tuple[float, float]
    pro: tuple[float, float]
    unit: str

    def cost(self, tier: str, prompt: float, completion: float) -> float:
        inp, out = getattr(self, tier)
        return (prompt * inp + completion * out) / 1e6


@dataclass(frozen=True)
class Outcome:
    """The router's decision on one example."""

    route: str
    reason: str
    p_complex: float | None
    seconds: float
    classifier_prompt: int
    classifier_completion: int
    prompt_tokens: int
    counted: bool  # prompt_tokens from Flash's /tokenize (else the line's, or estimated)


def load_dataset(ref: str) -> tuple[str, list[Example]]:
    """The dataset's name and examples: a JSONL file (or `builtin`) of {"prompt" or "messages", "level",
    "kind"?, "prompt_tokens"?, "completion_tokens"?} lines."""
    path = builtin_dataset() if ref == BUILTIN else Path(ref).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise UsageError(
            f"{ref}: cannot read the dataset: {reason}", "give a JSONL file, or `builtin`"
        ) from None
    examples = [_example(path, n, text) for n, text in enumerate(lines, 1) if text.strip()]
    if not examples:
        raise UsageError(
            f"{ref}: no examples", 'one JSON object a line: {"prompt": "...", "level": "simple"}'
        )
    return ("builtin" if ref == BUILTIN else str(path)), examples


def _example(path: Path, n: int, text: str) -> Example:
    def bad(problem: str, hint: str = 'e.g. {"prompt": "Write a parser", "level": "complex"}') -> UsageError:
        return UsageError(f"{path}:{n}: {problem}", hint)

    try:
        raw = json.loads(text)
    except ValueError as err:
        raise bad(f"not JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    known = {"prompt", "messages", "level", "kind", "prompt_tokens", "completion_tokens", "note"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise bad(f"unknown field {oneline(unknown[0], 40)!r}", f"known: {', '.join(sorted(known))}")
    if "messages" in raw:
        messages = raw["messages"]
        ok = isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)
        if not ok or not any(m.get("role") == "user" for m in messages):
            raise bad("messages must be a list of chat messages with a user message")
    elif isinstance(raw.get("prompt"), str) and raw["prompt"].strip():
        messages = [{"role": "user", "content": raw["prompt"]}]
    else:
        raise bad('no "prompt" (a non-empty string) or "messages"')
    level = raw.get("level")
    if level not in LEVELS:
        raise bad(
            f"level {oneline(level, 40)!r} is not simple or complex", "the level the router should give"
        )
    tokens = {}
    for name in ("prompt_tokens", "completion_tokens"):
        value = raw.get(name)
        if value is not None and (type(value) is not int or value < 0):
            raise bad(f"{name} must be a whole number of tokens")
        tokens[name] = value
    kind = raw.get("kind", "")
    return Example(n, tuple(messages), level, kind if isinstance(kind, str) else "", **tokens)


def parse_prices(values: list[str] | None) -> Prices:
    """--price flash=IN/OUT (per million input/output tokens; one number for both) or flash=Ngpu@TPS (the
    server's GPUs and output tokens per second: GPU-hours per million generated tokens); both models,
    one form. None: relative cost by active parameters."""
    if not values:
        return Prices(DEFAULT_PRICES["flash"], DEFAULT_PRICES["pro"], "relative (active parameters)")
    found: dict[str, tuple[float, float]] = {}
    forms = set()
    for value in values:
        m = PRICE_RE.fullmatch(value.strip())
        try:
            a = float(m["a"]) if m else -1.0
            b = float(m["b"]) if m and m["b"] else a
            tps = float(m["tps"]) if m and m["tps"] else None
        except ValueError:
            m = None
        if m is None or (tps is not None and tps <= 0):
            raise UsageError(
                f"--price {value!r}: not a price",
                "flash=0.14/0.28 (per million input/output tokens) or flash=2gpu@2500 (GPUs @ tokens/s)",
            )
        if tps is not None:  # GPU-hours per million generated tokens; prompts ride along
            found[m["tier"]] = (0.0, a * 1e6 / (tps * 3600))
            forms.add("GPU-hours")
        else:
            found[m["tier"]] = (a, b)
            forms.add("price")
    if set(found) != {"flash", "pro"} or len(forms) != 1:
        raise UsageError(
            "--price needs both models in one form", "e.g. --price flash=0.14/0.28 --price pro=1.74/3.48"
        )
    return Prices(found["flash"], found["pro"], forms.pop())


def evaluate(
    profile: RouterProfile,
    flash: Upstream,
    pro: Upstream | None,
    examples: list[Example],
    concurrency: int = 1,
) -> list[Outcome]:
    """Decide every example as the router would (no answers are generated); conversations off."""
    from dsv4serve.router.dispatch import Router, TooLong
    from dsv4serve.router.metrics import Metrics

    profile = dataclasses.replace(profile, sessions=dataclasses.replace(profile.sessions, enabled=False))

    async def run() -> list[Outcome]:
        router = Router(profile, flash, pro or Upstream("pro", "http://127.0.0.1:9"), Metrics())
        try:
            if await router.model("flash") is None:
                raise LaunchError(
                    f"flash at {flash.base_url} does not answer /v1/models: {router.errors.get('flash')}",
                    "start it first, or check --flash and its key",
                )
            gate = asyncio.Semaphore(concurrency)

            async def one(example: Example) -> Outcome:
                body = {"model": "auto", "messages": list(example.messages)}
                async with gate:
                    request = router.read(body, "chat")
                    t0 = time.perf_counter()
                    try:
                        decision = await router.decide(body, "chat")
                    except TooLong:
                        decision = None
                    seconds = time.perf_counter() - t0
                    counted = None
                    if example.prompt_tokens is None:
                        counted = await router.count_tokens(request)
                if decision is None:
                    raise UsageError(f"line {example.line}: longer than both models' max_model_len")
                tokens = example.prompt_tokens
                if tokens is None:
                    tokens = counted if counted is not None else math.ceil(len(json.dumps(body)) / 4)
                return Outcome(
                    decision.route,
                    decision.reason,
                    decision.p_complex,
                    seconds,
                    decision.prompt_tokens,
                    decision.completion_tokens,
                    tokens,
                    counted is not None,
                )

            return list(await asyncio.gather(*(one(e) for e in examples)))
        finally:
            await router.aclose()

    return asyncio.run(run())


def report(
    examples: list[Example],
    outcomes: list[Outcome],
    prices: Prices,
    completion_tokens: int,
    target_share: float | None = None,
) -> dict[str, Any]:
    """The figures of one evaluation (pure): the router's and the baselines', latency, calibration."""
    n = len(examples)
    levels = [e.level for e in examples]
    n_complex = levels.count("complex")
    prompt = [o.prompt_tokens for o in outcomes]
    completion = [
        e.completion_tokens if e.completion_tokens is not None else completion_tokens for e in examples
    ]
    cost = {
        t: [prices.cost(t, p, c) for p, c in zip(prompt, completion, strict=True)] for t in ("flash", "pro")
    }
    all_pro = sum(cost["pro"])

    def scored(name: str, routes: list[str], extra_cost: float = 0.0, **info: Any) -> dict[str, Any]:
        spent = sum(cost[r][i] for i, r in enumerate(routes)) + extra_cost
        return _score(name, levels, routes, spent / all_pro if all_pro else 0.0, **info)

    routes = [o.route for o in outcomes]
    classifier = sum(prices.cost("flash", o.classifier_prompt, o.classifier_completion) for o in outcomes)
    router = scored("router", routes, classifier)
    k = routes.count("pro")
    by_length = sorted(range(n), key=lambda i: -_length(examples[i]))
    longest = set(by_length[:k])
    min_chars = _length(examples[by_length[k - 1]]) if k else None
    share = k / n
    random_cost = (share * all_pro + (1 - share) * sum(cost["flash"])) / all_pro if all_pro else 0.0
    random = {
        "name": f"random at {share:.1%}",
        "pro_share": share,
        "accuracy": (share * n_complex + (1 - share) * (n - n_complex)) / n,  # expected
        "complex_to_pro": share,
        "simple_to_flash": 1 - share,
        "cost_vs_pro": random_cost,
    }
    strategies = [
        router,
        scored("always-Flash", ["flash"] * n),
        scored("always-Pro", ["pro"] * n),
        scored(
            f"length rule (>= {min_chars} chars)" if k else "length rule (none)",
            ["pro" if i in longest else "flash" for i in range(n)],
            min_chars=min_chars,
        ),
        random,
    ]
    seconds = sorted(o.seconds for o in outcomes)
    return {
        "examples": n,
        "levels": {level: levels.count(level) for level in LEVELS},
        "confusion": {
            level: {
                t: sum(1 for lv, r in zip(levels, routes, strict=True) if lv == level and r == t)
                for t in ("flash", "pro")
            }
            for level in LEVELS
        },
        "strategies": strategies,
        "reasons": dict(sorted(Counter(o.reason for o in outcomes).items())),
        "latency_ms": {
            "p50": _pct(seconds, 50) * 1000,
            "p90": _pct(seconds, 90) * 1000,
            "p99": _pct(seconds, 99) * 1000,
            "mean": statistics.fmean(seconds) * 1000,
        },
        "classifier_tokens": {
            "prompt": sum(o.classifier_prompt for o in outcomes),
            "completion": sum(o.classifier_completion for o in outcomes),
        },
        "prices": {"unit": prices.unit, "flash": list(prices.flash), "pro": list(prices.pro)},
        "tokens": {
            "prompt_counted": sum(o.counted for o in outcomes),
            "completion_assumed": completion_tokens,
        },
        "by_kind": _by_kind(examples, outcomes),
        "confidence": _calibration(levels, outcomes, target_share),
        "decisions": [
            {
                "line": e.line,
                "level": e.level,
                "route": o.route,
                "reason": o.reason,
                "p_complex": o.p_complex,
                "ms": round(o.seconds * 1000, 1),
            }
            for e, o in zip(examples, outcomes, strict=True)
        ],
    }


def _by_kind(examples: list[Example], outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, list[tuple[Example, Outcome]]] = {}
    for e, o in zip(examples, outcomes, strict=True):
        kinds.setdefault(e.kind or "-", []).append((e, o))
    return {
        name: {
            "examples": len(pairs),
            "accuracy": sum((o.route == "pro") == (e.level == "complex") for e, o in pairs) / len(pairs),
            "pro_share": sum(o.route == "pro" for _, o in pairs) / len(pairs),
        }
        for name, pairs in sorted(kinds.items())
    }


def _score(
    name: str, levels: list[str], routes: list[str], cost_vs_pro: float, **info: Any
) -> dict[str, Any]:
    n = len(levels)
    pairs = list(zip(levels, routes, strict=True))
    complex_ = [r for lv, r in pairs if lv == "complex"]
    simple = [r for lv, r in pairs if lv == "simple"]
    return {
        "name": name,
        "pro_share": routes.count("pro") / n,
        "accuracy": sum((lv == "complex") == (r == "pro") for lv, r in pairs) / n,
        "complex_to_pro": complex_.count("pro") / len(complex_) if complex_ else 0.0,
        "simple_to_flash": simple.count("flash") / len(simple) if simple else 0.0,
        "cost_vs_pro": cost_vs_pro,
        **info,
    }


def _calibration(levels: list[str], outcomes: list[Outcome], target: float | None) -> dict[str, Any]:
    """Thresholds on P(complex) that give set Pro shares, over the examples with a confidence."""
    known = [(o.p_complex, lv) for o, lv in zip(outcomes, levels, strict=True) if o.p_complex is not None]
    out: dict[str, Any] = {"answers": len(known), "curve": [], "target": None}
    if not known:
        return out
    ranked = sorted((p for p, _ in known), reverse=True)

    def at(share: float) -> dict[str, Any]:
        k = round(share * len(known))
        threshold = ranked[k - 1] if k else min(1.0, ranked[0] + 1e-6)
        routes = ["pro" if p >= threshold else "flash" for p, _ in known]
        point = _score("", [lv for _, lv in known], routes, 0.0)
        return {"target": share, "threshold": threshold, **{k_: point[k_] for k_ in _CURVE_KEYS}}

    out["curve"] = [at(s) for s in CURVE_SHARES]
    if target is not None:
        out["target"] = at(target)
    return out


_CURVE_KEYS = ("pro_share", "accuracy", "complex_to_pro", "simple_to_flash")


def _length(example: Example) -> int:
    from dsv4serve.router.decide import request_text

    return len(request_text({"messages": list(example.messages)}, "chat"))


def _pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def render(name: str, profile: str, result: dict[str, Any]) -> list[str]:
    """The report as text lines (--json adds each example's decision)."""
    r = result
    lines = [
        f"route eval: {r['examples']} prompts ({r['levels']['simple']} simple, {r['levels']['complex']} "
        f"complex) from {name}, router profile {profile}",
        "decisions (rows: expected level; columns: model):",
        "             flash    pro",
    ]
    for level in LEVELS:
        c = r["confusion"][level]
        lines.append(f"  {level:9} {c['flash']:6} {c['pro']:6}")
    lines.append("reasons: " + ", ".join(f"{k} {v}" for k, v in r["reasons"].items()))
    lat = r["latency_ms"]
    lines.append(
        f"latency the router adds before the chosen model starts (classify-first mode): "
        f"p50 {lat['p50']:.0f} ms, p90 {lat['p90']:.0f} ms, p99 {lat['p99']:.0f} ms"
    )
    p = r["prices"]
    lines.append(
        f"cost: {p['unit']}, flash {p['flash'][0]:g}/{p['flash'][1]:g}, pro {p['pro'][0]:g}/{p['pro'][1]:g} "
        f"per million input/output tokens; {r['tokens']['completion_assumed']} output tokens a request "
        f"unless a line says; the classifier's tokens charged to the router"
    )
    lines.append(
        f"  {'strategy':30} {'Pro share':>9} {'accuracy':>9} {'complex->Pro':>12} {'cost vs Pro':>11}"
    )
    for s in r["strategies"]:
        lines.append(
            f"  {s['name']:30} {s['pro_share']:9.1%} {s['accuracy']:9.1%} {s['complex_to_pro']:12.1%} "
            f"{s['cost_vs_pro']:11.1%}"
        )
    if len(r["by_kind"]) > 1:
        kinds = ", ".join(
            f"{k} {v['accuracy']:.0%} ({v['pro_share']:.0%} Pro, {v['examples']})"
            for k, v in r["by_kind"].items()
        )
        lines.append(f"accuracy by kind: {kinds}")
    conf = r["confidence"]
    if not conf["answers"]:
        lines.append("confidence: the classifier's answers carry no logprobs; no threshold to calibrate")
        return lines
    lines.append(
        f"calibration on P(complex) ({conf['answers']} answers): classifier.threshold for a Pro share of"
    )
    for point in [*conf["curve"], *([conf["target"]] if conf["target"] else [])]:
        mark = "  <- --target-pro-share" if point is conf["target"] else ""
        lines.append(
            f"  {point['target']:4.0%}: {point['threshold']:.6f} (gives {point['pro_share']:.1%}, accuracy "
            f"{point['accuracy']:.1%}, complex->Pro {point['complex_to_pro']:.1%}){mark}"
        )
    return lines
