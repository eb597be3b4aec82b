"""A PNG of stored runs, for people who would rather look than read: output tokens/s, requests/s, TTFT
and TPOT against concurrency, one line per run (matplotlib's Agg canvas, imported only here)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

from dsv4serve.errors import UsageError, oneline

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 8.0, 100  # 1200 x 800 pixels
MAX_RUNS = 10  # one colour each in matplotlib's default cycle
PANELS = (  # (title, y label, ((figure key, line style, what), ...))
    ("Output throughput", "output tokens/s", (("tokens_per_s", "-", "mean"),)),
    ("Request throughput", "requests/s", (("requests_per_s", "-", "mean"),)),
    ("Time to first token", "TTFT (ms)", (("ttft_mean_ms", "-", "mean"), ("ttft_p99_ms", "--", "p99"))),
    ("Time per output token", "TPOT (ms)", (("tpot_mean_ms", "-", "mean"), ("tpot_p99_ms", "--", "p99"))),
)


def check_file(file: str) -> Path:
    """The plot's path, checked before anything is measured: a .png whose directory exists and takes
    a file (tried by creating it; an existing file is left as it is until the plot replaces it)."""
    shown = oneline(file, 100)
    target = Path(file).expanduser()
    if target.is_dir():
        raise UsageError(f"--plot {shown}: is a directory", f"name a file in it: {shown}/bench.png")
    if target.suffix.lower() != ".png":
        raise UsageError(f"--plot {shown}: not a .png file name", "e.g. --plot bench.png")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(
            f"--plot {shown}: no directory {oneline(parent, 100)}",
            f"create it (mkdir -p {oneline(parent, 100)}) or write the plot elsewhere",
        )
    existed = target.exists()
    try:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError as err:
        raise _unwritable(shown, err) from None
    if not existed:
        target.unlink()
    return target


def write(runs: list[dict], file: str | Path) -> Path:
    """Draw the runs (as `store.get` returns them) into one PNG at `file`; its path."""
    if not runs:
        raise UsageError("nothing to plot: no runs", "see `dsv4serve bench list`")
    if len(runs) > MAX_RUNS:
        raise UsageError(
            f"{len(runs)} runs in one plot: at most {MAX_RUNS}", "plot fewer runs, or several files"
        )
    target = check_file(str(file))
    data = _render(runs)
    try:
        target.write_bytes(data)
    except OSError as err:
        raise _unwritable(oneline(file, 100), err) from None
    return target


def _unwritable(shown: str, err: OSError) -> UsageError:
    return UsageError(
        f"--plot {shown}: cannot write it ({err.strerror or err})",
        "choose a directory you can write, e.g. --plot ./bench.png",
    )


def _render(runs: list[dict]) -> bytes:
    try:
        import matplotlib  # noqa: F401 - first, so a missing matplotlib fails here whatever is cached
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FixedLocator, NullLocator
    except ImportError:
        raise UsageError(
            "--plot: matplotlib is not installed here",
            "pip install matplotlib (a dependency of dsv4serve; scripts/install.sh installs it)",
        ) from None

    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    axes = fig.subplots(2, 2).flatten()
    levels = sorted({lv["concurrency"] for run in runs for lv in run["levels"]})
    if not levels:
        raise UsageError(
            f"runs {', '.join(str(run['id']) for run in runs)} kept no levels", "bench the server again"
        )
    colours = [f"C{i}" for i in range(len(runs))]
    shown_styles: set[str] = set()
    for ax, (title, ylabel, lines) in zip(axes, PANELS, strict=True):
        drawn = False
        for run, colour in zip(runs, colours, strict=True):
            xs = [lv["concurrency"] for lv in run["levels"]]
            for key, style, what in lines:
                ys = [_number(lv.get(key)) for lv in run["levels"]]
                if all(math.isnan(y) for y in ys):
                    continue
                ax.plot(xs, ys, linestyle=style, marker="o", color=colour, linewidth=1.8, markersize=5)
                drawn = True
                shown_styles.add(what)
            if ax is axes[0]:
                _mark_errors(ax, run["levels"], colour)
        ax.set_title(title)
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(levels))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(c) for c in levels])
        ax.set_xlim(levels[0] / 1.5, levels[-1] * 1.5)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
    handles = [
        Line2D([], [], color=c, marker="o", label=_legend(run)) for run, c in zip(runs, colours, strict=True)
    ]
    if "p99" in shown_styles:
        handles += [
            Line2D([], [], color="grey", linestyle="-", label="mean"),
            Line2D([], [], color="grey", linestyle="--", label="p99"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3), fontsize="small")
    fig.suptitle(_title(runs))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _mark_errors(ax, levels: list[dict], colour: str) -> None:
    for lv in levels:
        if lv.get("errors"):
            y = _number(lv.get("tokens_per_s"))
            ax.annotate(
                f"{lv['errors']} err",
                (lv["concurrency"], 0 if math.isnan(y) else y),
                textcoords="offset points",
                xytext=(4, 6),
                color=colour,
                fontsize="small",
                fontweight="bold",
            )


def _legend(run: dict) -> str:
    engine = f"{run['engine']} {run['engine_version']}".strip()
    parts = [f"#{run['id']}"]
    if run.get("label"):
        parts.append(oneline(run["label"], 40))
    parts.append(engine)
    parts.append(_gpus(run["gpus"]) if run.get("gpus") else "GPUs unknown")
    return " · ".join(parts)


def _gpus(names: str) -> str:
    """The GPU names counted: NVIDIA H200,NVIDIA H200 -> 2x NVIDIA H200."""
    counts: dict[str, int] = {}
    for name in names.split(","):
        counts[name.strip()] = counts.get(name.strip(), 0) + 1
    return oneline(" + ".join(f"{n}x {name}" if n > 1 else name for name, n in counts.items()), 60)


def _title(runs: list[dict]) -> str:
    def distinct(values) -> str:
        return ", ".join(dict.fromkeys(oneline(v, 60) for v in values if v)) or "-"

    model = distinct(run["model"] for run in runs)
    engine = distinct(f"{run['engine']} {run['engine_version']}".strip() for run in runs)
    digest = distinct(run["plan_digest"] for run in runs)
    what = distinct(
        f"in {run['input_len']} out {run['output_len']} tokens"
        if run["input_len"]
        else f"dataset {Path(run['dataset']).name}, out {run['output_len']} tokens"
        for run in runs
    )
    return f"{model} · {engine} · plan {digest}\n{what}"
