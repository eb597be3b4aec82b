"""`doctor`'s checks: is this machine ready to serve a profile? Each check returns a frozen Check.

The checks read the machine (NVML, the installed vLLM's dist-info, the disk, the environment, a port) but
never the network and never import vLLM or torch, so the whole run stays well under two seconds. A failing
check carries the exit code `up` would give for the same problem (README's table), and doctor exits with
the first one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dsv4serve.errors import (
    EXIT_DOWNLOAD,
    EXIT_LAUNCH,
    EXIT_NO_FIT,
    EXIT_OK,
    EXIT_USAGE,
    DsvError,
    UsageError,
)

OK, WARN, FAIL = "ok", "warn", "fail"
DISK_SLACK = 1.05  # the hub's .incomplete files and metadata on top of the shards


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str  # what was found; never a secret
    hint: str = ""  # what to do about a warn or fail
    exit_code: int = EXIT_OK  # for a fail: the code `up` would exit with for the same problem


@dataclass(frozen=True)
class Report:
    profile: str | None
    checks: tuple[Check, ...]

    @property
    def exit_code(self) -> int:
        """The first failing check's code, 0 when nothing fails (warnings do not fail)."""
        return next((c.exit_code for c in self.checks if c.status == FAIL), EXIT_OK)


def report_to_dict(report: Report) -> dict:
    return {
        "profile": report.profile,
        "ok": report.exit_code == EXIT_OK,
        "exit_code": report.exit_code,
        "checks": [c.__dict__ for c in report.checks],
    }


def run_checks(profile=None, host: str = "127.0.0.1", port: int = 8000) -> Report:
    """Every check, in the order a start needs them; a check that breaks becomes a fail, not a crash."""
    steps: list[Callable[[], Check | tuple[Check, ...]]] = [
        lambda: check_gpus(profile),
        lambda: check_vllm(profile),
        lambda: _engine_check(profile),  # llama.cpp, Transformers
        lambda: check_disk(profile),
        check_token,
        lambda: check_port(host, port),
        check_cache_dirs,
    ]
    checks: list[Check] = []
    for step in steps:
        result = step()
        checks.extend(result if isinstance(result, tuple) else (result,))
    return Report(profile.name if profile is not None else None, tuple(checks))


def _engine_check(profile=None) -> tuple[Check, ...]:
    """The profile's engine when it is not vLLM (serve.engine: llama.cpp, Transformers): installed and
    new enough, as `up` checks it; what `up` would refuse fails with its exit code."""
    if profile is None or profile.serve.engine in (None, "vllm", "auto"):
        return ()
    from dsv4serve.engines.base import get_engine

    engine = get_engine(profile.serve.engine)
    installed = engine.installed_version()
    try:
        engine.require_version(None, installed, profile.name)
    except DsvError as err:
        return (Check(engine.name, FAIL, err.message, err.hint, err.exit_code),)
    return (Check(engine.name, OK, f"{engine.name} {installed}"),)


def check_gpus(profile=None) -> tuple[Check, ...]:
    """Driver and NVML, then the GPUs with their compute capability against the profile's minimum."""
    from dsv4serve.hardware import inventory as hardware

    gpu_only = profile is not None and not profile.cpu_ok
    gpu_only = gpu_only and profile.serve.engine not in ("llama.cpp", "transformers")  # these run on CPUs
    try:
        inventory = hardware.read_inventory()
    except DsvError as err:
        status = FAIL if gpu_only else WARN
        hint = "install the NVIDIA driver (`nvidia-smi` must work)" + (
            "" if gpu_only else "; CPU-only profiles (tiny) run without it"
        )
        return (Check("driver", status, err.message, hint, EXIT_NO_FIT if gpu_only else EXIT_OK),)
    driver = Check(
        "driver", OK, f"NVIDIA driver {inventory.driver_version}, CUDA {inventory.cuda_driver_version}"
    )
    if not inventory.gpus:
        status = FAIL if gpu_only else WARN
        hint = "check `nvidia-smi` and CUDA_VISIBLE_DEVICES"
        return driver, Check("gpus", status, "NVML shows no GPU", hint, EXIT_NO_FIT if gpu_only else EXIT_OK)
    names = ", ".join(f"{g.index}: {g.name} (cc {g.compute_capability})" for g in inventory.gpus)
    need = profile.model.min_compute_capability if profile is not None else "0.0"
    floor = hardware.capability_key(need)
    low = [g for g in inventory.gpus if hardware.capability_key(g.compute_capability) < floor]
    if low and profile is not None and len(low) == len(inventory.gpus) and gpu_only:
        return driver, Check(
            "gpus",
            FAIL,
            f"{names}; profile {profile.name} needs compute capability {need}+",
            "run it on such a GPU (H100, H200, B200)",
            EXIT_NO_FIT,
        )
    if low:
        shown = ", ".join(str(g.index) for g in low)
        return driver, Check(
            "gpus", WARN, f"{names}; GPU {shown} below compute capability {need}", "choose others with --gpus"
        )
    return driver, Check("gpus", OK, f"{len(inventory.gpus)} GPU(s): {names}")


def check_vllm(profile=None, paths: Sequence[str] | None = None) -> Check:
    """vLLM installed (read from its dist-info on sys.path, or `paths`; not imported) and new enough."""
    from dsv4serve.engines.vllm.version import installed_vllm_version, require_vllm

    version = installed_vllm_version(paths)
    minimum = profile.serve.min_vllm_version if profile is not None else None
    if version is None:
        return Check(
            "vllm",
            FAIL,
            "vLLM is not installed in this Python environment",
            "install it (`make install` on a GPU machine)",
            EXIT_LAUNCH,
        )
    try:
        require_vllm(minimum, version, profile.name if profile is not None else "")
    except DsvError as err:
        return Check("vllm", FAIL, err.message, err.hint, err.exit_code)
    wanted = f" (profile needs >= {minimum})" if minimum else ""
    return Check("vllm", OK, f"vLLM {version}{wanted}")


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The hub cache as huggingface_hub finds it (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub).

    weights.hub_settings() says the same but imports huggingface_hub for the token (~0.3 s)."""
    env = os.environ if environ is None else environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not cache:
        base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(env.get("HF_HOME") or os.path.join(base, "huggingface"), "hub")
    return Path(cache).expanduser()


def _existing(path: Path) -> Path:
    """path, or its nearest existing ancestor (what a mkdir -p would start from)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(profile=None) -> Check:
    """Free space where the weights go, against the profile's checkpoint size (hub profiles only)."""
    from dsv4serve.hardware.inventory import gib

    cache = hub_cache_dir()
    try:
        free = shutil.disk_usage(_existing(cache)).free
    except OSError as err:
        return Check("disk", WARN, f"cannot read free space at {cache}: {err.strerror or err}")
    if profile is None or not profile.model.repo or not profile.model.weights_bytes:
        return Check("disk", OK, f"{gib(free)} free at {cache}")
    need = int(profile.model.weights_bytes * DISK_SLACK)
    what = f"{gib(free)} free at {cache}; {profile.name}'s weights take {gib(profile.model.weights_bytes)}"
    if free >= need:
        return Check("disk", OK, what)
    # Already downloaded weights need no more space: `download` checks what is missing before a byte.
    return Check(
        "disk",
        WARN,
        what,
        f"free space there or set HF_HUB_CACHE to a larger disk (`dsv4serve download {profile.name}` "
        "checks exactly what is missing and fails before the first byte if it does not fit)",
    )


def check_token(environ: Mapping[str, str] | None = None) -> Check:
    """An HF token is present (HF_TOKEN, or the file `hf auth login` writes); its value is never shown."""
    env = os.environ if environ is None else environ
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(var, "").strip():
            return Check("hf_token", OK, f"present (from {var})")
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = env.get("HF_HOME") or os.path.join(base, "huggingface")
    path = Path(env.get("HF_TOKEN_PATH") or os.path.join(home, "token")).expanduser()
    try:
        if path.read_text(encoding="utf-8").strip():
            return Check("hf_token", OK, f"present (from {path})")
    except (OSError, UnicodeDecodeError):
        pass
    return Check(
        "hf_token",
        WARN,
        "no Hugging Face token (HF_TOKEN or `hf auth login`)",
        "public repos download without one, more slowly and rate-limited; gated ones need it",
    )


def check_port(host: str, port: int) -> Check:
    """The port `up` would bind is free now (the same bind test `up` makes before vLLM starts)."""
    from dsv4serve.engines.vllm.flags import check_host
    from dsv4serve.serving.procs import port_in_use

    try:  # as `up` refuses it: bind() raised TypeError on a NUL or a 5,000-digit name (exit 1)
        check_host(host)
    except UsageError as err:
        return Check("port", FAIL, err.message, err.hint, EXIT_USAGE)
    busy = port_in_use(host, port)
    if busy:
        return Check(
            "port", FAIL, busy, "stop what listens there, or choose another with --port", EXIT_LAUNCH
        )
    return Check("port", OK, f"{host}:{port} is free")


def cache_dirs(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, Path, int], ...]:
    """(check name, directory, exit code of `up` when it cannot write there) for each directory it writes."""
    from dsv4serve.engines.vllm import jit_cache

    env = os.environ if environ is None else environ
    jit = jit_cache.default_root(env)
    return (
        ("hub_cache", hub_cache_dir(env), EXIT_DOWNLOAD),
        ("jit_cache", jit, EXIT_LAUNCH),
        ("log_dir", jit.parent / "logs", EXIT_LAUNCH),
    )


def check_cache_dirs(environ: Mapping[str, str] | None = None) -> tuple[Check, ...]:
    """Each cache directory is writable, or can be created (checked without creating anything)."""
    checks = []
    for what, path, code in cache_dirs(environ):
        base = _existing(path)
        if base.is_dir() and os.access(base, os.W_OK | os.X_OK):
            state = "writable" if base == path else f"will be created under {base}"
            checks.append(Check(what, OK, f"{path}: {state}"))
        else:
            checks.append(
                Check(
                    what,
                    FAIL,
                    f"{path}: {base} is not a writable directory",
                    "fix its permissions, or point XDG_CACHE_HOME / HF_HOME at a writable directory",
                    code,
                )
            )
    return tuple(checks)
