"""Kubernetes manifests: a Deployment (one node) or a LeaderWorkerSet (one pod per node), and a Service.

Each pod downloads the weights in an init container (no probe times that), then runs `dsv4serve up`,
whose readiness deadline sizes the start-up probe. The HF token and the API key come from a Secret the
user creates; the manifests only reference it.
"""

from __future__ import annotations

import math

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

HOST_CACHE = "/var/lib/dsv4serve"  # on each GPU node: weights and compiled kernels outlive the pods
PROBE_PERIOD_S = 10
LWS_API = "leaderworkerset.x-k8s.io/v1"


LIVENESS_PERIOD_S = 30
PROBE_TIMEOUT_S = 20  # `dsv4serve probe --timeout`: one token within this, or the probe fails


def _probes(dep: Deployment) -> dict:
    # /health is every engine's (vLLM, llama-server, transformers serve): 200 once the model is loaded.
    health = {"path": "/health", "port": "http"}
    probes: dict = {
        # The engine answers /health once it is up; `up` gives it startup_timeout_s, then exits 5.
        "startupProbe": {
            "httpGet": health,
            "periodSeconds": PROBE_PERIOD_S,
            "failureThreshold": math.ceil((dep.startup_timeout_s + START_MARGIN_S) / PROBE_PERIOD_S),
        },
        "readinessProbe": {"httpGet": health, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5},
    }
    # /health stays 200 while an engine spins with no token (vLLM issues 40969, 41834): liveness asks
    # for a real token, and allows the stall window `up`'s own watch allows before it exits 6.
    # `transformers serve` answers only to the path of the checkpoint it loaded (the pod's own path of a
    # generated checkpoint); where that is unknown, `up`'s health watch (the same token, --on-unhealthy
    # stop: exit 6, then a restart) is the liveness check.
    if dep.probe_model is not None:
        probe = ["dsv4serve", "probe", "--port", str(dep.port), "--model", dep.probe_model]
        probe += ["--timeout", str(PROBE_TIMEOUT_S)]
        probes["livenessProbe"] = {
            "exec": {"command": probe},
            "periodSeconds": LIVENESS_PERIOD_S,
            "timeoutSeconds": PROBE_TIMEOUT_S + 10,
            "failureThreshold": max(3, math.ceil(dep.stall_s / LIVENESS_PERIOD_S)),
        }
    return probes


def _env(dep: Deployment, api_key: bool) -> list[dict]:
    def secret(var: str, key: str, optional: bool) -> dict:
        ref = {"name": dep.name, "key": key, "optional": optional}
        return {"name": var, "valueFrom": {"secretKeyRef": ref}}

    env = [
        {"name": "HF_HOME", "value": CONTAINER_HF_HOME},
        {"name": "XDG_CACHE_HOME", "value": CONTAINER_CACHE},
        secret(HF_TOKEN_VAR, "hf-token", True),  # public repos need none
    ]
    if api_key:
        env.append(secret(API_KEY_VAR, "api-key", False))
    return env


def _mounts(shm: bool) -> list[dict]:
    mounts = [
        {"name": "hf-hub", "mountPath": CONTAINER_HF_HOME},
        {"name": "dsv4serve-cache", "mountPath": CONTAINER_DSV4SERVE},
    ]
    return mounts + ([{"name": "dshm", "mountPath": "/dev/shm"}] if shm else [])


def pod_spec(dep: Deployment, image: str, role: str) -> dict:
    """role: single | leader | worker (a worker runs vLLM headless: no port, no probes, no API key)."""
    serves = role != "worker"
    if role == "single":
        argv = up_argv(dep, gpus=str(dep.gpu_count), host=CONTAINER_HOST)
    else:  # LeaderWorkerSet sets these in every pod; Kubernetes expands $(VAR) in the command
        rank = "0" if role == "leader" else "$(LWS_WORKER_INDEX)"
        argv = up_argv(
            dep, gpus=str(dep.gpu_count), host=CONTAINER_HOST, rank=rank, master_addr="$(LWS_LEADER_ADDRESS)"
        )
    container: dict = {"name": "dsv4serve", "image": image, "command": argv, "env": _env(dep, serves)}
    if serves:
        container["ports"] = [{"name": "http", "containerPort": dep.port}]
    resources: dict = {}
    if dep.ram_bytes:  # the plan's host RAM (llama.cpp: the weights it keeps in RAM, KV, buffers)
        resources["requests"] = {"memory": f"{dep.memory_request_mib}Mi"}
        resources["limits"] = {"memory": f"{dep.memory_limit_mib}Mi"}
    if dep.gpu_count:  # only a plan that puts work on GPUs asks for them (not llama.cpp's -ngl 0)
        resources.setdefault("limits", {})["nvidia.com/gpu"] = dep.gpu_count
    if resources:
        container["resources"] = resources
    container["volumeMounts"] = _mounts(shm=dep.shm)
    if serves:
        container.update(_probes(dep))
    spec: dict = {"terminationGracePeriodSeconds": STOP_TIMEOUT_S}
    if dep.downloads:
        spec["initContainers"] = [
            {
                "name": "download",
                "image": image,
                "command": download_argv(dep),
                "env": _env(dep, api_key=False),
                "volumeMounts": _mounts(shm=False),
            }
        ]
    spec["containers"] = [container]
    spec["volumes"] = [
        {"name": "hf-hub", "hostPath": {"path": f"{HOST_CACHE}/huggingface", "type": "DirectoryOrCreate"}},
        {
            "name": "dsv4serve-cache",
            "hostPath": {"path": f"{HOST_CACHE}/dsv4serve", "type": "DirectoryOrCreate"},
        },
    ]
    if dep.shm:  # vLLM only: a memory-backed emptyDir counts against the pod's memory
        spec["volumes"].append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{SHM_SIZE_GIB}Gi"}}
        )
    return spec


def _template(dep: Deployment, image: str, role: str) -> dict:
    labels = {"app.kubernetes.io/name": dep.name, "dsv4serve/role": role}
    return {"metadata": {"labels": labels}, "spec": pod_spec(dep, image, role)}


def workload(dep: Deployment, image: str) -> dict:
    """The Deployment, or for a plan of several nodes the LeaderWorkerSet (one pod per node)."""
    meta = {"name": dep.name, "labels": {"app.kubernetes.io/name": dep.name}}
    if dep.nodes == 1:
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # the GPUs are held: never two pods at once
                "selector": {"matchLabels": {"app.kubernetes.io/name": dep.name}},
                "template": _template(dep, image, "single"),
            },
        }
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": dep.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",  # one lost node stops the others
                "leaderTemplate": _template(dep, image, "leader"),
                "workerTemplate": _template(dep, image, "worker"),
            },
        },
    }


def service(dep: Deployment) -> dict:
    role = "single" if dep.nodes == 1 else "leader"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": dep.name, "labels": {"app.kubernetes.io/name": dep.name}},
        "spec": {
            "selector": {"app.kubernetes.io/name": dep.name, "dsv4serve/role": role},
            "ports": [{"name": "http", "port": dep.port, "targetPort": "http"}],
        },
    }


def _weights_where(dep: Deployment) -> str:
    if dep.engine == "llama.cpp":
        return (
            "the GGUF converted under dsv4serve/"
            if dep.converts
            else "the quant's GGUF files under huggingface/"
        )
    return "under huggingface/" if dep.downloads else "under dsv4serve/"


def render_kubernetes(dep: Deployment, *, image: str) -> str:
    """The manifests' text: workload and Service (the Secret is made by hand, never written here)."""
    lines = header(dep)
    lines += [
        f"# The Secret {dep.name} (keys api-key, and hf-token for gated repos), from files, not the shell:",
        f"#   kubectl create secret generic {dep.name} \\",
        "#     --from-file=api-key=./api-key --from-file=hf-token=./hf-token",
    ]
    lines += image_lines(dep, image) + memory_line(dep)
    lines.append(f"# Caches: {HOST_CACHE} on each node (the weights: {_weights_where(dep)}).")
    if dep.nodes > 1:
        lines.append(f"# {dep.nodes} nodes: needs the LeaderWorkerSet controller (sigs.k8s.io/lws).")
    return "\n".join(lines) + "\n" + dump_yaml([workload(dep, image), service(dep)])
