"""A systemd service unit that runs `dsv4serve up` in the foreground and reports READY=1 when ready."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from dsv4serve.engines.vllm.jit_cache import CACHE_VARS
from dsv4serve.export.spec import (
    API_KEY_VAR,
    HF_TOKEN_VAR,
    START_MARGIN_S,
    STOP_TIMEOUT_S,
    Deployment,
    download_argv,
    header,
    memory_line,
    up_argv,
)

WATCHDOG_MARGIN_S = 60  # past the stall window: `up` itself stops a stalled server first (exit 6)
# Cache locations the unit pins, so the service finds the weights and JIT caches the exporting user has:
# a unit's environment is not the login shell's.
PATH_VARS = ("HF_HOME", "HF_HUB_CACHE", *(var for var, _ in CACHE_VARS))


def cache_environment(environ: Mapping[str, str], home: str) -> list[tuple[str, str]]:
    """XDG_CACHE_HOME (always: dsv4serve's JIT cache and logs live under it) and the set cache variables."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    pairs = [("XDG_CACHE_HOME", os.path.abspath(base))]
    pairs += [
        (var, os.path.abspath(os.path.expanduser(environ[var]))) for var in PATH_VARS if environ.get(var)
    ]
    return pairs


def quote(arg: str) -> str:
    """One word of a unit file line: specifiers (%) and variables ($) escaped, quoted when it has blanks."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(
    dep: Deployment,
    *,
    executable: Sequence[str],
    user: str,
    environ: Mapping[str, str],
    home: str,
    node_rank: int = 0,
    master_addr: str | None = None,
    llama_server: str | None = None,
) -> str:
    """The unit file's text. `executable`: the dsv4serve the service runs (an absolute path).
    `llama_server`: the llama-server found here (llama.cpp plans), pinned: a unit's PATH is not the
    login shell's."""
    argv = up_argv(dep, gpus=dep.gpus, host=dep.host, rank=str(node_rank), master_addr=master_addr)
    argv[:1] = executable
    run = " ".join(executable)
    unit = dep.name + (f"-node{node_rank}" if dep.nodes > 1 else "")
    env_file = f"/etc/dsv4serve/{unit}.env"
    lines = header(dep)
    lines += [
        f"# Install as /etc/systemd/system/{unit}.service, then:",
    ]
    if dep.engine == "llama.cpp" and not llama_server:
        from dsv4serve.engines.llamacpp.binary import BUILD_HINT, ENV

        lines.append(f"#   llama-server is not installed here: {BUILD_HINT}")
        lines.append(f"#     (as {user}, whose cache the unit uses; or set {ENV} in the env file below)")
    if dep.downloads:
        download = " ".join(download_argv(dep)[1:])
        lines.append(f"#   sudo -u {user} {run} {download}   # the weights, before the first start")
    lines += [
        f"#   {env_file} (mode 0600): {HF_TOKEN_VAR}=... and {API_KEY_VAR}=... lines, if you use them",
        f"#   systemctl daemon-reload && systemctl enable --now {unit}",
        f"#   journalctl -u {unit} -f",
        "",
        "[Unit]",
        f"Description=dsv4serve {dep.profile} ({dep.served_model}) on {dep.label}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        # `up` sends READY=1 on $NOTIFY_SOCKET once /health answers and a one-token completion succeeds.
        "Type=notify",
        "NotifyAccess=main",
        f"User={quote(user)}",
        "ExecStart=" + " ".join(quote(a) for a in argv),
    ]
    pairs = cache_environment(environ, home)
    if dep.engine == "llama.cpp" and llama_server:
        from dsv4serve.engines.llamacpp.binary import ENV

        pairs.append((ENV, os.path.abspath(llama_server)))
    lines += [f"Environment={quote(f'{var}={value}')}" for var, value in pairs]
    lines += [
        f"EnvironmentFile=-{env_file}",
        "Restart=on-failure",
        "RestartSec=10",
        # Usage, no fit and missing weights (exit 2, 3, 4) do not mend by restarting.
        "RestartPreventExitStatus=2 3 4",
        "KillMode=control-group",
        # The deadline `up` starts from: its own readiness deadline plus START_MARGIN_S, so a start with
        # no progress near the end is ended by `up`'s exit 5 (its log tail in the journal), not SIGTERM.
        # A start still reporting progress runs past it: `up` waits PROGRESS_GRACE_S after the last
        # progress, and sends EXTEND_TIMEOUT_USEC=extension_s() (> that grace) at or after each report;
        # systemd holds its timer at >= each message + that value while the messages keep coming (the
        # first lands before TimeoutStartSec, as systemd requires), so it always outlasts `up`'s verdict.
        f"# TimeoutStartSec: up's readiness deadline + {START_MARGIN_S} s; up extends it while vLLM"
        " reports progress (EXTEND_TIMEOUT_USEC)",
        f"TimeoutStartSec={dep.startup_timeout_s + START_MARGIN_S}",
        # Once ready, `up`'s health watch sends WATCHDOG=1 after each check that finds the server
        # healthy (every few seconds); a stalled server stops them, and so does a hung `up`.
        f"# WatchdogSec: the health watch's stall window ({dep.stall_s} s) + {WATCHDOG_MARGIN_S} s",
        f"WatchdogSec={dep.stall_s + WATCHDOG_MARGIN_S}",
        f"TimeoutStopSec={STOP_TIMEOUT_S}",
        "LimitNOFILE=65536",
    ]
    if not dep.gpu_count:
        # The plan uses no GPU (the CPU path, llama.cpp's -ngl 0): no /dev/nvidia*, so `up` plans the
        # same CPU-only layout at each start, even on a host with GPUs.
        lines += ["# CPU only: the plan uses no GPU", "PrivateDevices=yes"]
    if dep.ram_bytes:
        lines += memory_line(dep)
        lines += [f"MemoryLow={dep.memory_request_mib}M", f"MemoryMax={dep.memory_limit_mib}M"]
    lines += [
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"
