"""`dsv4serve route eval`'s run: each labelled prompt decided as the router decides it, no answer made.

Each prompt is decided as the router decides it (its profile's rules, Flash's classifier call), one
conversation each. The parts: eval_dataset reads the prompts, eval_prices the --price figures,
eval_report makes the figures (the confusion matrix, the Pro share, the cost against always-Pro with
the classifier's own tokens charged to the router, the decision's latency, the same figures for
always-Flash, always-Pro, a length rule and random routing at the router's Pro share; with the
classifier's confidences, the threshold that gives a target Pro share, RouteLLM's calibration, and a few
points of the share/accuracy curve), eval_render its text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import time
from dataclasses import dataclass

from dsv4serve.errors import LaunchError, UsageError
from dsv4serve.router.eval_dataset import Example
from dsv4serve.router.profile import RouterProfile
from dsv4serve.router.upstreams import Upstream


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
