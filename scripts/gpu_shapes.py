"""DeepSeek-V4's true per-layer shapes on one H200 (issue 20): plan against vLLM and NVML, eager against
CUDA graphs, and the rounds after ready. One subcommand per step, each well inside a device call's
10 minutes; a server started in one call keeps running into the next (setsid), so a cold start longer
than a call is started in one and measured in the next.

    python3 scripts/gpu_shapes.py gen flash 4            # /tmp/gs/ckpt/flash-4l + its profile
    python3 scripts/gpu_shapes.py start NAME PROFILE [-- up options]   # setsid `dsv4serve up`, returns
    python3 scripts/gpu_shapes.py measure NAME OUT --budget 420 [--keep]  # wait, measure, stop
    python3 scripts/gpu_shapes.py stop NAME

Everything lives under /tmp/gs (XDG_CACHE_HOME too: the JIT caches and dsv4serve's logs), which
survives between calls while the machine stays warm. `measure` writes OUT/NAME.json (rewritten after
each stage, so a call cut short still returns data) and OUT/NAME.vllm.log.xz. What it measures:
- the plan (`dsv4serve plan PROFILE --gpus 1 --json`) and vLLM's own figures from its log (weights,
  activation peak, non-torch memory, KV pool, KV tokens, graph memory);
- NVML used while ready, against the idle reading before the start;
- decode: one stream of 256 tokens (time to first token, tokens/s) and 64 streams of 128 tokens;
- rounds of 1, 8 and 64 concurrent requests after ready, three times: a round much slower than the
  same round later is a request waiting on kernel compilation.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

WORK = Path(os.environ.get("GS_WORK", "/tmp/gs"))
CLI = [sys.executable, "-m", "dsv4serve"]
PORT = 8123
GPUS = os.environ.get("GS_GPUS", "1")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# vLLM 0.26's lines: the memory profile ("Memory profiling takes ... model weights take X GiB;
# non_torch_memory takes X GiB; PyTorch activation peak memory takes X GiB; the rest of the memory
# reserved for KV Cache is X GiB"), the pool, and the graphs.
FIGURES = {
    "weights_gib": r"Model loading took ([\d.]+) GiB",
    "profile_weights_gib": r"model weights take ([\d.]+) ?GiB",
    "non_torch_gib": r"non_torch_memory takes ([\d.]+) ?GiB",
    "activation_peak_gib": r"activation peak memory takes ([\d.]+) ?GiB",
    "kv_rest_gib": r"reserved for KV Cache is ([\d.]+) ?GiB",
    "kv_cache_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "kv_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "max_concurrency": r"Maximum concurrency for [\d,]+ tokens per request: ([\d.]+)x",
    "graph_capture_s": r"Graph capturing finished in ([\d.]+) secs",
    "graph_gib": r"Graph capturing finished in [\d.]+ secs, took ([\d.]+) GiB",
    "init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+)",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def env() -> dict:
    return {
        **os.environ,
        "XDG_CACHE_HOME": str(WORK / "xdg"),
        "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}",
    }


def nvml_used() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout.strip()
        return int(out.splitlines()[0]) * 2**20
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def cmd_gen(args) -> int:
    from dsv4serve.weights import v4ckpt
    from dsv4serve.weights.v4ckpt.profile import write_profile

    spec = v4ckpt.cut(v4ckpt.get_spec(args.shape), args.layers)
    where = Path(args.dir or WORK / "ckpt") / spec.name
    t0 = time.monotonic()
    written = v4ckpt.make(spec, where, jobs=os.cpu_count() or 1)
    profile = write_profile(spec, written.path, WORK / f"{spec.name}.yaml")
    log(f"{spec.name}: {written.weights_bytes:,} B in {time.monotonic() - t0:.1f} s; profile {profile}")
    return 0


def _state(name: str) -> Path:
    return WORK / f"{name}.state.json"


def cmd_start(args) -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    idle = nvml_used()
    gpus = ["--gpus", GPUS] if GPUS else []  # GS_GPUS= (empty): a CPU dry run of this script with tiny
    argv = [*CLI, "up", args.profile, *gpus, "--port", str(PORT), "--json", "--timeout", "3000", *args.up]
    plan = _plan(args.profile, argv)  # now, while the GPU is idle: beside the server it would see it full
    out = (WORK / f"{args.name}.up.log").open("w")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env(), start_new_session=True)
    _state(args.name).write_text(
        json.dumps({"pid": proc.pid, "argv": argv, "t0": time.time(), "idle_used": idle, "plan": plan})
    )
    log(f"started {args.name}: pid {proc.pid}: {' '.join(argv)}")
    return 0


def _plan(profile: str, argv: list[str]) -> dict:
    """`dsv4serve plan` of the start about to happen: {"plan": ...} or {"plan_error": ...}."""
    gpus = ["--gpus", GPUS] if GPUS else []
    plan = subprocess.run(
        [*CLI, "plan", profile, *gpus, "--json", *_plan_flags(argv)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    try:
        return {"plan": json.loads(plan.stdout)}
    except ValueError:
        return {"plan_error": (plan.stdout + plan.stderr)[-2000:]}


def _ready_doc(name: str) -> dict | None:
    text = (WORK / f"{name}.up.log").read_text(errors="replace")
    for m in re.finditer(r"^\{\n.*?^\}$", text, re.S | re.M):
        try:
            doc = json.loads(m.group(0))
        except ValueError:
            continue
        if doc.get("event") == "ready":
            return doc
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _vllm_log() -> Path | None:
    logs = sorted((WORK / "xdg" / "dsv4serve" / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def figures(text: str) -> dict:
    found = {}
    for key, pattern in FIGURES.items():
        hits = re.findall(pattern, text)
        if hits:
            found[key] = float(hits[-1].replace(",", ""))
    return found


def _post(body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    with _OPENER.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def stream_decode(model: str, tokens: int) -> dict:
    body = {
        "model": model,
        "prompt": "Count slowly: one, two,",
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v1/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    t0, first, n = time.monotonic(), None, 0
    with _OPENER.open(req, timeout=600) as resp:
        for raw in resp:
            if raw.startswith(b"data: {"):
                chunk = json.loads(raw[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    first = first or time.monotonic()
                    n += 1
    end = time.monotonic()
    return {
        "ttft_s": round(first - t0, 3) if first else None,
        "chunks": n,
        "tokens_per_s": round((tokens - 1) / (end - first), 2) if first and end > first else None,
    }


def concurrent_decode(model: str, streams: int, tokens: int) -> dict:
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            _post(
                {
                    "model": model,
                    "prompt": f"stream {i}: tell a story",
                    "max_tokens": tokens,
                    "ignore_eos": True,
                }
            )
        except OSError as err:
            errors.append(str(err))

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    return {
        "streams": streams,
        "tokens": tokens,
        "wall_s": round(took, 2),
        "tokens_per_s": round(streams * tokens / took, 1),
        "errors": len(errors),
    }


def after_ready_rounds(model: str, repeats: int = 3) -> list[dict]:
    from dsv4serve.serving.warm import run_round

    out = []
    for r in range(repeats):
        for c in (1, 8, 64):
            try:
                took = run_round(
                    f"http://127.0.0.1:{PORT}", model, c, 64, 900, start=100_000 * (r + 1) + c * 100
                )
                out.append({"repeat": r, "concurrency": c, "s": round(took, 3)})
            except OSError as err:
                out.append({"repeat": r, "concurrency": c, "error": str(err)[:300]})
            log(f"round {r} x{c}: {out[-1]}")
    return out


def cmd_measure(args) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    state = json.loads(_state(args.name).read_text())
    result: dict = {"name": args.name, "argv": state["argv"], "idle_used": state["idle_used"]}
    path = args.out / f"{args.name}.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=1, default=str))

    deadline = time.monotonic() + args.budget
    doc = None
    while time.monotonic() < deadline:
        doc = _ready_doc(args.name)
        if doc or not _alive(state["pid"]):
            break
        time.sleep(5)
    result["ready"] = doc
    result["wall_since_start_s"] = round(time.time() - state["t0"], 1)
    vlog = _vllm_log()
    if vlog:
        result["vllm"] = figures(vlog.read_text(errors="replace"))
    if not doc:
        result["error"] = "not ready" if _alive(state["pid"]) else "up exited"
        result["up_tail"] = (WORK / f"{args.name}.up.log").read_text(errors="replace")[-4000:]
        save()
        log(f"{args.name}: {result['error']}")
        _keep_log(args, vlog, done=False)  # the server starts on: a later measure reads the same log
        return 1
    result.update(state.get("plan", {}))
    result["nvml_used_ready"] = nvml_used()
    save()
    profile = state["argv"][state["argv"].index("up") + 1]
    model = doc.get("model") or doc.get("served_model_name") or profile
    result["model"] = model
    try:
        result["decode_1"] = [stream_decode(model, 256) for _ in range(2)]
        save()
        result["decode_64"] = concurrent_decode(model, 64, 128)
        save()
        result["rounds"] = after_ready_rounds(model)
    except OSError as err:
        result["request_error"] = str(err)[:500]
    result["nvml_used_after"] = nvml_used()
    save()
    if not args.keep:
        result["stop"] = _stop(args.name)
        save()
    _keep_log(args, vlog)
    brief = {k: result.get(k) for k in ("vllm", "nvml_used_ready", "decode_64")}
    log(f"{args.name}: {json.dumps(brief)[:600]}")
    return 0


def _plan_flags(argv: list[str]) -> list[str]:
    flags = [a for a in ("--cuda-graphs", "--enforce-eager") if a in argv]
    return flags + (argv[argv.index("--") :] if "--" in argv else [])


def _keep_log(args, vlog: Path | None, done: bool = True) -> None:
    if vlog:
        (args.out / f"{args.name}.vllm.log.xz").write_bytes(lzma.compress(vlog.read_bytes()))
        if done:
            vlog.rename(vlog.with_suffix(f".{args.name}.done"))  # the next server's log is the newest


def _stop(name: str) -> dict:
    state = json.loads(_state(name).read_text())
    t0 = time.monotonic()
    try:
        os.kill(state["pid"], signal.SIGINT)
    except OSError:
        return {"already": "gone"}
    while _alive(state["pid"]) and time.monotonic() - t0 < 90:
        time.sleep(0.5)
    return {
        "stopped_s": round(time.monotonic() - t0, 2),
        "alive": _alive(state["pid"]),
        "nvml_used": nvml_used(),
    }


def cmd_stop(args) -> int:
    log(json.dumps(_stop(args.name)))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("shape")
    g.add_argument("layers", type=int)
    g.add_argument("--dir")
    s = sub.add_parser("start")
    s.add_argument("name")
    s.add_argument("profile")
    s.add_argument("up", nargs=argparse.REMAINDER)
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("out", type=Path)
    m.add_argument("--budget", type=float, default=420)
    m.add_argument("--keep", action="store_true")
    t = sub.add_parser("stop")
    t.add_argument("name")
    args = ap.parse_args()
    if args.cmd == "start" and args.up[:1] == ["--"]:
        args.up = args.up[1:]
    return {"gen": cmd_gen, "start": cmd_start, "measure": cmd_measure, "stop": cmd_stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
