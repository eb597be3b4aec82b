"""Parallel strategies (pure): the layouts to try on N nodes of G GPUs, why, and their cost per GPU.

vLLM's recipes for DeepSeek-V4 name the strategies (vllm-project/recipes DeepSeek-V4-Pro.yaml,
compatible_strategies): one node TP, TP+EP or DP+EP; several nodes TP+EP or DP+EP. Here:
- tp: tensor parallel over every GPU: each weight is split TP ways (the experts too, by vLLM's MoE TP).
- tp-ep: the same with --enable-expert-parallel: experts placed whole, spread over the TP ranks.
- dp-ep: data-parallel attention (one engine per GPU, TP 1) + expert parallel: the dense weights
  (attention, shared experts, embeddings) sit on every GPU, the routed experts are spread over all.
- tp-pp: TP within each node, pipeline parallel across nodes: a stage holds its layers only, and its
  KV cache is its layers' (vLLM's get_pp_indices decides which).
The V4 KV cache is never divided by TP (planning.memory.KV_CACHE_SPLIT_ACROSS_TP): every rank, TP or DP,
holds the whole per-GPU cache of its own sequences, so vLLM's start-up check is per GPU in every case.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from dsv4serve.errors import UsageError
from dsv4serve.hardware.inventory import GiB, Gpu, gib
from dsv4serve.planning.memory import KvContext, kv_need_bytes
from dsv4serve.profiles.types import STRATEGIES, Profile


@dataclass(frozen=True)
class Layout:
    """One way to spread the model: sizes of each kind of parallelism, and the nodes it spans."""

    strategy: str  # one of STRATEGIES
    tp: int
    pp: int = 1
    dp: int = 1
    nodes: int = 1
    pinned: str = ""  # who chose it, when not the planner: "--strategy dp-ep", "profile pro's rule 1"

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def per_node(self) -> int:
        return self.world // self.nodes

    @property
    def label(self) -> str:
        """Short, for messages: "TP 8", "DP 16", "DP 8 x TP 2", "TP 8 x PP 2"."""
        if self.strategy == "dp-ep":
            return f"DP {self.dp}" + (f" x TP {self.tp}" if self.tp > 1 else "")
        return f"TP {self.tp}" + (f" x PP {self.pp}" if self.pp > 1 else "")


def expert_parallel(layout: Layout, profile: Profile) -> bool:
    """Whether vLLM gets --enable-expert-parallel: always under tp-ep and dp-ep, never under tp."""
    if layout.strategy in ("tp-ep", "dp-ep"):
        return True
    return layout.strategy == "tp-pp" and profile.serve.enable_expert_parallel


def title(layout: Layout, profile: Profile) -> str:
    """For the plan's title: "TP 16 + EP", "DP 16 + EP", "TP 8 x PP 2"."""
    return layout.label + (" + EP" if expert_parallel(layout, profile) else "")


def default_strategy(profile: Profile) -> str:
    """One node, nothing pinned: the profile's own choice, as before strategies existed."""
    return "tp-ep" if profile.serve.enable_expert_parallel else "tp"


# --- memory per GPU ----------------------------------------------------------------------------------


def weights_per_gpu(profile: Profile, layout: Layout) -> int:
    """Weight bytes one GPU holds: split over TP x PP, or under DP+EP dense replicated + experts spread."""
    total = profile.model.weights_bytes
    if layout.strategy == "dp-ep":
        experts = _experts(profile)
        return math.ceil((total - experts) / layout.tp) + math.ceil(experts / layout.world)
    return math.ceil(total / (layout.tp * layout.pp))


def _experts(profile: Profile) -> int:
    """The routed experts' bytes; 0 (all counted as dense) when unknown, or when a profile that extends
    another changed weights_bytes below the inherited estimate."""
    experts = profile.model.expert_weights_bytes
    return experts if experts <= profile.model.weights_bytes else 0


def pp_partition(layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage as vLLM splits them (distributed/utils.py get_pp_indices): even, the
    remainder one each to the stages before the last."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    return parts


def stage_profiles(profile: Profile, layout: Layout) -> tuple[Profile, ...]:
    """The profile as each pipeline stage's KV cache sees it: its own layers only."""
    if layout.pp == 1:
        return (profile,)
    kv = profile.model.kv_cache
    layers = len(kv.compress_ratios) if kv else profile.model.layers
    stages, start = [], 0
    for n in pp_partition(layers, layout.pp):
        model = profile.model
        if kv is not None:
            ratios = kv.compress_ratios[start : start + n]
            if any(r in (4, 128) for r in ratios):  # a stage of sliding-window layers alone: keep the whole
                model = dataclasses.replace(model, kv_cache=dataclasses.replace(kv, compress_ratios=ratios))
        elif layers:
            model = dataclasses.replace(
                model, kv_bytes_per_token=math.ceil(model.kv_bytes_per_token * n / layers)
            )
        stages.append(dataclasses.replace(profile, model=model))
        start += n
    return tuple(stages)


def kv_profile(profile: Profile, layout: Layout, tokens: int, batched: KvContext | int | None) -> Profile:
    """The stage whose KV cache needs the most at `tokens` (every stage must pass vLLM's check). A
    draft's layers (batched.draft_layers) are counted on every stage: on the safe side of the last."""
    stages = stage_profiles(profile, layout)
    return max(stages, key=lambda p: kv_need_bytes(p, tokens, layout.tp, batched))


# --- which layouts to try ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Layouts to try, best first, and what the planner has to say about the choice itself."""

    layouts: tuple[Layout, ...]
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def choose_layouts(
    profile: Profile, gpus: tuple[Gpu, ...], nodes: int, strategy: str | None, forced_tp: int | None
) -> Choice:
    """The layouts for `nodes` nodes of these GPUs: pinned by --strategy or a profile rule, else chosen."""
    if strategy is not None and strategy not in STRATEGIES:
        raise UsageError(f"--strategy {strategy!r}: unknown strategy", f"use one of {', '.join(STRATEGIES)}")
    count, heads = len(gpus), profile.model.attention_heads
    pin = _pin(profile, gpus, nodes, strategy, forced_tp)
    if nodes == 1 and (pin is None or pin.strategy in ("tp", "tp-ep")):
        # --strategy tp[-ep] on one node keeps the planner's TP choice (or --tp); a rule brings its own
        tps, problems, notes = tp_candidates(profile, gpus, pin.tp if pin and not strategy else forced_tp)
        name, why = (pin.strategy, pin.pinned) if pin else (default_strategy(profile), "")
        return Choice(tuple(Layout(name, tp, pinned=why) for tp in tps), tuple(problems), tuple(notes))
    if pin is not None:
        return Choice(
            (pin,), tuple(_layout_problems(pin, profile, count)), tuple(_expert_note(profile, [pin]))
        )
    total = count * nodes
    if profile.serve.enable_expert_parallel:  # a MoE profile: the recipes' multi-node DP+EP, then TP+EP
        layouts = [Layout("dp-ep", 1, dp=total, nodes=nodes), Layout("tp-ep", total, nodes=nodes)]
    else:
        layouts = [Layout("tp", total, nodes=nodes)]
    layouts.append(Layout("tp-pp", count, pp=nodes, nodes=nodes))
    usable = [
        lay for lay in layouts if not _layout_problems(lay, profile, count) and forced_tp in (None, lay.tp)
    ]
    if usable:
        return Choice(tuple(usable), notes=tuple(_expert_note(profile, usable)))
    problem = (
        f"no layout of {nodes} nodes x {count} GPUs has TP {forced_tp}"
        if forced_tp
        else f"no layout of {nodes} nodes x {count} GPUs splits the {heads} attention heads evenly"
    )
    return Choice((layouts[-1],), (problem,))


def _pin(profile: Profile, gpus, nodes: int, strategy: str | None, forced_tp: int | None) -> Layout | None:
    """The layout --strategy or a matching profile rule (one with nodes or a strategy) asks for."""
    count = len(gpus)
    if strategy is not None:
        return _shaped(strategy, forced_tp, count, nodes, f"--strategy {strategy}")
    smallest = min(g.memory_total for g in gpus) / GiB
    for i, rule in enumerate(profile.hardware):
        if rule.nodes != nodes or (nodes == 1 and rule.strategy is None):
            continue  # plain one-node rules are tp_candidates' (their TP sizes, largest first)
        if rule.gpus == count and smallest >= rule.min_vram_gib:
            name = rule.strategy or _strategy_of(profile, rule.tensor_parallel_size, count, nodes)
            return _shaped(
                name, rule.tensor_parallel_size, count, nodes, f"profile {profile.name}'s hardware[{i}]"
            )
    return None


def _strategy_of(profile: Profile, tp: int, count: int, nodes: int) -> str:
    """A multi-node rule without a strategy: its TP size says which (all GPUs, one node's, or fewer)."""
    if tp == count * nodes:
        return default_strategy(profile)
    return "tp-pp" if tp == count else "dp-ep"


def _shaped(strategy: str, tp: int | None, count: int, nodes: int, why: str) -> Layout:
    total = count * nodes
    if strategy == "dp-ep":
        tp = tp or 1
        return Layout("dp-ep", tp, dp=max(total // tp, 1), nodes=nodes, pinned=why)
    if strategy == "tp-pp":
        if nodes == 1:
            raise UsageError(
                f"{why}: tp-pp puts the pipeline stages on separate nodes, and one node is given",
                "add nodes (--nodes 2, or --hardware 2x8xH100-80GB), or use tp-ep or dp-ep",
            )
        return Layout("tp-pp", tp or count, pp=nodes, nodes=nodes, pinned=why)
    return Layout(strategy, tp or total, nodes=nodes, pinned=why)


def _layout_problems(layout: Layout, profile: Profile, count: int) -> list[str]:
    """Why vLLM could not start this layout on nodes of `count` GPUs (empty when it can)."""
    heads, problems = profile.model.attention_heads, []
    if layout.world != count * layout.nodes or layout.per_node > count:
        problems.append(
            f"{layout.label} needs {layout.world} GPUs; {layout.nodes} x {count} are given"
            + (f" (at most {count} per node)" if layout.per_node > count else "")
        )
    if heads > 0 and heads % layout.tp:
        problems.append(f"tensor parallel size {layout.tp} does not divide the {heads} attention heads")
    if layout.pp > max(profile.model.layers, 1):
        problems.append(f"{layout.pp} pipeline stages for {profile.model.layers} layers")
    return problems


def _expert_note(profile: Profile, layouts: list[Layout]) -> list[str]:
    if any(lay.strategy == "dp-ep" for lay in layouts) and not _experts(profile):
        return [
            "model.expert_weights_bytes is unknown: DP+EP is planned with every weight on every GPU "
            "(the routed experts' share is what DP+EP spreads)"
        ]
    return []


def reason(layout: Layout, profile: Profile, rejected: list[tuple[Layout, str]]) -> str:
    """Why this layout, in one line: who pinned it, or what the planner weighed."""
    ep = " + EP" if expert_parallel(layout, profile) else ""
    if layout.strategy == "dp-ep":
        why = (
            f"DP+EP: one engine per GPU{'' if layout.tp == 1 else f' group of {layout.tp}'} runs attention "
            f"on its own requests; the routed experts are spread over all {layout.world} GPUs and the dense "
            f"weights ({gib(profile.model.weights_bytes - _experts(profile))}) sit on each"
        )
        if layout.nodes > 1:
            why += "; vLLM's V4 recipe across nodes, and no tensor-parallel all-reduce crosses them"
    elif layout.strategy == "tp-pp":
        why = (
            f"TP {layout.tp}{ep} within each node, PP {layout.pp} across the nodes: each node holds "
            f"1/{layout.pp} of the layers and the all-reduce stays inside the node"
        )
    elif layout.nodes > 1:
        why = f"TP {layout.tp}{ep} across the {layout.nodes} nodes: every weight split {layout.tp} ways"
    else:
        why = f"TP {layout.tp}{ep} on one node" + (
            " (the profile enables expert parallelism)" if ep and not layout.pinned else ""
        )
    if layout.pinned:
        return f"{why} (pinned by {layout.pinned})"
    gave_up = "; ".join(
        f"{lay.label}{' + EP' if expert_parallel(lay, profile) else ''}: {problem}"
        for lay, problem in rejected
    )
    return why + (f" (not {gave_up})" if gave_up else "")


# --- one node's TP sizes (the planner's rules from before strategies) ----------------------------------


def divisors(heads: int, limit: int) -> list[int]:
    """TP sizes vLLM accepts (attention heads split evenly), largest first, at most `limit`."""
    return [tp for tp in range(limit, 0, -1) if heads <= 0 or heads % tp == 0]


def tp_candidates(profile: Profile, gpus, forced: int | None) -> tuple[list[int], list[str], list[str]]:
    """TP sizes to try on one node, best first; plus problems/notes about the layout itself.

    The profile's hardware rules are its known-good layouts: when some match (enough GPUs, enough memory
    each) their TP sizes are tried, largest GPU count first. When none matches, the largest divisor of the
    attention heads is used and the memory model and compute capability alone decide the verdict."""
    heads, count = profile.model.attention_heads, len(gpus)
    fallback = divisors(heads, count)[:1] or [1]
    if forced is not None:
        problems = []
        if forced < 1 or forced > count:
            problems.append(f"tensor parallel size {forced} needs {forced} GPUs; {count} given")
        elif heads > 0 and heads % forced:
            problems.append(f"tensor parallel size {forced} does not divide the {heads} attention heads")
        return ([min(max(forced, 1), count)] if not problems else fallback), problems, []
    rules = [r for r in profile.hardware if r.nodes == 1 and r.strategy is None]
    if not rules:
        return divisors(heads, count)[:1] or [1], [], []
    smallest = min(g.memory_total for g in gpus) / GiB
    matching = sorted(
        (r for r in rules if r.tensor_parallel_size <= count and smallest >= r.min_vram_gib),
        key=lambda r: -r.gpus,
    )
    tps = list(
        dict.fromkeys(
            r.tensor_parallel_size for r in matching if heads <= 0 or heads % r.tensor_parallel_size == 0
        )
    )
    if tps:
        return tps, [], []
    supported = "; ".join(
        f"{r.gpus} GPUs of >= {r.min_vram_gib:g} GiB (TP {r.tensor_parallel_size})" for r in rules
    )
    return (
        fallback,
        [],
        [
            f"none of profile {profile.name!r}'s layouts matches {count}x {gpus[0].name} "
            f"({smallest:.1f} GiB each): {supported}; the memory model alone decides (TP {fallback[0]})"
        ],
    )
