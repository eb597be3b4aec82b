"""vLLM flags that would change a plan behind the planner's back: folded into the plan, or refused.

The planner decides the GPUs, the tensor-parallel size, the context length, the memory budget and the
endpoint. vLLM reads the last value of a flag it is given, so `-- --tensor-parallel-size 1` (or the
same in a profile's serve.extra_args) would leave a plan that says TP 2 and a server that runs TP 1.
Here, args after `--` that have a planner setting become that setting (the planner then plans with
it: the plan and the argv agree); flags the planner cannot model are refused with the option to use.
A profile's serve.extra_args may hold none of them: the profile has its own fields (profile_arg_problem).

vLLM's parser (FlexibleArgumentParser) reads `--flag value`, `--flag=value`, `--flag_name` as
`--flag-name`, and any unambiguous prefix of a long flag (argparse's allow_abbrev): all are seen here.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from dataclasses import dataclass

from dsv4serve.errors import UsageError, oneline

MIN_MODEL_LEN = 256  # a chat request (template, prompt, one token) needs a few hundred tokens
_MAX_TOKENS = 1 << 40  # far above any context; keeps the arithmetic and the argv small
_INT_RE = re.compile(r"[0-9]{1,13}")
# vLLM's human_readable_int: 1k = 1000, 1K = 1024, 25.6k = 25600.
_HUMAN_RE = re.compile(r"([0-9]{1,13})(?:\.([0-9]{1,6}))?([kKmMgGtT])")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)

_MULTI_NODE = "dsv4serve plans parallelism and nodes: use --gpus and --tp, --strategy, or --nodes"
_MEMORY = "it changes the memory the planner budgets: write a profile (extends: ...) with its facts"


@dataclass(frozen=True)
class Flag:
    """A vLLM flag the planner owns: what it is called, what it takes, and what to use instead."""

    names: tuple[str, ...]  # vLLM spellings; the first is the canonical long one
    takes: str  # "int", "len", "fraction", "host", "port", "none" (a switch), "any"
    fold: str = ""  # after `--`: the setting it becomes; "" = refused
    use: str = ""  # the hint of a refusal: what to use instead
    harmless: str = ""  # a value that changes nothing (pipeline size 1): passed to vLLM as given


FLAGS = (
    Flag(
        ("--tensor-parallel-size", "-tp"),
        "int",
        "tensor_parallel_size",
        "use dsv4serve plan --tp N, or the profile's hardware rules (tensor_parallel_size)",
    ),
    Flag(("--max-model-len",), "len", "max_model_len", "use --max-model-len, or serve.max_model_len"),
    Flag(("--host",), "host", "host", "use dsv4serve's --host"),
    Flag(("--port",), "port", "port", "use dsv4serve's --port"),
    Flag(("--enforce-eager",), "none", "eager", "use --enforce-eager, or serve.enforce_eager: true"),
    Flag(("--no-enforce-eager",), "none", "graphs", "use --cuda-graphs, or serve.enforce_eager: false"),
    Flag(
        ("--gpu-memory-utilization", "--device-memory-utilization"),
        "fraction",
        "gpu_memory_utilization",
        "use serve.gpu_memory_utilization",
    ),
    Flag(("--max-num-batched-tokens",), "len", "max_num_batched_tokens", "use serve.max_num_batched_tokens"),
    Flag(
        ("--kv-cache-dtype",), "any", "", "use serve.kv_cache_dtype in a profile: the KV facts depend on it"
    ),
    Flag(("--block-size",), "any", "", "use serve.block_size in a profile: the KV cache model depends on it"),
    Flag(("--pipeline-parallel-size", "-pp"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--data-parallel-size", "-dp"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--data-parallel-size-local", "-dpl"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--data-parallel-rank", "-dpn"), "any", "", _MULTI_NODE),
    Flag(("--data-parallel-start-rank", "-dpr"), "any", "", _MULTI_NODE),
    Flag(("--data-parallel-address", "-dpa"), "any", "", _MULTI_NODE),
    Flag(("--decode-context-parallel-size", "-dcp"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--prefill-context-parallel-size", "-pcp"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--nnodes", "-n"), "any", "", _MULTI_NODE, harmless="1"),
    Flag(("--master-addr",), "any", "", "use dsv4serve's --master-addr"),
    Flag(("--master-port",), "any", "", "use dsv4serve's --master-port"),
    Flag(("--data-parallel-rpc-port", "-dpp"), "any", "", _MULTI_NODE),
    Flag(("--distributed-executor-backend",), "any", "", "use dsv4serve's --executor"),
    Flag(("--node-rank", "-r"), "any", "", _MULTI_NODE, harmless="0"),
    Flag(("--headless",), "none", "", _MULTI_NODE),
    Flag(("--device-ids",), "any", "", "use dsv4serve's --gpus"),
    Flag(("--kv-cache-memory-bytes",), "any", "", _MEMORY),
    Flag(("--num-gpu-blocks-override",), "any", "", _MEMORY),
    Flag(("--cpu-offload-gb",), "any", "", _MEMORY, harmless="0"),
    Flag(("--kv-offloading-size",), "any", "", _MEMORY),
    Flag(("--swap-space",), "any", "", _MEMORY),
    Flag(("--quantization", "-q"), "any", "", _MEMORY),
    Flag(("--model",), "any", "", "use the profile's model.repo or model.path"),
    Flag(("--revision",), "any", "", "use the profile's model.revision (download: --revision R)"),
    Flag(("--config",), "any", "", "use a profile: a vLLM config file can change any planned setting"),
    Flag(("--uds",), "any", "", "use dsv4serve's --host and --port: readiness is checked over TCP"),
    # a draft changes the weights vLLM loads and the KV cache's layers (planning/spec.py)
    Flag(
        ("--speculative-config", "-sc"),
        "any",
        "speculative",
        "use dsv4serve's --spec mtp|dspark and --spec-tokens K",
    ),
)
# The speculative methods the planner models, and the config keys it folds (the rest is refused).
_SPEC_METHODS = ("mtp", "dspark")
_SPEC_KEYS = {"method", "num_speculative_tokens", "draft_sample_method"}
_BY_NAME = {name: flag for flag in FLAGS for name in flag.names}
_LONG_NAMES = sorted(name for name in _BY_NAME if name.startswith("--"))


def valid_host(host: str) -> bool:
    """An address vLLM can bind: an IPv4/IPv6 address or a DNS name (not `a b;rm`, not empty)."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:  # a name; one whose last label is a number is a mistyped address (999.1.1.1)
        return bool(_HOSTNAME_RE.fullmatch(host)) and not host.rstrip(".").rsplit(".", 1)[-1].isdigit()


def check_host(host: str, where: str = "--host") -> str:
    if not valid_host(host):
        raise UsageError(
            f"{where} {_shown(host)}: not an IP address or host name",
            "e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)",
        )
    return host


def _shown(text: str) -> str:
    return repr(oneline(text, 60))


def _split(arg: str) -> tuple[Flag | None, str, str | None]:
    """(the planned flag an argument names, the flag as written, its `=value` if any)."""
    if not arg.startswith("-") or arg in ("-", "--") or _INT_RE.fullmatch(arg.lstrip("-")):
        return None, "", None
    name, eq, value = arg.partition("=")
    if name.startswith("--"):
        name = name.replace("_", "-")  # vLLM reads --max_model_len as --max-model-len
    if name.startswith("--speculative-config."):  # vLLM's dotted form of one config key
        raise UsageError(
            f"{oneline(arg, 60)}: a speculative config changes the weights and the KV cache the plan counts",
            "use dsv4serve's --spec mtp|dspark and --spec-tokens K",
        )
    flag = _BY_NAME.get(name)
    if flag is None and name.startswith("--") and len(name) > 3:
        # argparse's allow_abbrev: an unambiguous prefix is the flag; any prefix of a planned flag is
        # refused (no planned flag's name is another real vLLM flag's prefix)
        matches = [long for long in _LONG_NAMES if long.startswith(name)]
        if matches:
            raise UsageError(
                f"{oneline(arg, 60)}: vLLM reads it as {matches[0]}, a setting the plan decides",
                f"write the flag in full; {_BY_NAME[matches[0]].use}",
            )
    return flag, name, (value if eq else None)


def _value(flag: Flag, name: str, raw: str):
    """A planned flag's value, checked as the planner would check its own option."""
    shown = f"{name} {oneline(raw, 60)}"
    if flag.takes == "int":
        if not _INT_RE.fullmatch(raw) or not 1 <= int(raw) <= 1024:
            raise UsageError(f"{shown}: expected a whole number from 1 to 1024")
        return int(raw)
    if flag.takes == "len":
        tokens = read_tokens(raw)
        if tokens is None:
            raise UsageError(
                f"{shown}: expected a number of tokens (e.g. 131072 or 128K)",
                "leave it out to let the planner choose" if raw.lower() in ("auto", "-1") else "",
            )
        return tokens
    if flag.takes == "fraction":
        try:  # bounded: a fraction is a few characters, never a 10,000-digit text to convert
            value = float(raw) if len(raw) <= 32 else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and 0 < value <= 1):
            raise UsageError(f"{shown}: expected a fraction in (0, 1], e.g. 0.9")
        return value
    if flag.takes == "port":
        if not _INT_RE.fullmatch(raw) or not 1 <= int(raw) <= 65535:
            raise UsageError(f"{shown}: expected a port from 1 to 65535")
        return int(raw)
    if flag.takes == "host":
        return check_host(raw, name)
    return raw


def read_tokens(raw: str) -> int | None:
    """vLLM's human-readable integers (131072, 128K = 131072, 128k = 128000), bounded; None if not one."""
    if _INT_RE.fullmatch(raw):
        value = int(raw)
    else:
        match = _HUMAN_RE.fullmatch(raw)
        if not match:
            return None
        whole, frac, unit = match.groups()
        if unit.isupper():
            if frac:
                return None  # vLLM refuses decimals with binary suffixes
            value = int(whole) << (10 * "KMGT".index(unit) + 10)
        else:
            value = int(float(f"{whole}.{frac or 0}") * 1000 ** ("kmgt".index(unit) + 1))
    return value if 1 <= value <= _MAX_TOKENS else None


def _scan(args: tuple[str, ...]):
    """Yield (index, flag, name, value or None, the number of args it spans) for planned flags."""
    i = 0
    while i < len(args):
        if args[i] == "--":  # argparse would take all after it as vLLM's positionals: none exist
            raise UsageError(
                "-- among the args for vLLM: vLLM would read all after it as positional arguments,"
                " and it takes none but the model",
                "write -- once, before the args for vLLM",
            )
        flag, name, value = _split(args[i])
        if flag is None:
            i += 1
            continue
        span = 1
        if flag.takes == "none":
            if value is not None:
                raise UsageError(f"{oneline(args[i], 60)}: {name} takes no value")
        elif value is None:
            if i + 1 >= len(args):
                raise UsageError(f"{name} needs a value")
            value, span = args[i + 1], 2
        yield i, flag, name, value, span
        i += span


def profile_arg_problem(args: tuple[str, ...]) -> tuple[int, str, str] | None:
    """The first of a profile's serve.extra_args that a profile field or dsv4serve decides:
    (its index, the problem, what to use instead); None when there is none."""
    try:
        for i, flag, name, value, _ in _scan(args):
            if value is not None and value == flag.harmless:
                continue
            return i, f"{name} is decided by the planner", flag.use
    except UsageError as err:
        return 0, err.message, err.hint or "write vLLM flags in full"
    return None


def speculative_config(raw: str, overrides) -> tuple[str, int | None]:
    """--speculative-config JSON after `--` as (--spec, --spec-tokens); refused when the planner cannot
    model it (another method, another key) or when it contradicts --spec / --spec-tokens."""
    import json

    use = "use dsv4serve's --spec mtp|dspark and --spec-tokens K"
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: '[' nested thousands deep
        config = None
    if not isinstance(config, dict):
        raise UsageError(f"--speculative-config {oneline(raw, 60)}: expected a JSON object", use)
    method, tokens = config.get("method"), config.get("num_speculative_tokens")
    if method not in _SPEC_METHODS:
        raise UsageError(
            f"--speculative-config: method {oneline(str(method), 40)!r} is not one the plan models "
            f"({', '.join(_SPEC_METHODS)}: the drafts DeepSeek-V4 checkpoints carry)",
            use,
        )
    extra = sorted(set(config) - _SPEC_KEYS)
    if extra:
        raise UsageError(
            f"--speculative-config: {', '.join(map(str, extra))[:80]} not modeled by the plan", use
        )
    if tokens is not None and (type(tokens) is not int or not 1 <= tokens <= 32):
        raise UsageError(
            f"--speculative-config: num_speculative_tokens {oneline(str(tokens), 20)}: 1 to 32", use
        )
    if (overrides.spec not in (None, method)) or (overrides.spec_tokens not in (None, tokens)):
        raise UsageError(
            "--speculative-config after -- contradicts --spec / --spec-tokens", "give one of them"
        )
    return method, tokens


_INDEXER_KEYS = ("use_fp4_indexer_cache", "indexer_kv_dtype")


def indexer_problem(args: tuple[str, ...], vllm_version: str = "") -> str | None:
    """The Blackwell FP4 indexer cache among the args, per vLLM release: a problem, or None.

    --attention_config.use_fp4_indexer_cache=True works in 0.26-0.27, is a deprecated alias in
    0.28-0.29 and is rejected from 0.30 (--attention_config.indexer_kv_dtype=mxfp4 instead). Either one
    stores 68 B indexer entries instead of 132 (Flash: 917,568 B per block on 0.27+), a layout the
    planner does not model yet, so both are refused; the message says what the release would do."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        name = arg.partition("=")[0].replace("-", "_")
        if not name.startswith("__attention_config"):
            continue
        # --attention-config.KEY[=V], or --attention-config[=]JSON (the JSON may be the next arg)
        text = arg if "=" in arg or "." in name else " ".join(args[i : i + 2])
        key = next((k for k in _INDEXER_KEYS if k in text.replace("-", "_")), None)
        if key is None:
            continue
        from dsv4serve.engines.vllm.releases import DEFAULT, release_for

        release = release_for(vllm_version)[0] if vllm_version and vllm_version != "none" else DEFAULT
        said = {
            "ok": f"vLLM {release.version} takes it",
            "deprecated": f"vLLM {release.version} takes it as a deprecated alias of indexer_kv_dtype=mxfp4",
            "rejected": f"vLLM {release.version} rejects it: the option there is indexer_kv_dtype=mxfp4",
        }[release.fp4_indexer_flag]
        if key == "indexer_kv_dtype":
            said = (
                f"vLLM {release.version} has no indexer_kv_dtype (0.28+)"
                if release.fp4_indexer_flag == "ok"
                else f"vLLM {release.version} takes it"
            )
        return (
            f"{oneline(arg, 60)}: the FP4 indexer cache (Blackwell) changes DeepSeek-V4's KV layout (68 B "
            f"indexer entries), which the plan does not model yet ({said})"
        )
    return None


def settle_overrides(profile, overrides):
    """Check the command line's overrides, and fold the planned flags among the args after `--` into
    them (and into the profile's serve settings): returns (profile, overrides) for make_plan."""
    if overrides.tensor_parallel_size is not None and not 1 <= overrides.tensor_parallel_size <= 1024:
        raise UsageError(
            f"--tp {overrides.tensor_parallel_size}: the tensor-parallel size must be 1 to 1024",
            "leave --tp out to let the planner choose",
        )
    if overrides.max_model_len is not None and overrides.max_model_len < MIN_MODEL_LEN:
        raise UsageError(
            f"--max-model-len {overrides.max_model_len}: too short to serve a chat request",
            f"use at least {MIN_MODEL_LEN} tokens, or leave it out to let the planner choose",
        )
    check_host(overrides.host)
    args = tuple(overrides.extra_args)
    indexer = indexer_problem(args, getattr(overrides, "vllm_version", ""))
    if indexer:
        raise UsageError(
            indexer, "serve without it (the fp8 indexer cache), or plan it yourself and run vllm serve"
        )
    keep = list(args)
    changes: dict[str, object] = {}
    serve_changes: dict[str, object] = {}
    for i, flag, name, value, span in _scan(args):
        if not flag.fold:
            if value is not None and value == flag.harmless:
                continue
            raise UsageError(f"{name} after -- would change the plan behind the planner's back", flag.use)
        for j in range(i, i + span):
            keep[j] = None
        if flag.fold in ("eager", "graphs"):
            changes["cuda_graphs"] = flag.fold == "graphs"
        elif flag.fold in ("gpu_memory_utilization", "max_num_batched_tokens"):
            serve_changes[flag.fold] = _value(flag, name, value)
        elif flag.fold == "speculative":
            changes["spec"], changes["spec_tokens"] = speculative_config(value, overrides)
        else:
            changes[flag.fold] = _value(flag, name, value)
    if not changes and not serve_changes:
        return profile, overrides
    changes["extra_args"] = tuple(a for a in keep if a is not None)
    if serve_changes:
        fields = {f.name for f in dataclasses.fields(profile.serve)}
        serve = dataclasses.replace(profile.serve, **{k: v for k, v in serve_changes.items() if k in fields})
        profile = dataclasses.replace(profile, serve=serve)
    return settle_overrides(profile, dataclasses.replace(overrides, **changes))
