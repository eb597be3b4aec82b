"""A Compose file: a one-shot download service, then `dsv4serve up` with its GPUs, caches and health check."""

from __future__ import annotations

from dsv4serve.errors import UsageError
from dsv4serve.export.spec import (
    API_KEY_VAR,
    CONTAINER_CACHE,
    CONTAINER_DSV4SERVE,
    CONTAINER_HF_HOME,
    CONTAINER_HOST,
    HF_TOKEN_VAR,
    SHM_SIZE_GIB,
    START_MARGIN_S,
    STOP_TIMEOUT_S,
    Deployment,
    download_argv,
    dump_yaml,
    header,
    image_lines,
    memory_line,
    up_argv,
)

HUB_VOLUME = "hf-hub"
CACHE_VOLUME = "dsv4serve-cache"


def health_test(port: int) -> list[str]:
    """/health from inside the container, with the Python every image with dsv4serve has (no curl needed)."""
    code = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5)"
    return ["CMD", "python3", "-c", code]


def render_compose(dep: Deployment, *, image: str) -> str:
    """The Compose file's text (one node; a plan of several nodes is refused with the way out)."""
    if dep.nodes > 1:
        raise UsageError(
            f"export compose: the plan spans {dep.nodes} nodes and Compose runs on one host",
            "use `dsv4serve export kubernetes` (LeaderWorkerSet) or `export systemd --node-rank N` per node",
        )
    env = {
        "HF_HOME": CONTAINER_HF_HOME,
        "XDG_CACHE_HOME": CONTAINER_CACHE,
        # Interpolated by Compose from the shell or an .env file when it starts: never written here.
        HF_TOKEN_VAR: f"${{{HF_TOKEN_VAR}:-}}",
    }
    volumes = [f"{HUB_VOLUME}:{CONTAINER_HF_HOME}", f"{CACHE_VOLUME}:{CONTAINER_DSV4SERVE}"]
    server: dict = {
        "image": image,
        "command": up_argv(dep, gpus=str(dep.gpu_count), host=CONTAINER_HOST),
        "init": True,  # `up` is not PID 1's reaper
        "environment": {
            **env,
            API_KEY_VAR: f"${{{API_KEY_VAR}:?set {API_KEY_VAR}: the key clients must send}}",
        },
        "ports": [f"{dep.host}:{dep.port}:{dep.port}"],
        "volumes": volumes,
        **({"shm_size": f"{SHM_SIZE_GIB}gb"} if dep.shm else {}),  # vLLM's workers share /dev/shm
        "healthcheck": {
            "test": health_test(dep.port),
            "interval": "30s",
            "timeout": "10s",
            "retries": 3,
            # The engine answers /health only once up, which `up` gives this long (and exits 5 after it).
            "start_period": f"{dep.startup_timeout_s + START_MARGIN_S}s",
            "start_interval": "10s",
        },
        "restart": "on-failure",
        "stop_grace_period": f"{STOP_TIMEOUT_S}s",
    }
    resources: dict = {}
    if dep.ram_bytes:
        resources["limits"] = {"memory": f"{dep.memory_limit_mib}m"}
        resources["reservations"] = {"memory": f"{dep.memory_request_mib}m"}
    if dep.gpu_count:  # only a plan that puts work on GPUs reserves them (not llama.cpp's -ngl 0)
        device: dict = {"driver": "nvidia", "capabilities": ["gpu"]}
        if dep.gpu_ids:  # the host's GPUs the user named; inside they are 0..N-1
            device["device_ids"] = list(dep.gpu_ids)
        else:
            device["count"] = dep.gpu_count
        resources.setdefault("reservations", {})["devices"] = [device]
    if resources:
        server["deploy"] = {"resources": resources}
    services: dict = {}
    if dep.downloads:
        services["download"] = {
            "image": image,
            "command": download_argv(dep),
            "environment": env,
            "volumes": volumes,
            "restart": "no",
        }
        server["depends_on"] = {"download": {"condition": "service_completed_successfully"}}
    services[dep.name] = server
    doc = {"name": dep.name, "services": services, "volumes": {HUB_VOLUME: {}, CACHE_VOLUME: {}}}
    lines = header(dep) + image_lines(dep, image) + memory_line(dep)
    lines += [
        f"# Start: {API_KEY_VAR}=... docker compose up -d",
        "",
    ]
    return "\n".join(lines) + dump_yaml([doc])
