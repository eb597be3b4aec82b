"""One state record per detached server: $XDG_STATE_HOME/dsv4serve/servers/NAME.json.

The record is the only thing `ps`, `logs` and `stop` read. It is written atomically (a temporary file
in the same directory, then rename), 0600 in a 0700 directory, and never holds a secret. A pid alone
proves nothing once its process is gone (the kernel hands pids out again), so each pid is kept with its
process start time from /proc: a process is ours only while both match.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dsv4serve.errors import UsageError

# Record states; the first four follow vLLM's start-up phases (startup_log.PHASES); restarting: the
# health policy stopped a ready server and starts it again.
STATES = ("starting", "loading", "warming", "ready", "restarting", "failed")
_PHASE_STATE = {
    "starting": "starting",
    "loading weights": "loading",
    "memory profiling": "loading",
    "KV cache allocation": "loading",
    "kernel warmup": "warming",
    "graph capture": "warming",
    "API server": "warming",
    "ready": "ready",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def state_of_phase(phase: str) -> str:
    """The record state for a start-up phase of launch.Server."""
    return _PHASE_STATE.get(phase, "starting")


def check_name(name: str) -> str:
    """A server name is a file name: letters, digits, '.', '_', '-', at most 64, no leading dot."""
    if not _NAME.match(name):
        raise UsageError(
            f"bad server name {name!r}",
            "use letters, digits, '.', '_' or '-' (at most 64, not starting with '.' or '-'): --name NAME",
        )
    return name


def state_dir() -> Path:
    """$XDG_STATE_HOME/dsv4serve/servers (default ~/.local/state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "dsv4serve" / "servers"


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22); None if it is gone
    or a zombie (it runs no more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(pid: int, started: int) -> bool:
    """Whether pid is still the process that started at `started` (not gone, not a reused pid)."""
    return pid > 0 and start_time(pid) == started


@dataclass(frozen=True)
class Record:
    """What a detached server is: written by its supervisor, read by ps/logs/stop."""

    name: str
    profile: str
    supervisor_pid: int
    supervisor_start: int  # start_time() of the supervisor: a reused pid does not match
    host: str
    port: int
    log: str
    started_at: float  # wall clock, seconds since the epoch
    plan_digest: str
    gpus: tuple[str, ...] = ()  # GPU uuids (or indices) the plan uses; () on the CPU
    gpu_memory_before: tuple[tuple[str, int], ...] = ()  # for the check after stop
    model: str = ""
    pgid: int = 0  # vLLM's process group (its leader's pid); 0 until started
    pgid_start: int = 0
    state: str = "starting"
    phase: str = "starting"
    progress: str = ""  # the current phase's last progress line ("kernel warmup: DeepGEMM 412/1131 (36%)")
    ready_s: float | None = None
    error: dict = field(default_factory=dict)  # {"message", "hint", "exit_code"} once failed
    exit_code: int | None = None
    # The health watch once ready (serving/watch.py): ok, stalled or memory-growth ("" unwatched), why,
    # and the restarts its policy made.
    health: str = ""
    health_reason: str = ""
    restarts: int = 0

    @property
    def endpoint(self) -> str:
        from dsv4serve.serving.procs import connect_host

        host = connect_host(self.host)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/v1"

    def supervisor_alive(self) -> bool:
        return alive(self.supervisor_pid, self.supervisor_start)

    def vllm_alive(self) -> bool:
        return self.pgid > 0 and alive(self.pgid, self.pgid_start)

    def shown_state(self) -> str:
        """The state as it is now: a record whose supervisor is gone before it said so is failed."""
        if self.state != "failed" and not self.supervisor_alive():
            return "failed"
        return self.state

    def shown_health(self) -> str:
        """What ps shows as the state: a ready server's health when it is not ok."""
        shown = self.shown_state()
        return self.health if shown == "ready" and self.health not in ("", "ok") else shown

    def to_dict(self) -> dict:
        return asdict(self)


def path_of(name: str) -> Path:
    return state_dir() / f"{check_name(name)}.json"


def metrics_path(name: str) -> Path:
    """The health watch's Prometheus text file beside the record (node_exporter's textfile format)."""
    return state_dir() / f"{check_name(name)}.prom"


def write(record: Record) -> Path:
    """Write the record atomically: readers see the old one or the new one, never half of one."""
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = directory / f"{check_name(record.name)}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{record.name}.", suffix=".tmp", dir=directory)  # 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(record.to_dict(), out, indent=2)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


def update(record: Record, **changes) -> Record:
    new = replace(record, **changes)
    write(new)
    return new


def _from_dict(data: dict) -> Record:
    data = dict(data)
    data["gpus"] = tuple(data.get("gpus") or ())
    data["gpu_memory_before"] = tuple(tuple(pair) for pair in data.get("gpu_memory_before") or ())
    known = Record.__dataclass_fields__
    return Record(**{k: v for k, v in data.items() if k in known})


def read(name: str) -> Record | None:
    """The record of NAME, or None if there is none (or it cannot be read: a record is ours to rewrite)."""
    try:
        return _from_dict(json.loads(path_of(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read_all() -> list[Record]:
    """Every readable record, by name."""
    directory = state_dir()
    if not directory.is_dir():
        return []
    records = []
    for path in sorted(directory.glob("*.json")):
        record = read(path.stem) if _NAME.match(path.stem) else None
        if record is not None:
            records.append(record)
    return records


def remove(name: str) -> None:
    for path in (path_of(name), metrics_path(name)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def require(name: str) -> Record:
    """The record of NAME, or a usage error naming the servers there are."""
    record = read(name)
    if record is None:
        names = ", ".join(r.name for r in read_all()) or "none"
        raise UsageError(f"no server named {name!r} (servers: {names})", "see `dsv4serve ps`")
    return record
