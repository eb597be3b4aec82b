"""GPU inventory: --hardware parsing, CUDA_VISIBLE_DEVICES, selection, and NVML missing on this machine."""

from __future__ import annotations

import dataclasses

import pytest

from dsv4serve.errors import HardwareError, UsageError
from dsv4serve.hardware.inventory import (
    GPU_CATALOG,
    GiB,
    Inventory,
    MiB,
    parse_hardware,
    read_inventory,
    visible_gpus,
)
from dsv4serve.hardware.select import parse_gpus, select_gpus


@pytest.mark.parametrize(
    ("spec", "count", "name", "memory", "cc"),
    [
        ("2xH200", 2, "H200", 143771 * MiB, "9.0"),
        ("8xH100-80GB", 8, "H100-80GB", 81559 * MiB, "9.0"),
        ("4xB200", 4, "B200", 183359 * MiB, "10.0"),
        ("1xRTX4090", 1, "RTX4090", 24564 * MiB, "8.9"),
        ("2xA100-80GB", 2, "A100-80GB", 81920 * MiB, "8.0"),
        ("8xL40S", 8, "L40S", 46068 * MiB, "8.9"),
        ("2xh200", 2, "H200", 143771 * MiB, "9.0"),
        ("2x48GiB@8.9", 2, "48GiB@8.9", 48 * GiB, "8.9"),
        ("3x80GB@9.0", 3, "80GB@9.0", 80 * 10**9, "9.0"),
    ],
)
def test_declared_inventories(spec, count, name, memory, cc):
    inv = parse_hardware(spec)
    assert inv.source == "declared" and len(inv.gpus) == count
    assert [g.index for g in inv.gpus] == list(range(count))
    for g in inv.gpus:
        assert (g.name, g.memory_total, g.compute_capability) == (name, memory, cc)
        assert g.memory_free == g.memory_usable == g.memory_total - g.memory_reserved and g.uuid == ""


def test_catalog_is_one_table_with_unique_names():
    names = [m.name for m in GPU_CATALOG]
    assert len(names) == len(set(names)) >= 6


@pytest.mark.parametrize("spec", ["2xH300", "H200", "0xH200", "2x48TB@9.0", "2x48GiB", "x"])
def test_bad_hardware_is_a_usage_error_listing_known_gpus(spec):
    with pytest.raises(UsageError) as err:
        parse_hardware(spec)
    assert "H200" in err.value.hint or "cpu" in err.value.hint


def test_hardware_cpu_declares_no_gpu():
    assert parse_hardware("cpu").gpus == ()


def _nvml_like(*names: str):
    """Declared GPUs dressed as NVML ones: UUIDs, and some memory in use."""
    out = []
    for i, name in enumerate(names):
        g = parse_hardware(f"1x{name}").gpus[0]
        out.append(
            dataclasses.replace(g, index=i, uuid=f"GPU-{i}aaa{i}-0000", memory_free=g.memory_total - i * GiB)
        )
    return tuple(out)


@pytest.mark.parametrize(
    ("value", "indices"),
    [
        (None, [0, 1, 2, 3]),
        ("", []),
        ("2,0", [2, 0]),
        ("1,7,2", [1]),  # CUDA stops at the first entry that names no GPU
        ("-1", []),
        ("GPU-3aaa3-0000,0", [3, 0]),
        ("GPU-2aaa", [2]),  # a unique UUID prefix
        ("1aaa1-0000", [1]),  # without the GPU- prefix
        (" 0 , 1 ", [0, 1]),
        ("0,0,1", [0]),
    ],
)
def test_cuda_visible_devices(value, indices):
    gpus = _nvml_like("H200", "H200", "H200", "H200")
    assert [g.index for g in visible_gpus(gpus, value)] == indices


def test_cuda_visible_devices_with_mig_is_refused():
    with pytest.raises(HardwareError, match="MIG"):
        visible_gpus(_nvml_like("H200"), "MIG-abc")


def test_select_count_takes_the_most_free_of_one_model():
    inv = Inventory(gpus=_nvml_like("H200", "H200", "H200", "L40S"), source="nvml")
    # free memory falls with the index: GPUs 0 and 1 have the most
    assert [g.index for g in select_gpus(inv, "2").gpus] == [0, 1]
    busy = dataclasses.replace(inv.gpus[0], memory_free=0)
    inv2 = dataclasses.replace(inv, gpus=(busy, *inv.gpus[1:]))
    assert [g.index for g in select_gpus(inv2, "2").gpus] == [1, 2]


def test_select_default_is_the_most_common_model_with_a_note():
    inv = Inventory(gpus=_nvml_like("H200", "L40S", "H200"), source="nvml")
    sel = select_gpus(inv, None)
    assert [g.index for g in sel.gpus] == [0, 2] and "L40S" in sel.notes[0]


def test_select_list_indices_and_uuids():
    inv = Inventory(gpus=_nvml_like("H200", "H200", "H200"), source="nvml")
    assert [g.index for g in select_gpus(inv, "2,0").gpus] == [2, 0]
    assert [g.index for g in select_gpus(inv, "GPU-1aaa1-0000").gpus] == [1]
    assert [g.index for g in select_gpus(inv, "1,").gpus] == [1]


def test_select_refuses_mixed_models_and_names_them():
    inv = Inventory(gpus=_nvml_like("H200", "L40S"), source="nvml")
    with pytest.raises(HardwareError) as err:
        select_gpus(inv, "0,1")
    assert "H200" in err.value.message and "L40S" in err.value.message
    with pytest.raises(HardwareError, match="one model"):
        select_gpus(inv, "2")


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("5", HardwareError),
        ("0", UsageError),
        ("9,", UsageError),
        ("0,0", UsageError),
        ("GPU-zzz", UsageError),
    ],
)
def test_select_refusals(spec, error):
    inv = Inventory(gpus=_nvml_like("H200", "H200"), source="nvml")
    with pytest.raises(error):
        select_gpus(inv, spec)


def test_no_nvml_here_gives_the_clear_message():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("this machine has NVML; the no-driver path is tested where there is none")
    with pytest.raises(HardwareError) as err:
        read_inventory()
    assert "NVML" in err.value.message and "--hardware 2xH200" in err.value.hint and "tiny" in err.value.hint
    assert err.value.exit_code == 3


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("²", "'²'"),  # int() reads a superscript two as 2
        ("０", "'０'"),  # a fullwidth zero, also a digit to int()
        ("1,,2", "empty entry"),
        ("-1", "'-1'"),
        ("0x1", "'0x1'"),
        (",", "names no GPU"),
        ("0", "at least one GPU"),
        ("1" * 5000, "is not a GPU index"),
    ],
)
def test_a_malformed_gpus_is_a_usage_error_before_any_gpu_is_read(dsv4serve_cmd, value, named):
    """The real CLI on this machine (no NVML here: a value read past the syntax would be exit 3)."""
    import subprocess

    proc = subprocess.run(
        [*dsv4serve_cmd, "plan", "flash", "--gpus", value], capture_output=True, text=True, timeout=60
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 2 and lines[0].startswith("error: --gpus ") and named in lines[0], lines
    assert lines[1].startswith("hint: ") and "--gpus 0," in lines[1], lines


def test_every_command_with_gpus_checks_it_first(run_cli):
    for command in (
        ("plan", "flash"),
        ("up", "flash", "--dry-run"),
        ("smoke", "flash"),
        ("export", "systemd", "flash"),
    ):
        result = run_cli(*command, "--gpus", "²")
        assert result.exit_code == 2 and result.stderr.startswith("error: --gpus '²'"), (
            command,
            result.stderr,
        )
    # ...and a well-formed value goes on to the GPUs: exit 3 on a machine without NVML.
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert run_cli("plan", "flash", "--gpus", "1,").exit_code == 3
    else:
        pynvml.nvmlShutdown()


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        (None, None),
        (" ", None),
        ("2", 2),
        ("1,", ("1",)),
        ("2, 0", ("2", "0")),
        ("GPU-1aB2-9", ("GPU-1aB2-9",)),
    ],
)
def test_parse_gpus_reads_counts_and_lists(spec, parsed):
    assert parse_gpus(spec) == parsed
