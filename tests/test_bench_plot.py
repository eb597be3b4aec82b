"""`bench plot` and `--plot`: runs kept in a temp store (no server), drawn into a real PNG that is read
back and looked at; bad paths, unknown runs and a missing matplotlib are one-line usage errors."""

from __future__ import annotations

import json
import os
import sys

import pytest

from dsv4serve.bench import plot, store
from dsv4serve.bench.figures import Level

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORANGE = (1.0, 0x7F / 255, 0x0E / 255)  # matplotlib's C1: the second run's colour


def _level(c: int, scale: float, errors: int = 0, tpot_p99: float | None = None) -> Level:
    return Level(
        concurrency=c,
        requests=4 * c,
        errors=errors,
        duration_s=2.0,
        output_tokens=64 * c,
        tokens_per_s=40.0 * c * scale,
        requests_per_s=1.5 * c * scale,
        ttft_mean_ms=30.0 + 4 * c,
        ttft_p99_ms=50.0 + 6 * c,
        tpot_mean_ms=8.0 + c / 4,
        tpot_p99_ms=tpot_p99,
    )


@pytest.fixture
def two_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    about = {
        "target": "flash",
        "model": "deepseek-ai/DeepSeek-V4-Flash",
        "engine": "vllm",
        "engine_version": "0.20.1",
        "plan_digest": "3fa9c2d1",
        "gpus": "NVIDIA H200,NVIDIA H200",
        "client": "vllm",
        "input_len": 1024,
        "output_len": 256,
        "dataset": "",
        "label": "baseline",
    }
    a = store.save(about, [_level(c, 1.0) for c in (1, 8, 64)])
    # B stored no TPOT p99 (as runs kept before it was) and failed two requests at 64.
    b = store.save({**about, "label": "fp8 kv"}, [_level(c, 1.4, 2 * (c == 64), None) for c in (1, 8, 64)])
    return a, b


def _read(file):
    from matplotlib import image

    data = file.read_bytes()
    assert data[:8] == PNG_MAGIC
    return image.imread(file)  # height x width x RGBA floats


def _orange_pixels(pixels) -> int:
    import numpy as np

    return int((np.abs(pixels[:, :, :3] - np.array(ORANGE)).max(axis=2) < 0.06).sum())


def test_plot_draws_one_run_and_overlays_two(run_cli, two_runs, tmp_path):
    a, b = two_runs
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    result = run_cli("bench", "plot", str(a), "-o", str(one))
    assert result.exit_code == 0, result.stderr
    assert f"wrote {one} (#{a})" in result.stdout
    assert run_cli("bench", "plot", str(a), str(b), "--plot", str(two)).exit_code == 0
    first, both = _read(one), _read(two)
    height, width = plot.HEIGHT_IN * plot.DPI, plot.WIDTH_IN * plot.DPI
    assert first.shape == both.shape == (height, width, 4)
    for pixels in (first, both):
        assert pixels[:, :, :3].std() > 0.05  # not a blank page
        assert (pixels[:, :, :3].min(axis=2) < 0.5).mean() > 0.01  # dark ink: text, axes, lines
    assert one.read_bytes() != two.read_bytes()
    assert _orange_pixels(first) < 50 < 2000 < _orange_pixels(both)  # B's lines and legend entry


def test_compare_with_plot_draws_both_runs_and_json_names_the_file(run_cli, two_runs, tmp_path):
    a, b = two_runs
    drawn, compared = tmp_path / "plot.png", tmp_path / "compare.png"
    result = run_cli("bench", "plot", str(a), str(b), "-o", str(drawn), "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"plot": str(drawn), "runs": [a, b]}
    result = run_cli("bench", "compare", str(a), str(b), "--plot", str(compared))
    assert result.exit_code == 0, result.stderr
    assert f"wrote {compared}" in result.stderr and "(B/A)" in result.stdout
    assert (_read(compared) == _read(drawn)).all()


def _not_writable(tmp_path) -> str:
    if os.geteuid() == 0:  # root writes any directory; /sys takes no new files
        return "/sys/bench.png"
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return str(locked / "bench.png")


@pytest.mark.parametrize(
    ("where", "words"),
    [
        (lambda tmp: str(tmp / "missing" / "bench.png"), "no directory"),
        (lambda tmp: str(tmp), "is a directory"),
        (lambda tmp: str(tmp / "bench.jpg"), "not a .png file name"),
        (_not_writable, "cannot write it"),
    ],
)
def test_a_plot_path_that_cannot_be_written_is_a_usage_error(run_cli, two_runs, tmp_path, where, words):
    file = where(tmp_path)
    result = run_cli("bench", "plot", str(two_runs[0]), "-o", file)
    assert result.exit_code == 2, result.stderr
    assert f"--plot {file}: {words}" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2  # the message and its hint


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("plot", "1", "9", "-o", "x.png"), "no benchmark run 9"),
        (("plot", "1"), "bench plot needs run ids and -o FILE.png"),
        (("plot", "-o", "x.png"), "bench plot needs run ids and -o FILE.png"),
        (("list", "--plot", "x.png"), "bench list draws no plot"),
    ],
)
def test_plot_without_its_runs_or_file_is_a_usage_error(run_cli, two_runs, args, words):
    result = run_cli("bench", *args)
    assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists("x.png")


def test_a_missing_matplotlib_is_one_line_with_the_install_hint(run_cli, two_runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    file = tmp_path / "bench.png"
    result = run_cli("bench", "plot", str(two_runs[0]), "-o", str(file))
    assert result.exit_code == 2 and "matplotlib is not installed" in result.stderr
    assert "pip install matplotlib" in result.stderr and "Traceback" not in result.stderr
    assert not file.exists()


def test_the_title_and_legend_name_model_engine_digest_label_and_gpus(two_runs):
    runs = [store.get(run_id) for run_id in two_runs]
    assert plot._title(runs).splitlines() == [
        "deepseek-ai/DeepSeek-V4-Flash · vllm 0.20.1 · plan 3fa9c2d1",
        "in 1024 out 256 tokens",
    ]
    assert plot._legend(runs[1]) == f"#{two_runs[1]} · fp8 kv · vllm 0.20.1 · 2x NVIDIA H200"
    assert plot._legend({**runs[0], "gpus": "", "label": ""}).endswith("· vllm 0.20.1 · GPUs unknown")
