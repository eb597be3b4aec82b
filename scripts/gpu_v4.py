"""DeepSeek-V4 checks on the H200 machine (issue 10 parts 3 and 5), one subcommand per device call.

Run from the project root after the recipe's setup (../shared/recipes/vllm-gpu-v4/README.md), each
well inside a device call's 10 minutes, writing raw data (JSON, logs) to OUT:

    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_v4.py smoke $OUT --gpus 1
    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_v4.py smoke $OUT --gpus 2
    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_v4.py sigkill $OUT --gpus 2
    PYTHONPATH=$PWD:$PYTHONPATH python3 scripts/gpu_v4.py bench $OUT --gpus 1 [--cold]

smoke: `up PROFILE --gpus N` as a user runs it, then a plain, a reasoning (thinking), a tools and a
streaming request; vLLM's memory lines, NVML per GPU while ready, the plan's JSON, the phase times;
SIGINT (--stop kill: SIGKILL of dsv4serve), and how long until the GPUs are free. sigkill: the same
start without the requests, then SIGKILL of dsv4serve itself.
bench: a warm `up` against a bare `vllm serve` with the same argv and environment (JIT caches
included), alternating; --cold first empties the JIT cache (one cold `up`).
Caches and the generated checkpoint live under XDG_CACHE_HOME (default /tmp/gpuv4/xdg here: /tmp
survives between calls while the machine stays warm); /tmp/gpuv4/state.json keeps the cold figures.
NAME.partial.json is rewritten at each stage, so a call cut at its time limit still returns data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_validate as gv  # noqa: E402 - nvml_used, vllm_pids, parse_figures: one copy of each

CLI = [sys.executable, "-m", "dsv4serve"]
WORK = Path("/tmp/gpuv4")
gv.LOG_FIGURES.update(  # vLLM 0.26 lines beyond gpu_validate's memory figures
    {
        "init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)",
        "loading_weights_s": r"Loading weights took ([\d.]+) seconds",
        "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs",
    }
)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local traffic, no proxy


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cache_root() -> Path:
    from dsv4serve.engines.vllm.jit_cache import default_root

    return default_root()


def dir_stats(path: Path) -> dict:
    files = [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
    return {"files": len(files), "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1)}


def post(port: int, body: dict, timeout: float = 300) -> tuple[int, dict | str, float]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    t0 = time.monotonic()
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            data = resp.read()
            return resp.status, json.loads(data), round(time.monotonic() - t0, 3)
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")[:2000], round(time.monotonic() - t0, 3)


def stream(port: int, body: dict, timeout: float = 300) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}).encode(),
        {"Content-Type": "application/json"},
    )
    t0, first, chunks, usage, text = time.monotonic(), None, 0, None, []
    with _OPENER.open(req, timeout=timeout) as resp:
        for raw in resp:
            if not raw.startswith(b"data: {"):
                continue
            chunk = json.loads(raw[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content") or (choice.get("delta") or {}).get(
                    "reasoning"
                )
                if piece:
                    first = first or time.monotonic()
                    chunks += 1
                    text.append(piece)
    end = time.monotonic()
    tokens = (usage or {}).get("completion_tokens", chunks)
    return {
        "status": 200,
        "chunks": chunks,
        "completion_tokens": tokens,
        "ttft_s": round(first - t0, 3) if first else None,
        "tokens_per_s": round((tokens - 1) / (end - first), 1)
        if first and end > first and tokens > 1
        else None,
        "text": "".join(text)[:300],
    }


def requests(port: int, model: str) -> dict:
    """The four requests of issue 10 part 3; each recorded even when another fails."""
    hello = [{"role": "user", "content": "What is 2 + 2? Answer briefly."}]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ]
    out: dict = {}
    cases = {
        "plain": {"model": model, "messages": hello, "max_tokens": 16, "min_tokens": 4},
        "reasoning": {
            "model": model,
            "messages": hello,
            "max_tokens": 32,
            "min_tokens": 8,
            "chat_template_kwargs": {"thinking": True},
        },
        "tools": {
            "model": model,
            "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": tools,
            "tool_choice": "auto",
            "max_tokens": 32,
        },
    }
    for name, body in cases.items():
        try:
            status, data, wall = post(port, body)
            entry: dict = {"status": status, "wall_s": wall}
            if isinstance(data, dict):
                msg = data["choices"][0]["message"]
                entry.update(
                    usage=data.get("usage"),
                    finish_reason=data["choices"][0].get("finish_reason"),
                    content=(msg.get("content") or "")[:300],
                    reasoning=(msg.get("reasoning") or "")[:300],
                    reasoning_content=(msg.get("reasoning_content") or "")[:300],
                    tool_calls=msg.get("tool_calls"),
                )
            else:
                entry["error"] = data
            out[name] = entry
        except Exception as err:  # noqa: BLE001 - keep the other requests' evidence
            out[name] = {"error": f"{type(err).__name__}: {err}"}
        log(f"request {name}: {json.dumps(out[name])[:300]}")
    try:
        out["stream"] = stream(port, {"model": model, "messages": hello, "max_tokens": 32, "min_tokens": 8})
    except Exception as err:  # noqa: BLE001
        out["stream"] = {"error": f"{type(err).__name__}: {err}"}
    log(f"request stream: {json.dumps(out['stream'])[:300]}")
    try:  # decode speed: 256 tokens, EOS ignored, so eager vs CUDA graphs compare like for like
        body = {"model": model, "messages": hello, "max_tokens": 256, "ignore_eos": True}
        out["decode"] = stream(port, {**body, "min_tokens": 256})
    except Exception as err:  # noqa: BLE001
        out["decode"] = {"error": f"{type(err).__name__}: {err}"}
    log(f"request decode: {json.dumps(out['decode'])[:200]}")
    return out


class Up:
    """`dsv4serve up PROFILE --gpus N --json` as a child process: its ready JSON, its stderr in a file."""

    def __init__(self, out: Path, name: str, profile: str, gpus: str, port: int, timeout: float, extra=()):
        self.stderr = out / f"{name}.stderr.log"
        # cpu: the tiny profile on the CPU build, a dry run of this script without a GPU
        where = ["--gpus", gpus] if gpus != "cpu" else []
        argv = [*CLI, "up", profile, *where, "--port", str(port), "--json", "--timeout", str(timeout)]
        self.argv = argv + list(extra)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self.stderr.open("w"), text=True
        )
        self.ready: dict | None = None

    def wait_ready(self) -> dict | None:
        """The ready document up prints on stdout (indented JSON: read up to its closing brace)."""
        lines: list[str] = []
        for line in self.proc.stdout:
            lines.append(line)
            if line.rstrip() != "}":
                continue
            doc, lines = json.loads("".join(lines)), []
            if doc.get("event") == "ready":
                self.ready = {**doc, "wall_ready_s": round(time.monotonic() - self.t0, 2)}
                return self.ready
        return None

    def stop(self, sig: int = signal.SIGINT) -> int | str:
        """Signal dsv4serve (it stops vLLM's group); SIGKILL after 60 s (its watchdog then does)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "SIGKILL after 60 s"

    def __enter__(self) -> Up:
        return self

    def __exit__(self, *exc) -> None:  # whatever failed, no server outlives the step
        if self.proc.poll() is None:
            self.stop()

    def tail(self, n: int = 30) -> list[str]:
        return self.stderr.read_text(errors="replace").splitlines()[-n:]


def nvml_used() -> dict[int, int]:
    """Used bytes per GPU index; {} without NVML (the CPU dry run of this script)."""
    try:
        return gv.nvml_used()
    except Exception:  # noqa: BLE001 - pynvml missing or no driver
        return {}


def plan_json(out: Path, profile: str, gpus: str) -> dict:
    res = gv.run(
        [*CLI, "plan", profile, *(["--gpus", gpus] if gpus != "cpu" else []), "--json"],
        out,
        f"plan-{Path(profile).stem}-{gpus.replace(',', '_')}",  # a path names its file by its stem
    )
    return json.loads(res["stdout"]) if res["stdout"].strip().startswith("{") else {"rc": res["rc"]}


def plan_gpus(plan: dict) -> list[int]:
    return [int(g["index"]) for g in plan.get("gpus", [])]


def durations(phases: dict) -> dict:
    """Seconds spent in each phase, from the phase start times (the last one ends at "ready")."""
    names = list(phases)
    spans = {"before first phase": phases[names[0]]} if names else {}
    spans.update({a: round(phases[b] - phases[a], 2) for a, b in zip(names, names[1:], strict=False)})
    return spans


def serve_and_check(out: Path, args, name: str, stop_sig: int) -> dict:
    """Start `up`, measure while ready, stop it with stop_sig (sent to dsv4serve), time the release."""
    plan = plan_json(out, args.profile, args.gpus)
    gpus = plan_gpus(plan)
    baseline = nvml_used()
    cache_before = dir_stats(cache_root())
    entry: dict = {"gpus": gpus, "plan": plan, "baseline_used": {g: baseline[g] for g in gpus}}
    entry["cache_before"] = cache_before
    with Up(out, name, args.profile, args.gpus, args.port, args.timeout, args.extra) as up:
        entry["argv"] = up.argv
        ready = entry["ready"] = up.wait_ready()
        if ready is None:
            entry["up_rc"] = up.stop()
            entry["stderr_tail"] = up.tail()
            return entry
        measure_ready(entry, ready, up, args, gpus, baseline, stop_sig)
    logf = Path(ready["log"])
    if logf.exists():
        shutil.copy(logf, out / f"{name}.vllm.log")
        entry["vllm_log_figures"] = gv.parse_figures(logf.read_text(errors="replace"))
    entry["cache_after"] = dir_stats(cache_root())
    return entry


def measure_ready(
    entry: dict, ready: dict, up: Up, args, gpus: list[int], baseline: dict, stop_sig: int
) -> None:
    """NVML while ready, the requests, then the stop and the time until the GPUs are free."""
    plan, name = entry["plan"], up.stderr.name
    log(f"{name}: ready in {ready['wall_ready_s']} s (server {ready['ready_s']} s): {ready.get('phases')}")
    entry["phase_durations"] = durations(ready.get("phases") or {})
    used = nvml_used()
    entry["nvml_used_ready"] = {g: used[g] for g in gpus}
    entry["nvml_delta_gib"] = {g: round((used[g] - baseline[g]) / gv.GIB, 3) for g in gpus}
    expected = {
        int(r["device"]): r.get("expected_used") for r in plan.get("memory", []) if r["device"].isdigit()
    }
    entry["expected_over_measured"] = {
        g: round(expected[g] / (used[g] - baseline[g]), 4)
        for g in gpus
        if expected.get(g) and used[g] > baseline[g]
    }
    partial(up, entry)
    if not args.no_requests:
        entry["requests"] = requests(args.port, ready["model"])
        partial(up, entry)
    t0 = time.monotonic()
    entry["stop_signal"] = signal.Signals(stop_sig).name
    entry["up_rc"] = up.stop(stop_sig)
    entry["up_exit_s"] = round(time.monotonic() - t0, 2)
    entry.update(released(gpus, baseline, ready["pid"], t0, args.port))


def partial(up: Up, entry: dict) -> None:
    path = up.stderr.with_name(up.stderr.name.replace(".stderr.log", ".partial.json"))
    path.write_text(json.dumps(entry, indent=1, default=str))


def released(gpus: list[int], baseline: dict, pgid: int, t0: float, port: int, limit: float = 90) -> dict:
    """Seconds from the stop until vLLM's group is gone and until NVML shows each GPU back at baseline."""
    from dsv4serve.serving import procs

    res: dict = {"group_gone_s": None, "nvml_released_s": None}
    while time.monotonic() - t0 < limit:
        now = round(time.monotonic() - t0, 2)
        if res["group_gone_s"] is None and not procs.group_members(pgid):
            res["group_gone_s"] = now
        used = nvml_used()
        if res["nvml_released_s"] is None and all(used[g] <= baseline[g] + 512 * 2**20 for g in gpus):
            res["nvml_released_s"] = now
        if res["group_gone_s"] is not None and res["nvml_released_s"] is not None:
            break
        time.sleep(0.1)
    # Only the group this step started: other people's vLLM processes are none of our business.
    res["left_pids"] = procs.group_members(pgid)
    res["port_free"] = procs.port_in_use("127.0.0.1", port) is None
    if res["left_pids"]:  # never leave a stray server for the next call
        procs.signal_group(pgid, signal.SIGKILL)
    return res


def cmd_smoke(out: Path, args, state: dict) -> dict:
    key = f"smoke-tp{args.gpus.replace(',', '_')}"
    entry = serve_and_check(out, args, key, signal.SIGKILL if args.stop == "kill" else signal.SIGINT)
    if entry.get("cache_before", {}).get("files") == 0 and entry.get("ready"):  # a cold start: keep it
        state.setdefault("cold", {})[args.gpus] = {"from": key, **cold_record(entry)}
    return {key: entry}


def cmd_sigkill(out: Path, args, state: dict) -> dict:
    args.no_requests = True
    return {f"sigkill-tp{args.gpus}": serve_and_check(out, args, f"sigkill-tp{args.gpus}", signal.SIGKILL)}


def cold_record(entry: dict) -> dict:
    ready = entry["ready"]
    return {
        "wall_ready_s": ready["wall_ready_s"],
        "server_ready_s": ready["ready_s"],
        "phases": ready.get("phases"),
        "phase_durations": entry.get("phase_durations"),
        "cache_after": entry.get("cache_after"),
    }


def bare_round(out: Path, args, name: str) -> dict:
    """`vllm serve` with up's own argv and env (prepare_launch), ready by the same test as up's."""
    from dsv4serve.engines.vllm.startup_log import OutputReader
    from dsv4serve.serving.prepare import prepare_launch

    gpus = None if args.gpus == "cpu" else args.gpus
    _, spec = prepare_launch(args.profile, gpus=gpus, port=args.port, progress=False, warmup=args.warmup)
    check_port(args.port)  # a server left on the port would answer for bare vLLM
    tmp = tempfile.mkdtemp(prefix="gpuv4-bare-")
    env = {**os.environ, **spec.env, "TMPDIR": tmp, "PYTHONUNBUFFERED": "1"}
    reader, logf = OutputReader(), (out / f"{name}.log").open("wb")
    t0 = time.monotonic()
    proc = subprocess.Popen(
        list(spec.argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp,
        start_new_session=True,
    )

    def drain() -> None:  # the same phase reader as up's, timed from the bare start
        while chunk := proc.stdout.read1(65536):
            logf.write(chunk)
            reader.feed(chunk, time.monotonic() - t0)

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    ready_s = None
    try:
        while time.monotonic() - t0 < args.timeout and proc.poll() is None:
            if answers(args.port, spec.served_model_name):
                ready_s = round(time.monotonic() - t0, 2)
                break
            time.sleep(0.2)
    finally:
        from dsv4serve.serving import procs

        procs.signal_group(proc.pid, signal.SIGTERM)
        if not procs.wait_group_gone(proc.pid, 20):
            procs.signal_group(proc.pid, signal.SIGKILL)
            procs.wait_group_gone(proc.pid, 5)
        proc.wait()
        thread.join(5)
        logf.close()
        shutil.rmtree(tmp, ignore_errors=True)
    phases = {**reader.tracker.phase_times, **({"ready": ready_s} if ready_s else {})}
    return {"ready_s": ready_s, "phases": phases, "phase_durations": durations(phases), "rc": proc.returncode}


def check_port(port: int) -> None:
    from dsv4serve.serving import procs

    if busy := procs.port_in_use("127.0.0.1", port):
        raise RuntimeError(f"{busy}: stop what listens there, or pass --port")


def answers(port: int, model: str) -> bool:
    """/health 200, then a one-token completion: the launcher's own readiness test."""
    base = f"http://127.0.0.1:{port}"
    try:
        with _OPENER.open(base + "/health", timeout=2) as resp:
            if resp.status != 200:
                return False
        body = json.dumps({"model": model, "prompt": "ready?", "max_tokens": 1}).encode()
        req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
        with _OPENER.open(req, timeout=60) as resp:
            return bool(json.loads(resp.read()).get("choices"))
    except (OSError, ValueError):
        return False


def up_round(out: Path, args, name: str) -> dict:
    with Up(out, name, args.profile, args.gpus, args.port, args.timeout, args.extra) as up:
        ready = up.wait_ready()
        rc = up.stop()
    if ready is None:
        return {"ready_s": None, "rc": rc, "stderr_tail": up.tail()}
    phases = ready.get("phases") or {}
    return {
        "wall_ready_s": ready["wall_ready_s"],
        "ready_s": ready["ready_s"],
        "phases": phases,
        "phase_durations": durations(phases),
        "rc": rc,
    }


def cmd_bench(out: Path, args, state: dict) -> dict:
    res: dict = {"cache_root": str(cache_root())}
    if args.cold:
        shutil.rmtree(cache_root(), ignore_errors=True)
        cold = up_round(out, args, "bench-cold-up")
        cold["cache_after"] = dir_stats(cache_root())
        res["cold"] = cold
        if cold.get("ready_s"):
            state.setdefault("cold", {})[args.gpus] = {
                "from": "bench --cold",
                "server_ready_s": cold["ready_s"],
                **cold,
            }
        log(f"cold up: {json.dumps(cold)[:400]}")
    res["cache_before_warm"] = dir_stats(cache_root())
    rounds = []
    for r in range(args.rounds):
        for kind in ("up", "bare"):
            entry = (up_round if kind == "up" else bare_round)(out, args, f"bench-{kind}-{r}")
            log(f"round {r + 1} {kind}: {json.dumps(entry)[:400]}")
            rounds.append({"kind": kind, **entry})
            time.sleep(2)  # the driver frees the last server's memory
    res["rounds"] = rounds
    # up's clock is the user's: from `dsv4serve up` to its ready line (planning and checks included);
    # bare's from its Popen. Both end at the same readiness test (/health, then a one-token completion).
    warm = [e["wall_ready_s"] for e in rounds if e["kind"] == "up" and e.get("ready_s")]
    bare = [e["ready_s"] for e in rounds if e["kind"] == "bare" and e.get("ready_s")]
    cold = (state.get("cold") or {}).get(args.gpus)
    summary: dict = {"cold": cold and {k: cold.get(k) for k in ("from", "wall_ready_s", "server_ready_s")}}
    if warm and bare:
        summary.update(warm_up_s=min(warm), bare_s=min(bare), up_over_bare=round(min(warm) / min(bare), 3))
    if warm and cold and cold.get("wall_ready_s"):
        summary["warm_over_cold"] = round(min(warm) / cold["wall_ready_s"], 3)  # goal <= 0.5
    res["summary"] = summary
    log(f"bench summary: {json.dumps(summary)}")
    return {f"bench-tp{args.gpus}": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["smoke", "sigkill", "bench"])
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="tiny-v4")
    ap.add_argument("--gpus", default="1")
    ap.add_argument("--port", type=int, default=8310)
    ap.add_argument("--timeout", type=float, default=540, help="readiness deadline per start (s)")
    ap.add_argument("--warmup", choices=["relax", "full", "skip"], help="passed to up as --warmup")
    ap.add_argument("--rounds", type=int, default=1, help="bench: warm up/bare pairs")
    ap.add_argument("--cold", action="store_true", help="bench: one cold up first (empties the JIT cache)")
    ap.add_argument("--no-requests", action="store_true")
    ap.add_argument(
        "--stop", choices=["int", "kill"], default="int", help="smoke: SIGINT or SIGKILL dsv4serve"
    )
    ap.add_argument("--cuda-graphs", action="store_true", help="passed to up: CUDA graphs instead of eager")
    a = ap.parse_args()
    a.extra = (["--warmup", a.warmup] if a.warmup else []) + (["--cuda-graphs"] if a.cuda_graphs else [])
    os.environ.setdefault("XDG_CACHE_HOME", str(WORK / "xdg"))
    a.out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(parents=True, exist_ok=True)
    state_path = WORK / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    commands = {"smoke": cmd_smoke, "sigkill": cmd_sigkill, "bench": cmd_bench}
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        "xdg": os.environ["XDG_CACHE_HOME"],
    }
    t0 = time.monotonic()
    try:
        check_port(a.port)
        results.update(commands[a.command](a.out, a, state))
    except Exception as err:  # noqa: BLE001 - what was measured still goes back
        results["error"] = f"{type(err).__name__}: {err}"
        log(f"failed: {err!r}")
    finally:
        results["wall_s"] = round(time.monotonic() - t0, 1)
        state_path.write_text(json.dumps(state, indent=1))
        tag = Path(a.profile).stem + ("-graphs" if a.cuda_graphs else "")
        name = f"{a.command}-{tag}-{a.gpus.replace(',', '_')}"
        (a.out / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
        (a.out / "state.json").write_text(json.dumps(state, indent=1))
        print(json.dumps(results, default=str)[-4000:])


if __name__ == "__main__":
    main()
