"""`route eval`'s figures (pure): the confusion matrix, the cost against always-Pro, the baselines, the
latency, and the calibration of classifier.threshold on the classifier's confidences."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from dsv4serve.router.eval_dataset import Example
from dsv4serve.router.eval_prices import Prices
from dsv4serve.router.evaluate import Outcome
from dsv4serve.router.profile import LEVELS

CURVE_SHARES = (0.1, 0.25, 0.5, 0.75)


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
