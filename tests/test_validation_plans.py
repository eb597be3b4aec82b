"""docs/validation.md's predictions for the 2- and 4-GPU runs (issue 25) are what the planner says now.

Each row of the section's predictions table holds a `dsv4serve plan` command and its figures. This
runs every command as written there (the device paths /tmp/gs and /dev/shm mapped to profiles written
here the way the doc says: `write_profile` of the layer cut, the doc's own child-profile YAML), and
compares each cell with the plan's JSON. A planner change (an overhead model, a new release default)
fails here until the table is recomputed, so a later GPU run never fills its measured column against
figures the planner no longer gives.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from dsv4serve.weights.v4ckpt.profile import write_profile
from dsv4serve.weights.v4ckpt.spec import FLASH, cut

DOC = Path(__file__).resolve().parent.parent / "docs" / "validation.md"
SECTION = "## Two and four H200s: the plan's predictions before the run (issue 25"
GIB = 2**30


def section() -> str:
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def prediction_rows() -> dict[str, list[str]]:
    body = section()
    table = body[body.index("### Predictions") : body.index("### Measured")]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 11 and cells[1].startswith("`dsv4serve plan "):
            rows[cells[0]] = cells[1:]
    return rows


def child_profile_yaml() -> str:
    """The YAML the doc's heredoc writes to /tmp/gs/flash-24l-tp2.yaml on the device."""
    m = re.search(r"cat > /tmp/gs/flash-24l-tp2\.yaml <<'EOF'\n(.*?)\n\s*EOF\n", section(), re.S)
    assert m, "the child profile's heredoc is missing from the section"
    return "\n".join(line[4:] for line in m.group(1).splitlines()) + "\n"


@pytest.fixture(scope="module")
def device_paths(tmp_path_factory) -> dict[str, str]:
    """The device's profile paths, written here as the doc's commands write them there."""
    gs = tmp_path_factory.mktemp("gs")
    shm = tmp_path_factory.mktemp("shm")
    write_profile(cut(FLASH, 24), Path("/tmp/gs/ckpt/flash-24l"), gs / "flash-24l.yaml")
    (gs / "flash-24l-tp2.yaml").write_text(child_profile_yaml())
    write_profile(FLASH, Path("/dev/shm/flash"), shm / "flash.yaml")  # make_v4_checkpoint's OUT.yaml
    return {"/tmp/gs/": f"{gs}/", "/dev/shm/": f"{shm}/"}


def expected_cells(plan: dict) -> list[str]:
    rows = plan["memory"]
    assert all(
        {k: v for k, v in r.items() if k != "device"} == {k: v for k, v in rows[0].items() if k != "device"}
        for r in rows
    ), "the GPUs differ: one cell per figure no longer describes the run"
    m = rows[0]
    pool = m["budget"] - m["weights"] - m["overhead"]
    tokens = f"{m['vllm_kv_tokens']:,}" if m["vllm_kv_tokens"] else f"≥ {m['kv_capacity_tokens']:,}"
    return [
        f"{plan['tensor_parallel_size']} ({plan['strategy']})",
        f"{m['budget'] / GIB:.2f} GiB ({plan['gpu_memory_utilization']})",
        f"{m['weights'] / GIB:.2f} GiB",
        f"{plan['kv']['startup_need'] / GIB:.2f} GiB at {plan['max_model_len']:,}",
        f"{pool / GIB:.2f} GiB",
        tokens,
        f"{m['vllm_max_concurrency']:.2f}x" if m["vllm_kv_tokens"] else "-",
        f"{m['expected_used'] / GIB:.2f} GiB",
        "yes" if plan["fits"] else "no",
    ]


def test_the_table_names_every_run_of_issue_25():
    assert set(prediction_rows()) == {"A1", "A2", "C1", "B1", "N1", "F1", "F2", "N2"}


@pytest.mark.parametrize("run", sorted(prediction_rows()))
def test_each_prediction_is_the_planners_figure(run, run_cli, device_paths):
    command, *cells = prediction_rows()[run]
    argv = shlex.split(command.strip("`"))[1:]
    for device, here in device_paths.items():
        argv = [a.replace(device, here) for a in argv]
    result = run_cli(*argv, "--json")
    assert result.exit_code == 0, f"{run}: {command} exits {result.exit_code}: {result.stderr}"
    plan = json.loads(result.stdout)
    assert plan["vllm_release"].startswith("0.26"), plan["vllm_release"]
    assert cells == expected_cells(plan), f"{run}: recompute its row in docs/validation.md from {command}"
