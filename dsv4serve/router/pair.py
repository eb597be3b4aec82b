"""`route --flash PROFILE --pro PROFILE`: plan both servers before anything starts, start them on GPUs of
their own, and keep them for as long as the router serves.

The servers are launch.Server process groups, as `up` runs them (the same preflight, logs, stop and
orphan guard); the router only chooses their GPUs and ports and watches them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsv4serve.errors import DsvError, HardwareError, LaunchError


@dataclass(frozen=True)
class Member:
    """One upstream the router starts: its profile and where it listens."""

    name: str  # flash | pro
    profile: str  # a profile name or YAML path
    port: int
    gpus: str | None = None  # --flash-gpus / --pro-gpus as given


def is_url(value: str) -> bool:
    return "://" in value


def default_gpus(profile, inventory_gpus: Sequence, taken: set[int]) -> str | None:
    """The GPUs a member gets when none are named: the first (Flash) the fewest its profile's one-node
    rules allow on GPUs of this size (2 on H200, 4 on H100-80GB for Flash), so Pro keeps the rest; the
    second every GPU the first did not take. None on the CPU path."""
    free = [g for g in inventory_gpus if g.index not in taken]
    if not inventory_gpus:
        return None
    if not free:
        return ""
    if taken:
        return gpu_list(free)
    smallest = min(g.memory_usable for g in free)
    counts = [
        rule.gpus
        for rule in profile.hardware
        if rule.nodes == 1 and rule.min_vram_gib * (1 << 30) <= smallest * 1.001  # GiB as rules round them
    ]
    return str(min(min(counts), len(free))) if counts else gpu_list(free)


def gpu_list(gpus) -> str:
    """GPUs as a --gpus list: "1," is GPU 1 (a bare "1" would be a count: any one GPU)."""
    return "".join(f"{g.index}," for g in gpus)


def plan_members(
    members: Sequence[Member],
    profile_dirs: Sequence[str],
    hardware: str | None,
    show: Callable[[Member, object], None] | None = None,
):
    """Plan every member on the GPUs it will get, before anything is downloaded or started: [(member,
    profile, plan)]. A member that does not fit, or GPUs shared without room for both, stop it here;
    show(member, plan) sees each plan first (--dry-run prints it)."""
    from dsv4serve.preflight.engine_choice import EngineOptions, plan_for_engine, requested_engine
    from dsv4serve.preflight.options import plan_from_options, resolve_inventory
    from dsv4serve.profiles.load import load_profile

    planned, taken = [], set()
    for m in members:
        try:
            gpus = m.gpus
            profile = load_profile(m.profile, profile_dirs=tuple(profile_dirs))
            if requested_engine(profile, EngineOptions()) in ("llama.cpp", "transformers"):
                # a GGUF (or Transformers) profile: its engine plans its own memory, RAM included
                profile, plan = plan_for_engine(
                    m.profile, profile_dirs=profile_dirs, gpus=gpus, hardware=hardware, port=m.port
                )
            else:
                if gpus is None:
                    inventory, _ = resolve_inventory(profile, hardware)
                    gpus = default_gpus(profile, inventory.gpus, taken)
                profile, plan = _plan_vllm(m, gpus, planned, profile_dirs, hardware, plan_from_options)
        except DsvError as err:  # the same error and exit code, saying which member it is about
            err.message = f"{m.name} ({m.profile}): {err.message}"
            raise
        if show is not None:
            show(m, plan)
        if not plan.fits:
            raise _does_not_fit(m, plan, shown=show is not None)
        planned.append((m, profile, plan))
        taken |= {g.index for g in plan.gpus}
    _check_shared(planned)
    return planned


def _plan_vllm(m: Member, gpus, planned, profile_dirs, hardware, plan_from_options):
    if gpus == "":
        raise HardwareError(
            f"no GPU is left: {_others(planned)} takes every visible GPU",
            f"run {m.name} elsewhere and pass its URL (--{m.name} http://HOST:PORT), "
            f"or split them yourself with --flash-gpus and --pro-gpus",
        )
    return plan_from_options(m.profile, profile_dirs=profile_dirs, gpus=gpus, hardware=hardware, port=m.port)


def share_a_gpu(planned) -> bool:
    """Whether the planned members use a GPU in common (then they start one after the other)."""
    used = [{g.index for g in plan.gpus} for _, _, plan in planned]
    return len(used) == 2 and bool(used[0] & used[1])


def _does_not_fit(m: Member, plan, shown: bool) -> HardwareError:
    more = len(plan.problems) - 1
    place = "above" if shown else "in its plan (--dry-run)"
    also = f"; {more} more problem{'s' if more > 1 else ''} {place}" if more > 0 else ""
    where = f" (it would fit on {plan.suggestions[0]})" if plan.suggestions else ""
    return HardwareError(
        f"{m.name} ({m.profile}): {plan.verdict}{also}",
        f"run {m.name} on GPUs of its own{where} and pass its URL (--{m.name} http://HOST:PORT), "
        "or choose the GPUs with --flash-gpus and --pro-gpus",
    )


def _others(planned) -> str:
    return " and ".join(f"{m.name} ({len(plan.gpus)} GPUs)" for m, _, plan in planned) or "nothing"


def _check_shared(planned) -> None:
    """Two servers on one GPU (only when both were named with --*-gpus): vLLM takes its share of CUDA's
    total memory at start and refuses to start when less is free, so both shares must fit in what is
    free now."""
    if len(planned) < 2:
        return
    (_, _, pa), (_, _, pb) = planned
    share = pa.gpu_memory_utilization + pb.gpu_memory_utilization
    b_gpus = {g.index for g in pb.gpus}
    for g in pa.gpus:
        if g.index in b_gpus and share * g.memory_usable > g.memory_free:
            free = g.memory_free / g.memory_usable
            raise HardwareError(
                f"flash and pro share GPU {g.index} and plan to take {pa.gpu_memory_utilization:.0%} + "
                f"{pb.gpu_memory_utilization:.0%} of its memory; {free:.0%} is free",
                "give them separate GPUs (--flash-gpus, --pro-gpus), or lower one profile's "
                "serve.gpu_memory_utilization",
            )


class Pair:
    """The started members: start(), wait_ready(), a watcher for the serving time, stop()."""

    def __init__(self, specs: Sequence[tuple[str, object]], notify: Callable[[str, object], None]):
        from dsv4serve.serving.launch import Server

        self.servers = {name: Server(spec, lambda event, n=name: notify(n, event)) for name, spec in specs}
        self.died: tuple[str, int] | None = None  # (member, exit code) when one exited while serving

    def upstream(self, name: str):
        """The router's view of a started member: its local URL and served model name."""
        from dsv4serve.router.upstreams import Upstream

        server = self.servers[name]
        return Upstream(name, server.base_url, server.spec.served_model_name)

    def start(self, one_by_one: bool = False) -> None:
        """Start both and wait until both answer; else the first failure, the member named, both
        stopped (a Ctrl-C too). one_by_one: the second starts once the first is ready, for members on
        one GPU: vLLM sizes its KV cache from the memory that grew while it profiled, so another server
        loading on the same GPU at that time is counted as its own use (seen on an H200: two tiny
        servers started together at 0.3 each, one got "Available KV cache memory: -0.77 GiB")."""
        try:
            if one_by_one:
                for name in self.servers:
                    self._start([name])
            else:
                self._start(list(self.servers))
        except BaseException:
            self.stop()  # the other member's wait ends as its process does
            raise

    def _start(self, names: list[str]) -> None:
        for name in names:
            self.servers[name].start()  # in this (the main) thread: PR_SET_PDEATHSIG follows it
        pool = concurrent.futures.ThreadPoolExecutor(len(names))
        futures: dict = {}
        try:
            futures = {pool.submit(self.servers[n].wait_ready): n for n in names}
            for future in concurrent.futures.as_completed(futures):
                try:
                    future.result()
                except LaunchError as err:
                    raise LaunchError(f"{futures[future]}: {err.message}", err.hint) from None
        finally:
            if any(not f.done() for f in futures):
                self.stop()  # a failure or a signal: end the other wait by ending its process
            pool.shutdown(wait=True)

    def watch(self, on_death: Callable[[], None], poll_s: float = 0.5) -> threading.Event:
        """A thread that calls on_death() once a member exits by itself; set the event to end it."""
        done = threading.Event()

        def run() -> None:
            while not done.wait(poll_s):
                for name, server in self.servers.items():
                    code = server.proc.poll() if server.proc is not None else None
                    if code is not None:
                        self.died = (name, code)
                        on_death()
                        return

        threading.Thread(target=run, name="dsv4serve-pair-watch", daemon=True).start()
        return done

    def stop(self) -> None:
        """Stop both at once (each waits its own grace period), stop signals held meanwhile: a second
        Ctrl-C must not leave one half-stopped (the threads' own deferral works in the main one only)."""
        from dsv4serve.serving import procs

        threads = [threading.Thread(target=s.stop) for s in self.servers.values()]
        with procs.signals_deferred():
            for t in threads:
                t.start()
            for t in threads:
                t.join()


def start_members(planned, profile_dirs: Sequence[str], say: Callable[[str], None]) -> Pair:
    """Check the members' ports, fetch their weights, start them (one by one on a shared GPU) and
    wait until both answer; a failure or a stop signal (procs.Stopped) stops both first. say(line) is
    called from both members' threads, one call at a time."""
    from dsv4serve.serving import procs
    from dsv4serve.serving.prepare import log_path, prepare_launch

    say = _one_at_a_time(say)
    for m, _, _ in planned:  # before any weights are fetched or any server starts
        busy = procs.port_in_use("127.0.0.1", m.port)
        if busy:
            raise LaunchError(f"{m.name}: {busy}", f"pick another: --{m.name}-port {m.port + 10}")
    specs = []
    for m, _, plan in planned:
        gpus = gpu_list(plan.gpus) or None  # exactly the GPUs it was planned on
        _, spec = prepare_launch(m.profile, profile_dirs=profile_dirs, gpus=gpus, port=m.port)
        spec = dataclasses.replace(spec, log_path=log_path(f"{m.name}-{spec.served_model_name}"))
        on = f" GPUs {gpus}" if gpus else ""
        say(f"{m.name}: {m.profile} on {spec.host}:{spec.port}{on}, log {spec.log_path}")
        specs.append((m.name, spec))
    pair = Pair(specs, member_notify(say))
    with procs.stop_on_signals():
        pair.start(one_by_one=share_a_gpu(planned))  # stops both itself on any failure
    return pair


def _one_at_a_time(say: Callable[[str], None]) -> Callable[[str], None]:
    lock = threading.Lock()

    def locked(text: str) -> None:
        with lock:
            say(text)

    return locked


def member_notify(say: Callable[[str], None], progress_every_s: float = 10.0):
    """Launch events of both members as prefixed lines ("flash: loading weights (12 s)"); vLLM's own
    lines stay in each member's log file, progress is shown at most every progress_every_s."""
    from dsv4serve.redact import mask_text

    last_progress: dict[str, float] = {}

    def notify(name: str, event) -> None:
        text = mask_text(event.text)
        if event.kind == "progress":
            if event.elapsed_s - last_progress.get(name, -progress_every_s) < progress_every_s:
                return
            last_progress[name] = event.elapsed_s
        if event.kind in ("phase", "progress") and text != "ready":
            say(f"{name}: {text} ({event.elapsed_s:.0f} s)")
        elif event.kind == "started":
            say(f"{name}: {text}")
        elif event.kind == "ready":
            say(f"{name}: ready at {text} in {event.elapsed_s:.1f} s")
        elif event.kind in ("stopping", "stopped", "warning"):
            say(f"{name}: {'warning: ' if event.kind == 'warning' else ''}{text}")

    return notify


def serve_with(pair: Pair, serve: Callable[[], None]) -> None:
    """Run the router (serve() returns on SIGINT/SIGTERM) while both members run; stop them after.

    A member that exits while the router serves stops the router too (SIGTERM to this process, which
    uvicorn turns into a graceful stop): a router without its Flash answers nothing, and a silently
    missing Pro would send every request to Flash. Raises LaunchError naming the member and its log."""
    import os
    import signal

    done = pair.watch(lambda: os.kill(os.getpid(), signal.SIGTERM))
    try:
        serve()
    finally:
        done.set()
        pair.stop()
    if pair.died is not None:
        name, code = pair.died
        server = pair.servers[name]
        log = f"; its log: {server.spec.log_path}" if server.spec.log_path else ""
        raise LaunchError(
            f"{name} (vLLM) exited with code {code} while the router served; the router stopped",
            f"see why in its last lines{log}",
        )
