"""GPU inventory: NVML (the only importer of pynvml), the GPU catalog for --hardware, CUDA_VISIBLE_DEVICES
(--gpus selection is in gpu_select.py)."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import asdict, dataclass
from typing import NamedTuple

from dsv4serve.errors import HardwareError, UsageError

MiB = 1 << 20
GiB = 1 << 30


def gib(n: float, digits: int = 1, unit: str = " GiB") -> str:
    """Bytes as GiB for people: gib(3 * GiB // 2) == "1.5 GiB"; unit="" for the number alone."""
    return f"{n / GiB:.{digits}f}{unit}"


class GpuProcess(NamedTuple):
    pid: int
    name: str
    used: int  # bytes; 0 when NVML cannot tell


@dataclass(frozen=True)
class Gpu:
    """One GPU as NVML reports it (index is NVML's, i.e. nvidia-smi's, not CUDA's ordering)."""

    index: int
    name: str
    uuid: str  # "" for declared GPUs
    memory_total: int  # bytes
    memory_free: int
    memory_used: int
    compute_capability: str  # "9.0"
    processes: tuple[GpuProcess, ...] = ()
    # Memory the driver reserves (NVML v2 `reserved`): CUDA's total, the one vLLM's utilization multiplies,
    # is memory_total - memory_reserved (on an H200: 143771 MiB in NVML, 615 MiB reserved).
    memory_reserved: int = 0

    @property
    def memory_usable(self) -> int:
        """Total memory as CUDA (cudaMemGetInfo, torch, vLLM) counts it."""
        return self.memory_total - self.memory_reserved


def gpu_to_dict(gpu: Gpu) -> dict:
    """A JSON-able dict of a GPU (asdict keeps the processes NamedTuples, which JSON would make lists)."""
    return {**asdict(gpu), "processes": [p._asdict() for p in gpu.processes]}


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml" | "declared" | "cpu"
    driver_version: str = ""
    cuda_driver_version: str = ""
    host_memory_total: int = 0  # bytes, CPU path only; 0 = unknown
    host_cpus: int = 0  # CPUs this process may run on, CPU path only; 0 = unknown
    # Nodes of this shape in the deployment: `gpus` are one node's (every node alike), so a node's
    # CUDA_VISIBLE_DEVICES and memory rows are the same on all of them. 2x8xH100-80GB: 2 nodes of 8.
    nodes: int = 1


@dataclass(frozen=True)
class GpuModel:
    name: str
    nvml_name: str
    memory_total: int  # bytes, as NVML reports total memory
    compute_capability: str
    memory_reserved: int = 0  # NVML v2 `reserved`; 0 where not measured
    # GPUs one node (server) holds: 8 on HGX/DGX boards and the usual PCIe servers. A declared node
    # with more is refused, so no plan puts 16 GPUs in one node (write 2x8xH100-80GB instead).
    per_node: int = 8


# The catalog for --hardware and for "what would fit" suggestions: memory as nvidia-smi/NVML reports it
# (slightly below the marketing figure), so declared plans match the real GPU's plan.
GPU_CATALOG: tuple[GpuModel, ...] = (
    # H200 measured on driver 580.159.04 (2026-11-28): NVML total 143771 MiB, reserved 615 MiB, and
    # torch.cuda.mem_get_info total == NVML total - reserved. The others' reserved share is not measured.
    GpuModel("H200", "NVIDIA H200", 143771 * MiB, "9.0", 615 * MiB),
    GpuModel("H100-80GB", "NVIDIA H100 80GB HBM3", 81559 * MiB, "9.0"),
    GpuModel("B200", "NVIDIA B200", 183359 * MiB, "10.0"),
    GpuModel("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920 * MiB, "8.0"),
    GpuModel("L40S", "NVIDIA L40S", 46068 * MiB, "8.9"),
    GpuModel("RTX4090", "NVIDIA GeForce RTX 4090", 24564 * MiB, "8.9"),
)

# A bounded grammar: ASCII digits only (int() takes "²" or "٣" and a 5,000-digit count), a few of them.
# COUNTxGPU, or NODESxCOUNTxGPU (COUNT GPUs in each node).
_COUNT_RE = re.compile(r"^\s*([0-9]+)\s*[xX]\s*(?:([0-9]+)\s*[xX]\s*)?(\S+)\s*$")
_CUSTOM_RE = re.compile(r"^([0-9]{1,5}(?:\.[0-9]{1,3})?)(GiB|GB)@([0-9]{1,2})\.([0-9]{1,2})$", re.IGNORECASE)
INDEX_RE = re.compile(r"^[0-9]{1,5}$")
# More GPUs than any one server uses (8 nodes x 8 today); the planner's work grows with the count.
MAX_GPUS = 1024
MAX_GPU_GIB = 4096  # a custom GPU's memory: 1 GiB to 4 TiB
_HARDWARE_HINT = (
    "plan for declared GPUs with --hardware 2xH200 (or 2x48GiB@8.9), or use the tiny profile on the CPU"
)


def catalog_names() -> list[str]:
    return [model.name for model in GPU_CATALOG]


def find_model(name: str) -> GpuModel | None:
    key = name.strip().lower().replace(" ", "")
    for model in GPU_CATALOG:
        if key == model.name.lower():
            return model
    return None


def parse_hardware(spec: str) -> Inventory:
    """A declared inventory: `2xH200`, `8xH100-80GB`, `2x8xH100-80GB` (2 nodes of 8), `2x48GiB@8.9`, or
    `cpu` (no GPU); idle GPUs."""
    if spec.strip().lower() == "cpu":
        return Inventory(gpus=(), source="declared")
    known = ", ".join(catalog_names())
    shown = quoted(spec)
    match = _COUNT_RE.match(spec)
    if not match:
        raise UsageError(
            f"--hardware {shown}: expected COUNTxGPU or NODESxCOUNTxGPU, e.g. 2xH200 or 2x8xH100-80GB",
            f"known GPUs: {known}; custom: 2x48GiB@8.9 (memory in GiB or GB, compute capability); or cpu",
        )
    numbers = [_count(text) for text in match.groups()[:2] if text is not None]
    nodes, count = numbers if len(numbers) == 2 else (1, numbers[0])
    if not 1 <= count <= MAX_GPUS or not 1 <= nodes * count <= MAX_GPUS:
        raise UsageError(
            f"--hardware {shown}: the GPU count must be 1 to {MAX_GPUS}",
            "for no GPU: --hardware cpu"
            if count < 1
            else "declare the GPUs one deployment uses (NODESxCOUNTxGPU)",
        )
    name = match.group(3)
    model = find_model(name)
    if model is None:
        custom = _CUSTOM_RE.match(name)
        if not custom:
            raise UsageError(
                f"--hardware {shown}: unknown GPU {quoted(name, 40)}",
                f"known GPUs: {known}; or a custom one: {count}x48GiB@8.9 (memory, compute capability)",
            )
        size, unit, major, minor = custom.groups()
        memory = int(float(size) * (GiB if unit.lower() == "gib" else 10**9))
        if not GiB <= memory <= MAX_GPU_GIB * GiB:
            raise UsageError(
                f"--hardware {shown}: GPU memory must be 1 to {MAX_GPU_GIB} GiB", "e.g. 2x48GiB@8.9"
            )
        model = GpuModel(name, name, memory, f"{int(major)}.{int(minor)}")
    gpus = tuple(
        Gpu(
            index=i,
            name=model.name,
            uuid="",
            memory_total=model.memory_total,
            memory_free=model.memory_total - model.memory_reserved,
            memory_used=model.memory_reserved,
            compute_capability=model.compute_capability,
            memory_reserved=model.memory_reserved,
        )
        for i in range(count)
    )
    if count > model.per_node:
        # A node holds per_node GPUs: 16xH100 is two nodes, and a TP 16 over "one node" cannot start.
        need = -(-count // model.per_node)
        each = count // need if count % need == 0 else model.per_node
        raise HardwareError(
            f"--hardware {shown}: one node holds at most {model.per_node} {model.name} GPUs, not {count}",
            f"declare nodes x GPUs per node: --hardware {nodes * need}x{each}x{model.name}",
        )
    return Inventory(gpus=gpus, source="declared", nodes=nodes)


def _count(text: str) -> int:
    """A count of the grammar: at most 5 digits, else one past the limit (refused by the caller)."""
    return int(text) if len(text) <= 5 else MAX_GPUS + 1


# A compute capability as profiles and --hardware write it, "9.0": a few ASCII digits a side, so that
# int() never meets '٣' or a 5,000-digit part (it refuses past 4,300 digits).
CAPABILITY_RE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")


def capability_key(text: str) -> tuple[int, ...]:
    """A compute capability ("9.0", "10.0") as a sortable (major, minor); (0,) when it is not one."""
    if not CAPABILITY_RE.fullmatch(text):
        return (0,)
    major, minor = text.split(".")
    return (int(major), int(minor))


def quoted(text: str, limit: int = 60) -> str:
    """User text in a one-line message: quoted, control characters escaped, cut when long."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."


def cpu_inventory() -> Inventory:
    """No GPU: the host's memory and usable CPUs, for the CPU path (vLLM's CPU build)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 0
    return Inventory(gpus=(), source="cpu", host_memory_total=memory, host_cpus=cpus)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_inventory() -> Inventory:
    """The GPUs this process may use, from NVML, honouring CUDA_VISIBLE_DEVICES."""
    try:
        import pynvml
    except ImportError as err:
        raise HardwareError(f"cannot read GPUs: pynvml is not installed ({err})", _HARDWARE_HINT) from err
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        raise HardwareError(
            f"cannot read GPUs: no NVIDIA driver or NVML here ({err})", _HARDWARE_HINT
        ) from err
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        gpus = tuple(_read_gpu(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount()))
    except pynvml.NVMLError as err:
        raise HardwareError(f"NVML failed while reading the GPUs: {err}", "check `nvidia-smi`") from err
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    visible = visible_gpus(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return Inventory(
        gpus=visible,
        source="nvml",
        driver_version=driver,
        cuda_driver_version=f"{cuda // 1000}.{cuda % 1000 // 10}",
    )


def _read_gpu(pynvml, index: int) -> Gpu:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        reserved = int(pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2).reserved)
    except (pynvml.NVMLError, AttributeError):  # older drivers: no v2, CUDA's total is NVML's
        reserved = 0
    major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    return Gpu(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        memory_total=int(memory.total),
        memory_free=int(memory.free),
        memory_used=int(memory.used),
        compute_capability=f"{major}.{minor}",
        processes=_read_processes(pynvml, handle),
        memory_reserved=reserved,
    )


def _read_processes(pynvml, handle) -> tuple[GpuProcess, ...]:
    found: dict[int, GpuProcess] = {}
    for query in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
        try:
            procs = query(handle)
        except pynvml.NVMLError:
            continue
        for proc in procs:
            try:
                name = _text(pynvml.nvmlSystemGetProcessName(proc.pid))
            except pynvml.NVMLError:
                name = ""  # another user's process, or one that just ended
            found[proc.pid] = GpuProcess(int(proc.pid), name, int(proc.usedGpuMemory or 0))
    return tuple(found[pid] for pid in sorted(found))


def visible_gpus(gpus: tuple[Gpu, ...], cuda_visible: str | None) -> tuple[Gpu, ...]:
    """Apply CUDA_VISIBLE_DEVICES the way CUDA does: indices or (prefixes of) UUIDs, in the order given;
    the list ends at the first entry that names no GPU; an empty value hides all GPUs."""
    if cuda_visible is None:
        return gpus
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in cuda_visible.split(",")):
        if entry.upper().startswith("MIG-"):
            raise HardwareError(
                f"CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); dsv4serve plans whole GPUs only",
                "set CUDA_VISIBLE_DEVICES to GPU indices or GPU-... UUIDs",
            )
        gpu = match_gpu(gpus, entry)
        if gpu is None or gpu in chosen:
            break
        chosen.append(gpu)
    return tuple(chosen)


def match_gpu(gpus: tuple[Gpu, ...], token: str) -> Gpu | None:
    """The GPU an index or a unique UUID (prefix) names, as CUDA_VISIBLE_DEVICES and --gpus read it."""
    if not token:
        return None
    if INDEX_RE.match(token):
        return next((g for g in gpus if g.index == int(token)), None)
    want = token.lower().removeprefix("gpu-")
    hits = [g for g in gpus if g.uuid and g.uuid.lower().removeprefix("gpu-").startswith(want)]
    return hits[0] if len(hits) == 1 else None
