"""What `plan` and `gpus` print: the per-GPU memory budget, verdict and command of a Plan, the NVML
inventory; as Rich text or JSON. Secrets are masked here, never in the plan vLLM gets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def _gib(n: int) -> str:
    from dsv4serve.hardware.inventory import gib

    return gib(n, unit="") if n else "-"


def render_plan(plan, as_json: bool = False, up: Sequence[str] = ()) -> None:
    """The per-GPU memory budget, the verdict, notes, problems and the pasteable command (or JSON).
    Several nodes: each node's command, and `up` + its node options to run it under dsv4serve."""
    from dsv4serve.engines.vllm.argv import shell_line
    from dsv4serve.planning.plan import plan_to_dict
    from dsv4serve.redact import masked_plan
    from dsv4serve.render import console, print_json, text_table

    plan = masked_plan(plan)  # secrets (HF_TOKEN, --api-key) never shown; vLLM gets the real values
    if as_json:
        print_json(plan_to_dict(plan))
        return
    out = console()
    where = "CPU" if plan.device == "cpu" else f"{len(plan.gpus)}x {plan.gpus[0].name}"
    layout = f"TP {plan.tensor_parallel_size}"
    if len(plan.nodes) > 1:  # the table is one node's, and every node is alike
        from dsv4serve.preflight.node_text import layout_title

        where, layout = f"{len(plan.nodes)} nodes x {where} (each alike)", layout_title(plan)
    title = f"plan {plan.profile} on {where}: {layout}, max_model_len {plan.max_model_len}"
    from dsv4serve.preflight.engine_text import engine_lines, engine_title

    title = engine_title(plan) or title  # llama.cpp, Transformers: their own decisions
    names = ("device", "name", "weights", "KV cache", "overhead", "total", "budget", "free", "fits")
    columns = [(name, "left" if name in ("device", "name") else "right") for name in names]
    rows = []
    for row in plan.memory:
        ok = not row.budget or row.total <= row.budget
        rows.append(
            (
                row.device,
                row.name,
                _gib(row.weights),
                _gib(row.kv_cache),
                _gib(row.overhead),
                _gib(row.total),
                _gib(row.budget),
                _gib(row.free),
                "yes" if ok else "NO",
            )
        )
    out.print(text_table(title, columns, rows), markup=False, crop=False, overflow="ignore")
    for line in engine_lines(plan) if plan.engine != "vllm" else ():
        out.print(line)
    if plan.device == "cuda" and plan.engine == "vllm":
        out.print(
            f"budget = gpu_memory_utilization {plan.gpu_memory_utilization:g} x CUDA's total memory; "
            f"CUDA graphs {'on' if plan.cuda_graphs else 'off (--enforce-eager)'}"
        )
        if plan.graphs_tradeoff:
            switch = "--cuda-graphs" if not plan.cuda_graphs else "eager is the default"
            out.print(f"eager or graphs ({switch}): {plan.graphs_tradeoff}")
        row = plan.memory[0]
        if row.expected_used:
            out.print(
                f"once running, NVML should show about {_gib(row.expected_used)} GiB used per GPU "
                f"(vLLM fills the KV cache up to the budget)"
            )
        for line in _kv_lines(plan):
            out.print(line)
    for note in plan.notes:
        out.print(f"note: {note}")
    for problem in plan.problems:
        out.print(f"problem: {problem}")
    out.print(f"verdict: {plan.verdict}" if plan.fits else f"verdict: DOES NOT FIT: {plan.verdict}")
    if len(plan.nodes) > 1:
        from dsv4serve.preflight.node_text import node_lines

        for line in node_lines(plan, list(up) or ["dsv4serve", "up", plan.profile]):
            out.print(line, markup=False, crop=False, overflow="ignore")
        return
    if "pinned by" in plan.strategy_reason:
        out.print(f"strategy: {plan.strategy_reason}", markup=False)
    out.print(shell_line(plan), markup=False, crop=False, overflow="ignore")


def _kv_lines(plan) -> list[str]:
    """How the KV cache was sized, and what the smallest GPU's KV pool holds once running."""
    from dsv4serve.hardware.inventory import gib

    kv, lines = plan.kv, []
    release = f"vLLM {plan.vllm_release}'s" if plan.vllm_release else "vLLM's"
    if kv and kv.block_stride:
        lines.append(
            f"KV cache ({kv.layout}, the same on every TP rank): {kv.block_stride:,} B per "
            f"{kv.block_size}-token block = {kv.bytes_per_token:,.0f} B/token, plus "
            f"{kv.fixed_blocks_per_sequence} blocks (sliding window, compressor state) per decoding sequence"
        )
        null = f", the null block it holds back first ({kv.reserved:,} B) included" if kv.reserved else ""
        lines.append(
            f"KV cache column = {release} start-up check: max_model_len {plan.max_model_len} with "
            f"{kv.in_flight_tokens:,} tokens in flight (max_num_batched_tokens {kv.batched_tokens:,}) "
            f"needs {gib(kv.startup_need, 2)} per GPU{null}"
        )
    spec = getattr(plan, "spec", None)
    if spec is not None and spec.method != "off":

        def size(n: int) -> str:  # a tiny draft in MiB
            return gib(n, 2) if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"

        weights = (
            f"{size(spec.draft_weights_per_gpu)} of weights"
            if spec.draft_weights_bytes
            else "weights whose size is not known offline (counted in the checkpoint's)"
        )
        layers = f"{spec.draft_layers} layer{'s' if spec.draft_layers > 1 else ''}"
        kv = (
            f"{size(spec.draft_kv_bytes)} of KV start-up need per GPU (its SWA-only layers)"
            if spec.draft_kv_bytes
            else "no KV start-up need (its SWA-only layers fill room the cache's groups already have)"
        )
        lines.append(
            f"speculative decoding {spec.method}, {spec.tokens} draft token{'s' if spec.tokens > 1 else ''} "
            f"per step: the draft ({layers}) adds {weights} and {kv}"
        )
    low = min(plan.memory, key=lambda r: r.kv_capacity_tokens)
    if low.kv_capacity_tokens:
        lines.append(
            f"KV cache capacity >= {low.kv_capacity_tokens:,} tokens per GPU, "
            f"{low.kv_capacity_seqs:,} sequences of {plan.max_model_len:,} tokens at once"
        )
    if low.vllm_kv_tokens:  # V4: vLLM's own figures count its groups' blocks otherwise (kv_cache.py)
        from dsv4serve.engines.vllm.kv_cache import kv_log_lines
        from dsv4serve.engines.vllm.releases import DEFAULT, RELEASES

        pool = low.budget - low.weights - low.overhead
        said = kv_log_lines(
            RELEASES.get(plan.vllm_release, DEFAULT),
            low.vllm_kv_tokens,
            low.vllm_max_concurrency,
            plan.max_model_len,
            "GPU" if plan.device == "cuda" else plan.device.upper(),
        )
        lines.append(
            f"vLLM will report: Available KV cache memory ~{gib(pool, 2)}, then "
            + " / ".join(f"'{line}'" for line in said)
        )
    return lines


def render_inventory(inventory, as_json: bool = False) -> None:
    """The GPUs NVML sees: memory, compute capability and the processes on each (or JSON)."""
    from dsv4serve.render import console, print_json

    if as_json:
        print_json(_inventory_dict(inventory))
        return
    from rich.table import Table

    table = Table(
        title=f"driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version} (memory in GiB)"
    )
    for column in ("index", "name", "uuid", "total", "used", "free", "cc", "processes"):
        table.add_column(column)
    for g in inventory.gpus:
        procs = ", ".join(f"{p.pid} {p.name} ({_gib(p.used)} GiB)" for p in g.processes) or "-"
        table.add_row(
            str(g.index),
            g.name,
            g.uuid,
            _gib(g.memory_total),
            _gib(g.memory_used),
            _gib(g.memory_free),
            g.compute_capability,
            procs,
        )
    console().print(table)


def _inventory_dict(inventory) -> dict:
    from dsv4serve.hardware.inventory import gpu_to_dict

    return {**dataclasses.asdict(inventory), "gpus": [gpu_to_dict(g) for g in inventory.gpus]}
