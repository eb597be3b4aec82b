"""Reading vLLM's start-up output: lines, in-place progress bars, start-up phases and their progress.

vLLM's progress bars (tqdm) redraw themselves with a carriage return and end with one newline when
done: the DeepGEMM warmup bar of a cold DeepSeek-V4 start redraws for minutes without a newline. So the
output is split on CR as well as LF; a CR-ended piece is an in-place update, shown at most once per
PROGRESS_INTERVAL_S so neither the console nor the log file is flooded. The patterns come from vLLM
0.26.0's own format strings (worker/gpu_worker.py, model_executor/warmup/, v1/core/kv_cache_utils.py,
compilation/backends.py), the KV-size line of 0.28+ (one line; the device named from 0.30, "CPU KV
cache size" on the CPU build; read in 0.32) and TileLang 0.1.9's jit/kernel.py;
tests/test_launch_phases.py quotes them.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

PROGRESS_INTERVAL_S = 5.0
MAX_SEGMENT = 64 * 1024  # a "line" longer than this is cut, so a runaway writer cannot grow memory

# Start-up phases in vLLM's order. A phase is entered when a line matches its pattern and it lies after
# the current one: phases only move forward (a late "Loading weights took" never goes back), and may be
# skipped (--enforce-eager captures no graphs; VLLM_DEEP_GEMM_WARMUP=skip has no DeepGEMM bar).
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("loading weights", re.compile(r"Starting to load model|Loading weights|Loading safetensors")),
    # The first forward pass at max_num_batched_tokens measures peak memory; torch.compile runs inside
    # it, and on a cold V4 start it JIT-compiles TileLang/Triton/DeepGEMM kernels too.
    (
        "memory profiling",
        re.compile(
            r"Model loading took|Loading weights took|Dynamo bytecode transform|"
            r"Compiling a graph for compile range|Directly load (?:the compiled graph|AOT compilation)|"
            r"torch\.compile took"
        ),
    ),
    (
        "KV cache allocation",
        re.compile(
            r"Available KV cache memory|(?:GPU|CPU|XPU|TPU|HPU)(?: \+ host)? KV cache size|GiB for KV cache|"
            r"# (?:CPU|GPU|cpu|gpu) blocks"
        ),
    ),
    # vLLM's kernel_warmup(): DeepSeek-V4 mHC TileLang kernels, sparse-MLA Triton, then DeepGEMM.
    (
        "kernel warmup",
        re.compile(
            r"Warming up |DeepGEMM warmup|Compile and warming up model for size|CuTeDSL warmup|"
            r"Compiling CuTeDSL kernels"
        ),
    ),
    ("graph capture", re.compile(r"Capturing CUDA graphs|Graph capturing finished")),
    ("API server", re.compile(r"Starting vLLM (?:API )?server|Application startup complete")),
)
PHASE_NAMES = tuple(name for name, _ in PHASES)

# tqdm's default bar "DeepGEMM warmup:  36%|###6      | 412/1131 [01:23<02:25,  4.94it/s]" and vLLM's
# weight-loading format "Loading safetensors checkpoint shards:  50% Completed | 1/2 [...]".
_BAR = re.compile(
    r"(?P<desc>[A-Za-z][^:|\r\n]{0,80}?):\s*\d{1,3}%\s*(?:Completed\s*)?\|(?:[^|]*\|)?\s*(?P<n>\d+)/(?P<total>\d+)"
)
_WHOLE_BAR = re.compile(_BAR.pattern + r"[^\r\n]*\]\s*$")
# Kernels compiled just in time, each worth a counter while a phase runs (TileLang logs every one).
_JIT = (("TileLang", re.compile(r"TileLang begins to compile kernel `([^`]+)`")),)
# What vLLM puts before a worker's output: "(EngineCore pid=12) ", "(Worker_TP1_EP1 pid=34) ".
_PREFIX = re.compile(r"^\s*\([\w.-]+ pid=\d+\)\s*")
_PREFIX_ONLY = re.compile(r"^\s*(?:\([\w.-]+ pid=\d+\)\s*)?$")

# vLLM's KV pool size in tokens and its concurrency: one line from 0.28 ("GPU KV cache size: N tokens,
# Maximum concurrency for M tokens per request: X.XXx"), the device named from 0.30 ("CPU KV cache size"
# on the CPU build), two lines in 0.26-0.27 (kv_cache_utils.py update_kv_cache_capacity / 0.26 2163-2182).
_KV_SIZE = re.compile(
    r"\b(?P<device>GPU|CPU|XPU|TPU|HPU)(?: \+ host)? KV cache size: (?P<tokens>[\d,]+) tokens"
)
_KV_CONCURRENCY = re.compile(
    r"Maximum concurrency for (?P<length>[\d,]+) tokens per request: (?P<concurrency>[\d.]+)x"
)


@dataclass(frozen=True)
class KvReport:
    """What one log line says of the KV pool (any release's format); None where it does not say it."""

    device: str | None = None
    tokens: int | None = None
    max_model_len: int | None = None
    concurrency: float | None = None


def read_kv_report(line: str) -> KvReport | None:
    """The KV figures of one line of vLLM's output, or None when it has none."""
    size, most = _KV_SIZE.search(line), _KV_CONCURRENCY.search(line)
    if not size and not most:
        return None
    return KvReport(
        size["device"] if size else None,
        int(size["tokens"].replace(",", "")) if size else None,
        int(most["length"].replace(",", "")) if most else None,
        float(most["concurrency"]) if most else None,
    )


# Log lines that explain an early exit -> a hint (first match wins), like huggingface_hub's _errors.
HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"unrecognized arguments|invalid choice|error: argument"),
        "vLLM rejected an argument: check the extra arguments after `--` and the profile's serve.extra_args",
    ),
    (re.compile(r"Address already in use|Errno 98"), "the port is taken: pick another with --port"),
    (
        re.compile(r"out of memory|OutOfMemory|Not enough memory|larger than the available KV cache", re.I),
        "not enough memory: lower --max-model-len or use more GPUs (see `dsv4serve plan`)",
    ),
    (
        re.compile(r"safetensor|HeaderTooLarge|Error while deserializing|config\.json|not a valid", re.I),
        "the checkpoint looks incomplete or corrupt: run `dsv4serve download` again",
    ),
)
DEFAULT_HINT = "read the log above; run `dsv4serve plan` to check the settings"


def exit_hint(log_tail: str) -> str:
    """The hint for an early exit, from the last lines vLLM printed."""
    return next((hint for pattern, hint in HINTS if pattern.search(log_tail)), DEFAULT_HINT)


@dataclass(frozen=True)
class Segment:
    """A piece of output: a whole line (newline) or an in-place redraw (carriage return)."""

    text: str
    in_place: bool = False


@dataclass(frozen=True)
class Step:
    """What one segment means: the text to log (None: a redraw held back), a phase entered, progress."""

    log: str | None
    phase: str | None = None
    progress: str | None = None
    redraw: bool = False  # a bar's in-place state: for the log file, while the console shows `progress`


class LineSplitter:
    """Bytes in, segments out: split on LF, CRLF and CR, UTF-8 decoded across chunk boundaries."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""

    @property
    def pending(self) -> str:
        """What came after the last line end: with tqdm ("\\r" + bar), the bar's current state."""
        return self._buf

    def feed(self, data: bytes) -> list[Segment]:
        self._buf += self._decoder.decode(data)
        out = []
        start = 0
        # A CR at the very end may be half of a CRLF: it waits for the next chunk.
        for m in re.finditer(r"\r\n|\n|\r(?!$)", self._buf):
            out.append(Segment(self._buf[start : m.start()], in_place=m.group() == "\r"))
            start = m.end()
        self._buf = self._buf[start:]
        while len(self._buf) > MAX_SEGMENT:
            out.append(Segment(self._buf[:MAX_SEGMENT]))
            self._buf = self._buf[MAX_SEGMENT:]
        return out

    def close(self) -> list[Segment]:
        rest = (self._buf + self._decoder.decode(b"", final=True)).rstrip("\r")
        self._buf = ""
        return [Segment(rest)] if rest else []


class OutputReader:
    """vLLM's output, chunk by chunk, into steps: the splitter and the tracker together.

    tqdm draws "\\r" + bar, so a bar's current state has no line end after it until the next redraw;
    a complete one (its "[elapsed<remaining, rate]" closed) is read from the pending text right away,
    or a bar redrawn every 30 s would always be shown one redraw late."""

    def __init__(self, tracker: StartupTracker | None = None) -> None:
        self.splitter = LineSplitter()
        self.tracker = tracker or StartupTracker()

    def feed(self, data: bytes, now: float, track: bool = True) -> list[Step]:
        """Steps for a chunk; with track False (after ready) every line is logged as it is."""
        steps = [self._step(segment, now, track) for segment in self.splitter.feed(data)]
        pending = self.splitter.pending
        if track and _WHOLE_BAR.search(pending):
            steps.append(self.tracker.read(Segment(pending, in_place=True), now))
        return steps

    def close(self, now: float, track: bool = True) -> list[Step]:
        return [self._step(segment, now, track) for segment in self.splitter.close()]

    def _step(self, segment: Segment, now: float, track: bool) -> Step:
        if track:
            return self.tracker.read(segment, now)
        return Step(segment.text if segment.text or not segment.in_place else None)


class StartupTracker:
    """Follows vLLM's start-up through its output: the current phase, when each began, progress lines."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.phase = "starting"
        self.phase_times: dict[str, float] = {}  # phase -> seconds since start when it began
        self._index = -1
        self._shown: dict[str, float] = {}  # progress label -> when last shown
        self._finished: dict[str, int] = {}  # bar label -> the total it was last shown complete at
        self._jit_counts: dict[str, int] = {}

    def read(self, segment: Segment, now: float) -> Step:
        """Interpret one segment seen `now` seconds after the start."""
        text = segment.text
        if _PREFIX_ONLY.match(text):  # blank, or a worker prefix before a bar's first CR
            return Step(None)
        phase = self._advance(text, now)
        progress = self._progress(text, now)
        if segment.in_place and _BAR.search(_PREFIX.sub("", text)):
            # a redraw between two shown ones is dropped: the next one says more
            return Step(text if progress else None, phase, progress, redraw=True)
        return Step(text, phase, progress)

    phases = PHASES  # another engine's tracker gives its own (engines/startup.py)

    def _advance(self, text: str, now: float) -> str | None:
        for index in range(len(self.phases) - 1, self._index, -1):
            name, pattern = self.phases[index]
            if pattern.search(text):
                self._index = index
                self.phase = name
                self.phase_times[name] = round(now, 2)
                return name
        return None

    def _progress(self, text: str, now: float) -> str | None:
        """A progress line when a bar moved (rate-limited; first and last always) or a JIT kernel began."""
        bar = _BAR.search(_PREFIX.sub("", text))
        if bar:
            label = re.sub(r"\s*warmup$", "", bar["desc"].strip())
            done, total = int(bar["n"]), int(bar["total"])
            if done >= total > 0:
                if self._finished.get(label) == total:  # the closing line repeats the last redraw
                    return None
                self._finished[label] = total
            elif label in self._shown and now - self._shown[label] < self.interval_s:
                return None
            else:
                self._finished.pop(label, None)
            self._shown[label] = now
            pct = f" ({100 * done / total:.0f}%)" if total else ""  # rounded, as tqdm's own
            return f"{self.phase}: {label} {done}/{total}{pct}"
        for label, pattern in _JIT:
            m = pattern.search(text)
            if m:
                count = self._jit_counts[label] = self._jit_counts.get(label, 0) + 1
                if label not in self._shown or now - self._shown[label] >= self.interval_s:
                    self._shown[label] = now
                    return f"{self.phase}: {label} JIT, kernel {count} ({m.group(1)})"
        return None
