"""One `dsv4serve bench`: the server's engine and version, each concurrency level through the chosen
client, stored; and two stored runs compared."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from dsv4serve.bench import client as own
from dsv4serve.bench import store, vllm_client
from dsv4serve.bench.figures import FIGURES, Level

__all__ = ["FIGURES", "bench", "compare", "stored"]
from dsv4serve.errors import UsageError, oneline
from dsv4serve.serving import health as h

CLIENTS = ("auto", "vllm", "own")


def parse_concurrency(text: str) -> tuple[int, ...]:
    """`1,8,64` -> (1, 8, 64): positive, at most 1024 each."""
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or any(not 1 <= c <= 1024 for c in levels) or len(text) > 200:
        raise UsageError(
            f"--concurrency {oneline(text, 40)!r}: expected numbers 1-1024", "e.g. --concurrency 1,8,64"
        )
    return levels


def read_dataset(file: str | None) -> list[str] | None:
    """A JSONL file of {"prompt": ...} lines (`vllm bench serve --dataset-name custom` reads the same)."""
    if file is None:
        return None
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
        prompts = [str(json.loads(line)["prompt"]) for line in lines if line.strip()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(
            f"--dataset {oneline(file, 100)}: not a JSONL file of prompts ({oneline(err, 80)})",
            'one JSON object per line, e.g. {"prompt": "Explain KV caches."}',
        ) from None
    if not prompts:
        raise UsageError(f"--dataset {oneline(file, 100)}: no prompts", 'add lines like {"prompt": "..."}')
    return prompts


def engine_of(base_url: str, api_key: str | None) -> tuple[str, str]:
    """(engine, version) as the server tells: vLLM's /version, llama.cpp's metric names, else unknown."""
    status, text = h.get_text(base_url + "/version", 5.0, api_key)
    if status == 200:
        try:
            return "vllm", str(json.loads(text)["version"])
        except (ValueError, KeyError, TypeError):
            pass
    status, text = h.get_text(base_url + "/metrics", 5.0, api_key)
    if status == 200 and "llamacpp:" in text:
        return "llama.cpp", ""
    return "unknown", ""


def gpu_names(gpus: Sequence[str]) -> str:
    """The GPUs of a detached server, by name (NVML), else their ids; "" where none are known."""
    if not gpus:
        return ""
    try:
        from dsv4serve.hardware import inventory

        names = {g.uuid or str(g.index): g.name for g in inventory.read_inventory().gpus}
    except Exception:  # noqa: BLE001 - no NVML here: the ids stand
        names = {}
    return ",".join(names.get(g, g) for g in gpus)


def bench(
    target,
    *,
    concurrency: tuple[int, ...],
    input_len: int,
    output_len: int,
    num_prompts: int | None,
    dataset: str | None,
    client: str,
    label: str,
    api_key: str | None,
    say: Callable[[str], None],
) -> dict:
    """Run every level, store the run, return it (as `bench list` shows it)."""
    if client not in CLIENTS:
        raise UsageError(
            f"--client {oneline(client, 40)!r}: not a client", f"use one of {', '.join(CLIENTS)}"
        )
    prompts = read_dataset(dataset)
    engine, version = engine_of(target.base_url, api_key)
    used = client if client != "auto" else ("vllm" if engine == "vllm" and vllm_client.installed() else "own")
    if used == "vllm" and not vllm_client.installed():
        raise UsageError("--client vllm: vLLM is not installed here", "--client own uses dsv4serve's client")
    words = None
    if used == "own" and not prompts:
        words = own.fit_words(target.base_url, target.model, input_len, api_key)
    levels: list[Level] = []
    for c in concurrency:
        n = num_prompts or max(8, 4 * c)
        say(f"concurrency {c}: {n} requests ({used} client)")
        if used == "vllm":
            level = vllm_client.run_level(
                target.base_url, target.model, c, n, input_len, output_len, dataset, api_key
            )
        else:
            level = own.run_level(
                target.base_url,
                target.model,
                c,
                own.make_prompts(input_len, n, prompts, words),
                output_len,
                api_key,
            )
        levels.append(level)
    run = {
        "target": target.name or target.base_url,
        "model": target.model,
        "engine": engine,
        "engine_version": version,
        "plan_digest": target.plan_digest,
        "gpus": gpu_names(target.gpus),
        "client": used,
        "input_len": input_len if not prompts else 0,
        "output_len": output_len,
        "dataset": str(Path(dataset).resolve()) if dataset else "",
        "label": label,
    }
    run_id = store.save(run, levels)
    return store.get(run_id) or {}


def stored(run_ids: Sequence[int]) -> list[dict]:
    """The kept runs of these ids, in their order (once each); a usage error naming the first unknown."""
    runs = []
    for run_id in dict.fromkeys(run_ids):
        run = store.get(run_id)
        if run is None:
            raise UsageError(f"no benchmark run {run_id}", "see `dsv4serve bench list`")
        runs.append(run)
    return runs


def compare(a: int, b: int) -> dict:
    """Run B against run A, level by level: each figure's ratio B/A (None where either lacks it)."""
    runs = {run["id"]: run for run in stored((a, b))}
    by_level_a = {lv["concurrency"]: lv for lv in runs[a]["levels"]}
    rows = []
    for lv in runs[b]["levels"]:
        base = by_level_a.get(lv["concurrency"])
        if base is None:
            continue
        ratios = {}
        for key, _, _ in FIGURES:
            x, y = base.get(key), lv.get(key)
            ratios[key] = round(y / x, 3) if x and y is not None else None
        rows.append({"concurrency": lv["concurrency"], "a": base, "b": lv, "ratio": ratios})
    if not rows:
        raise UsageError(
            f"runs {a} and {b} share no concurrency level", "bench both with the same --concurrency"
        )
    return {"a": runs[a], "b": runs[b], "levels": rows}
