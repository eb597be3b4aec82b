"""startup_log: vLLM's start-up output split on CR and LF, its phases, and rate-limited progress.

The log text is vLLM 0.26.0's own format strings (file:line of each quoted below), laid out the way its
decorate_logs() prefixes a process's output, with the progress bars drawn by the real tqdm.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest
from tqdm import tqdm

from dsv4serve.engines.vllm.startup_log import (
    PHASE_NAMES,
    LineSplitter,
    OutputReader,
    Segment,
    StartupTracker,
    exit_hint,
)
from dsv4serve.service.console import terminal_notify
from dsv4serve.serving.launch import Server
from dsv4serve.serving.spec import Event, LaunchSpec

# No tqdm monitor thread: a thread that leaves SIGINT unblocked would take the signals that
# test_launch.py's signal tests aim at the main thread.
tqdm.monitor_interval = 0

LOG = "(EngineCore pid=4242) INFO 11-28 10:{:02d}:{:02d} [{}] {}\n"


class VllmStream:
    """A text stream that prefixes each new line like vLLM's utils/system_utils.py _add_prefix, and
    remembers when (on a fake clock) each write happened."""

    encoding = "utf-8"  # tqdm then draws its unicode blocks, multi-byte in UTF-8

    def __init__(self, prefix: str = "(EngineCore pid=4242) "):
        self.prefix = prefix
        self.start_new_line = True
        self.now = 0.0
        self.writes: list[tuple[str, float]] = []

    def write(self, s: str) -> None:  # the algorithm of vLLM's write_with_prefix
        if not s:
            return
        if self.start_new_line:
            self._raw(self.prefix)
        idx = 0
        while (nxt := s.find("\n", idx)) != -1:
            nxt += 1
            self._raw(s[idx:nxt])
            if nxt == len(s):
                self.start_new_line = True
                return
            self._raw(self.prefix)
            idx = nxt
        self._raw(s[idx:])
        self.start_new_line = False

    def _raw(self, s: str) -> None:
        self.writes.append((s, self.now))

    def flush(self) -> None:
        pass

    def log(self, where: str, message: str, dt: float = 0.5) -> None:
        self.now += dt
        minutes, seconds = divmod(int(self.now), 60)
        self.write(LOG.format(minutes % 60, seconds, where, message))

    def bar(self, desc: str, total: int, step_s: float, **kwargs) -> None:
        """A real tqdm bar redrawn once per update, step_s apart on the fake clock."""
        with tqdm(total=total, desc=desc, file=self, mininterval=0, miniters=1, ncols=100, **kwargs) as b:
            for _ in range(total):
                self.now += step_s
                b.update(1)


def cold_v4_start(eager: bool = True) -> VllmStream:
    """What a cold DeepSeek-V4 start at TP 1 prints, in vLLM 0.26.0's order and words."""
    out = VllmStream()
    out.log("gpu_model_runner.py:5251", "Starting to load model /models/tiny-v4...")
    out.bar(  # model_loader/weight_utils.py:634 _BAR_FORMAT (ends in a newline of its own)
        "Loading safetensors checkpoint shards",
        46,
        0.4,
        bar_format="{desc}: {percentage:3.0f}% Completed | {n_fmt}/{total_fmt} [{elapsed}<{remaining}, "
        "{rate_fmt}]\n",
    )
    out.log("default_loader.py:431", "Loading weights took 18.42 seconds")
    out.log("gpu_model_runner.py:5348", "Model loading took 74.33 GiB memory and 19.104 seconds")
    out.now += 1
    for name in ("mhc_pre_big_fuse", "mhc_post", "hc_head_op"):  # tilelang 0.1.9 jit/kernel.py:133
        out.write(
            f"2026-11-28 10:00:{int(out.now) % 60:02d}  [TileLang:tilelang.jit.kernel:INFO] (kernel.py:133): "
            f"TileLang begins to compile kernel `{name}` with `out_idx=None`\n"
        )
        out.now += 10
    out.log("gpu_worker.py:560", "Available KV cache memory: 44.05 GiB")
    out.log("kv_cache_utils.py:2177", "GPU KV cache size: 2,332,473 tokens")
    out.log("kv_cache_utils.py:2179", "Maximum concurrency for 65,536 tokens per request: 35.59x")
    out.log(
        "deepseek_v4_mhc_warmup.py:197",
        "Warming up DeepSeek V4 mHC TileLang kernels for token sizes: [1, 2, 4, 8, 16]",
    )
    out.log("deepseek_v4_mhc_warmup.py:205", "DeepSeek V4 mHC TileLang warmup finished in 31.20 seconds.")
    out.bar("DeepGEMM warmup", 1131, 0.254)  # deep_gemm_warmup.py: tqdm(total=total, desc=...)
    if not eager:
        out.bar("Capturing CUDA graphs (decode, FULL)", 51, 0.1)
        out.log("gpu_model_runner.py:6845", "Graph capturing finished in 5 secs, took 0.41 GiB")
    out.log("core.py:348", "init engine (profile, create kv cache, warmup model) took 351.20 s")
    out.prefix = "(APIServer pid=4240) "
    out.start_new_line = True
    out.log("api_server.py:677", "Starting vLLM server on http://127.0.0.1:8000")
    return out


def replay(out: VllmStream, chunk: int = 7) -> tuple[StartupTracker, list[tuple[str, str, float]]]:
    """Feed the stream's bytes in small chunks, as the launcher does; return (kind, text, time) seen."""
    reader, seen = OutputReader(), []
    for text, now in out.writes:
        data = text.encode()
        for i in range(0, len(data), chunk):  # chunks cut through the multi-byte bar characters
            for step in reader.feed(data[i : i + chunk], now):
                seen += [(kind, value, now) for kind, value in step_items(step)]
    for step in reader.close(out.now):
        seen += [(kind, value, out.now) for kind, value in step_items(step)]
    return reader.tracker, seen


def step_items(step):
    return [(k, v) for k, v in (("phase", step.phase), ("progress", step.progress), ("log", step.log)) if v]


def test_a_cold_v4_start_names_each_phase_in_order():
    tracker, seen = replay(cold_v4_start())
    phases = [text for kind, text, _ in seen if kind == "phase"]
    assert phases == [
        "loading weights",
        "memory profiling",
        "KV cache allocation",
        "kernel warmup",
        "API server",
    ]
    assert list(tracker.phase_times) == phases
    # the warmup began after the KV cache line and lasted the bar's 1,131 x 0.254 s
    times = tracker.phase_times
    assert times["API server"] - times["kernel warmup"] > 1131 * 0.254


def test_with_cuda_graphs_the_capture_phase_follows_the_warmup():
    _, seen = replay(cold_v4_start(eager=False))
    phases = [text for kind, text, _ in seen if kind == "phase"]
    assert phases[-3:] == ["kernel warmup", "graph capture", "API server"]
    progress = [text for kind, text, _ in seen if kind == "progress"]
    assert progress[-1] == "graph capture: Capturing CUDA graphs (decode, FULL) 51/51 (100%)"


def test_deepgemm_progress_is_shown_every_five_seconds_not_every_redraw():
    _, seen = replay(cold_v4_start())
    bar = [(text, t) for kind, text, t in seen if kind == "progress" and "DeepGEMM" in text]
    assert bar[0][0] == "kernel warmup: DeepGEMM 0/1131 (0%)"
    assert bar[-1][0] == "kernel warmup: DeepGEMM 1131/1131 (100%)"
    middle = [
        int(m[1]) for text, _ in bar if (m := re.match(r"kernel warmup: DeepGEMM (\d+)/1131 \(\d+%\)$", text))
    ]
    assert len(middle) == len(bar) and middle == sorted(middle) and 0 < middle[len(middle) // 2] < 1131
    gaps = [b - a for (_, a), (_, b) in zip(bar[:-2], bar[1:-1], strict=True)]
    assert gaps and min(gaps) >= 5.0 - 1e-9
    assert 1131 * 0.254 / 5 - 2 <= len(bar) <= 1131 * 0.254 / 5 + 3  # ~58, not 1,132
    # The log (file, tail, console) gets the redraws it shows plus the bar's closing line: no flood.
    logged = [text for kind, text, _ in seen if kind == "log" and "DeepGEMM warmup" in text]
    assert len(logged) <= len(bar) + 1
    assert logged[-1].startswith("DeepGEMM warmup: 100%|") and "1131/1131" in logged[-1]


def test_weight_loading_and_tilelang_jit_show_progress_in_their_phase():
    _, seen = replay(cold_v4_start())
    progress = [text for kind, text, _ in seen if kind == "progress"]
    assert "loading weights: Loading safetensors checkpoint shards 46/46 (100%)" in progress
    assert "memory profiling: TileLang JIT, kernel 1 (mhc_pre_big_fuse)" in progress
    assert "memory profiling: TileLang JIT, kernel 2 (mhc_post)" in progress  # 10 s later: shown


def test_every_whole_line_is_logged_and_worker_prefixes_alone_are_not():
    out = cold_v4_start()
    _, seen = replay(out)
    logged = [text for kind, text, _ in seen if kind == "log"]
    whole = [line for line in "".join(text for text, _ in out.writes).split("\n") if "INFO" in line]
    assert [line for line in logged if "INFO" in line] == whole
    assert "(EngineCore pid=4242) " not in logged and "" not in logged


def test_phases_only_move_forward():
    tracker = StartupTracker()
    lines = [
        # v1/attention/selector.py:203, printed while the model is built, before any KV cache exists
        "(EngineCore pid=1) INFO 11-28 10:00:01 [selector.py:203] Using NHD KV cache layout for FLASH_ATTN",
        "(EngineCore pid=1) INFO 11-28 10:00:02 [gpu_model_runner.py:5251] Starting to load model /m...",
        "(EngineCore pid=1) INFO 11-28 10:00:09 [kv_cache_utils.py:2177] GPU KV cache size: 1,024 tokens",
        "(EngineCore pid=1) INFO 11-28 10:00:10 [default_loader.py:431] Loading weights took 0.10 seconds",
    ]
    phases = [tracker.read(Segment(line), float(i)).phase for i, line in enumerate(lines)]
    assert phases == [None, "loading weights", "KV cache allocation", None]
    assert tracker.phase == "KV cache allocation"
    assert PHASE_NAMES.index("memory profiling") < PHASE_NAMES.index("KV cache allocation")


def test_the_splitter_cuts_on_cr_and_lf_and_keeps_utf8_whole():
    splitter = LineSplitter()
    data = "a\r\nbar 1/2 \u2588\rbar 2/2 \u2588\u2588\nlast".encode()
    segments = []
    for i in range(len(data)):  # one byte at a time: every multi-byte character is cut
        segments += splitter.feed(data[i : i + 1])
    segments += splitter.close()
    assert segments == [
        Segment("a"),
        Segment("bar 1/2 \u2588", in_place=True),
        Segment("bar 2/2 \u2588\u2588"),
        Segment("last"),
    ]
    assert splitter.close() == []


def test_the_splitter_bounds_a_line_without_end():
    splitter = LineSplitter()
    segments = splitter.feed(b"x" * (200 * 1024))
    assert [len(s.text) for s in segments] == [64 * 1024] * 3
    assert len(splitter.close()[0].text) == 200 * 1024 - 3 * 64 * 1024


@pytest.mark.parametrize(
    ("line", "hint"),
    [
        ("ValueError: To serve at least one request ... larger than the available KV cache memory", "memory"),
        ("OSError: [Errno 98] Address already in use", "port"),
        ("something else entirely", "read the log above"),
    ],
)
def test_exit_hints_follow_the_log(line, hint):
    assert hint in exit_hint(line)


def test_progress_reaches_the_caller_before_the_bar_ends(tmp_path):
    """A bar that redraws with CR only: the launcher must not wait for its newline (readline would)."""
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "w = sys.stdout.write\n"
        "w('(EngineCore pid=7) '); w('\\rDeepGEMM warmup:   0%|          | 0/4 [00:00<?, ?it/s]')\n"
        "sys.stdout.flush()\n"
        f"end = time.time() + 20\nwhile not os.path.exists({str(go)!r}) and time.time() < end:\n"
        "    time.sleep(0.05)\n"
        "w('\\rDeepGEMM warmup: 100%|##########| 4/4 [00:01<00:00,  3.90it/s]\\n'); sys.exit(3)\n"
    )
    events: list[Event] = []
    seen = threading.Event()

    def notify(event: Event) -> None:
        events.append(event)
        if event.kind == "progress":
            seen.set()

    spec = LaunchSpec(
        argv=(sys.executable, "-c", code),
        host="127.0.0.1",
        port=1,
        served_model_name="x",
        startup_timeout_s=30,
        log_path=tmp_path / "log",
    )
    server = Server(spec, notify)
    server.start()
    try:
        assert seen.wait(10), [e.text for e in events]
        assert not go.exists() and server.proc.poll() is None  # the bar has not ended yet
        go.touch()
        server.proc.wait(20)
    finally:
        server.stop()
    assert [e.text for e in events if e.kind == "progress"] == [
        "kernel warmup: DeepGEMM 0/4 (0%)",
        "kernel warmup: DeepGEMM 4/4 (100%)",
    ]
    assert server.phase == "kernel warmup"
    # the console gets the bar's closing line; its redraw went to the log file only
    assert [e.text for e in events if e.kind == "log"] == [
        "DeepGEMM warmup: 100%|##########| 4/4 [00:01<00:00,  3.90it/s]"
    ]
    log = Path(tmp_path / "log").read_text().splitlines()
    assert log == [
        "DeepGEMM warmup:   0%|          | 0/4 [00:00<?, ?it/s]",
        "DeepGEMM warmup: 100%|##########| 4/4 [00:01<00:00,  3.90it/s]",
    ]


def test_the_terminal_shows_progress_lines(capsys):
    notify = terminal_notify()
    notify(Event("progress", "kernel warmup: DeepGEMM 412/1131 (36%)", 123.4))
    notify(Event("phase", "kernel warmup", 100.0))
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "dsv4serve: [  123.4 s] kernel warmup: DeepGEMM 412/1131 (36%)",
        "dsv4serve: [  100.0 s] kernel warmup",
    ]


def test_stream_helper_matches_vllm_prefixing():
    out = VllmStream("(W pid=1) ")
    out.write("a\nb")
    out.write("c\n")
    out.write("\rbar")
    assert "".join(t for t, _ in out.writes) == "(W pid=1) a\n(W pid=1) bc\n(W pid=1) \rbar"
