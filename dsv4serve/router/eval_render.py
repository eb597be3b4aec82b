"""`route eval`'s report as text lines (eval_report's figures, as the command prints them)."""

from __future__ import annotations

from typing import Any

from dsv4serve.router.profile import LEVELS


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
