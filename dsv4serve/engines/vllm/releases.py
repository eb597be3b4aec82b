"""What changed for DeepSeek-V4 across vLLM 0.26 -> 0.33, as data (shared/facts/vllm-versions-v4.md).

Every figure of that facts file was read from each release's own code; none from 0.27 on was run on a
GPU (the GPU machines here run 0.26). The planner models one release: the installed one (read without
importing vLLM), or `--vllm-version V` for another machine. An older release than 0.26 is planned as
0.26, a newer one than 0.33 as 0.33; the plan says which it modeled and why.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


@dataclass(frozen=True)
class Release:
    """One vLLM minor release, as the V4 planner needs it."""

    version: str  # "0.32"
    # 0.27+: KV pages unpadded, groups packed block-outermost, stride = the largest group's page sum
    # (0.26: sliding pages padded to the full group's, stride = sum over page sizes of the widest use).
    packed_layout: bool
    # 0.29+: start-up need = stride x the pages of one max_model_len request, one null block reserved
    # first (0.26-0.28: layer tuples x the full group's distinct pages x the pages).
    pool_startup_check: bool
    # 0.27+: "Maximum concurrency" = blocks / the unweighted sum of the groups' blocks per request
    # (0.26 weighed each group by its page sum over the full group's).
    unweighted_concurrency: bool
    # The KV-size log: "two-lines" (0.26-0.27), "one-line" (0.28-0.29), "device" (0.30+: the device
    # named, "CPU KV cache size" on the CPU build).
    kv_log: str
    # 0.27+ counts every persistent allocation after its memory snapshot as non-KV memory; reported at
    # ~4 GiB per GPU more than 0.26 (Flash TP 4 on 4x H800 with 0.28, vllm issue 54677).
    non_kv_extra_bytes: int
    v2_model_runner: bool  # 0.29+: V4 on the V2 model runner (PP > 1: (PP + 1) batches in flight)
    # 0.28+: max_num_batched_tokens defaults to 16384 on GPUs with >= 160 GiB (B200, B300, GB200, GB300)
    big_gpu_batched_tokens: bool
    # --attention_config.use_fp4_indexer_cache=True: "ok" (0.26-0.27), "deprecated" (0.28-0.29),
    # "rejected" (0.30+: use --attention_config.indexer_kv_dtype=mxfp4)
    fp4_indexer_flag: str
    # 0.28+: --tokenizer-mode deepseek_v4 turns thinking on unless a request passes
    # chat_template_kwargs {"thinking": false}: a few-token request may come back with empty content.
    thinking_by_default: bool


def _release(minor: int) -> Release:
    return Release(
        version=f"0.{minor}",
        packed_layout=minor >= 27,
        pool_startup_check=minor >= 29,
        unweighted_concurrency=minor >= 27,
        kv_log="two-lines" if minor <= 27 else "one-line" if minor <= 29 else "device",
        non_kv_extra_bytes=4 * GiB if minor >= 27 else 0,
        v2_model_runner=minor >= 29,
        big_gpu_batched_tokens=minor >= 28,
        fp4_indexer_flag="ok" if minor <= 27 else "deprecated" if minor <= 29 else "rejected",
        thinking_by_default=minor >= 28,
    )


OLDEST, NEWEST = 26, 33
RELEASES: dict[str, Release] = {f"0.{m}": _release(m) for m in range(OLDEST, NEWEST + 1)}
DEFAULT = RELEASES[f"0.{OLDEST}"]  # the pure planner's default: the release measured on GPUs here
LATEST = RELEASES[f"0.{NEWEST}"]  # what `pip install vllm` gets today (the facts)


def release_for(version: str | None, source: str = "") -> tuple[Release, str]:
    """The release that models vLLM `version` ("0.32.0+cpu", "0.29", None: none installed), and one
    line for the plan saying which it is and why. `source`: where the version came from."""
    from dsv4serve.engines.vllm.version import parse_version

    if version is None:
        return LATEST, (
            f"no vLLM installed here: planned for vLLM {LATEST.version}, the newest release dsv4serve "
            "models (what `pip install vllm` gets); --vllm-version V plans for another"
        )
    key = parse_version(version)
    if key is None or key[0][0] != 0 or len(key[0]) < 2:
        from dsv4serve.errors import UsageError, oneline

        raise UsageError(
            f"vLLM version {oneline(version, 40)!r}: not a 0.X release dsv4serve can model",
            f"use a release from 0.{OLDEST} to 0.{NEWEST}, e.g. --vllm-version 0.{NEWEST}",
        )
    minor = key[0][1]
    where = f" ({source} {version})" if source else ""
    if minor > NEWEST:
        return LATEST, (
            f"vLLM {version}{where} is newer than the newest release dsv4serve models: planned with "
            f"{LATEST.version}'s KV layout and start-up check (check the logged figures against the plan)"
        )
    if minor < OLDEST:
        return DEFAULT, (
            f"vLLM {version}{where} is older than the oldest release dsv4serve models: planned as "
            f"{DEFAULT.version}"
        )
    release = RELEASES[f"0.{minor}"]
    return release, f"modeled on vLLM {release.version}{where}"


def describe(release: Release) -> str:
    """What of the release the V4 plan models, in a few words."""
    layout = "packed groups (0.27+)" if release.packed_layout else "padded pages (0.26)"
    check = "null block + pool pages (0.29+)" if release.pool_startup_check else "layer tuples (0.26-0.28)"
    return f"KV layout: {layout}; start-up check: {check}"
