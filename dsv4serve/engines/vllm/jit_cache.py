"""vLLM's JIT kernel caches under one persistent dsv4serve directory, and the DeepGEMM warmup choice.

A cold DeepSeek-V4 start compiles kernels for minutes (DeepGEMM, TileLang, Triton, CuTe DSL, torch
compile). Each library keeps what it compiled in a directory named by its own environment variable;
dsv4serve points them all under one directory that outlives the run, so a second start loads instead of
compiling. Two of the libraries' defaults sit under TMPDIR, which dsv4serve makes fresh for every run
and removes after it: without this they would never survive a restart. Variable names, checked in the
sources: vLLM 0.26.0 envs.py (VLLM_CACHE_ROOT, VLLM_DEEP_GEMM_WARMUP) and utils/deep_gemm.py
(DG_JIT_CACHE_DIR), TileLang 0.1.9 env.py, Triton knobs.py, torch _inductor/runtime/cache_dir_utils.py,
CUTLASS DSL 4.6.0 base_dsl/cache_helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dsv4serve.errors import LaunchError, UsageError

# (variable, subdirectory). The user's own value of any of them wins (cache_env leaves it out).
CACHE_VARS: tuple[tuple[str, str], ...] = (
    ("VLLM_CACHE_ROOT", "vllm"),  # vLLM's torch.compile cache (torch_compile_cache/) and its other caches
    (
        "DG_JIT_CACHE_DIR",
        "deep_gemm",
    ),  # DeepGEMM's compiled GEMMs (vLLM's default: VLLM_CACHE_ROOT/deep_gemm)
    ("TILELANG_CACHE_DIR", "tilelang"),  # V4's mHC kernels (default ~/.tilelang/cache)
    ("TRITON_CACHE_DIR", "triton"),  # vLLM's Triton kernels, compiled on first use (default ~/.triton/cache)
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),  # default $TMPDIR/torchinductor_$USER: lost with our TMPDIR
    ("CUTE_DSL_CACHE_DIR", "cute_dsl"),  # default $TMPDIR/$USER/cutlass_python_cache: lost likewise
)

WARMUP_VAR = "VLLM_DEEP_GEMM_WARMUP"
WARMUP_CHOICES = ("relax", "full", "skip")
# relax, vLLM 0.26's own default: a cold start runs the GEMM sizes a heuristic picks (1,131 of them,
# 4 min 47 s for tiny-v4 at TP 1 on H200), the compiled kernels land in the persistent cache, and later
# starts load them instead, while requests do not wait on a compile. skip starts sooner on a cold machine
# but moves the compiles into the first requests (a 29.9 s first token was seen); full runs every token
# count up to max_num_batched_tokens for each linear layer's shape: the longest cold start, for the
# rare sizes relax's heuristic misses.
DEFAULT_WARMUP = "relax"
WARMUP_TRADE_OFFS = {
    "relax": "compiles the GEMM shapes a heuristic picks at start (minutes when cold, seconds once the "
    "JIT cache holds them); a rare shape may still compile during a request",
    "full": "compiles every token count up to max_num_batched_tokens per GEMM shape at start (the slowest "
    "cold start); no compiles during requests",
    "skip": "no DeepGEMM warmup: the fastest cold start, but the first requests compile kernels "
    "(tens of seconds to the first token) and new batch sizes compile later",
}


def default_root(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CACHE_HOME/dsv4serve/jit, or ~/.cache/dsv4serve/jit."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsv4serve" / "jit"


def cache_env(root: str | os.PathLike, environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The cache variables for vLLM's environment, leaving out those the user has set (theirs win)."""
    return tuple((var, str(Path(root) / sub)) for var, sub in CACHE_VARS if not environ.get(var))


def ensure_dirs(env: Sequence[tuple[str, str]]) -> None:
    """Create the cache directories this environment names, private to the user (0700 when new)."""
    ours = dict(env)
    for var, _ in CACHE_VARS:
        if var in ours:
            path = Path(ours[var])
            try:  # the shared root too: mkdir(parents=True) would give it the umask's mode
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.mkdir(mode=0o700, exist_ok=True)
            except OSError as err:
                raise LaunchError(
                    f"cannot create the JIT cache directory {ours[var]}: {err.strerror or err}",
                    f"point XDG_CACHE_HOME at a writable directory, or set {var} yourself",
                ) from err


def check_warmup(value: str, source: str) -> str:
    """value if vLLM accepts it as VLLM_DEEP_GEMM_WARMUP, else a UsageError naming where it came from."""
    if value not in WARMUP_CHOICES:
        raise UsageError(
            f"{source}: {value!r} is not a DeepGEMM warmup choice",
            f"use one of {', '.join(WARMUP_CHOICES)} (see `dsv4serve plan --help`)",
        )
    return value


def warmup_note(value: str) -> str:
    return f"DeepGEMM warmup {value} ({WARMUP_VAR}; --warmup relax|full|skip): {WARMUP_TRADE_OFFS[value]}"


def startup_env(
    env: Mapping[str, str], warmup: str | None, cache: Sequence[tuple[str, str]], uses_deep_gemm: bool
) -> tuple[dict[str, str], tuple[str, ...]]:
    """A plan's env with the JIT cache variables and the warmup choice added, and the plan's note.

    Pure. The profile's own serve.env wins over the cache defaults; an explicit warmup (--warmup, the
    user's VLLM_DEEP_GEMM_WARMUP, or serve.deep_gemm_warmup) wins over serve.env. The warmup is set only
    where DeepGEMM runs (V4 profiles) or was asked for, so other plans stay as they were."""
    out = {**dict(cache), **env}
    if warmup is None and not uses_deep_gemm:
        return out, ()
    choice = check_warmup(warmup or out.get(WARMUP_VAR) or DEFAULT_WARMUP, "DeepGEMM warmup")
    out[WARMUP_VAR] = choice
    return out, (warmup_note(choice),)
