"""`vllm bench serve` as the load client where vLLM is installed: one run per concurrency level, its
saved result read back into the same figures as our own client's (figures.Level).

It needs the server's tokenizer for its random prompts: vLLM's /v1/models names the checkpoint it
loaded (`root`), which is used when it is a local directory. The API key goes in its environment
(OPENAI_API_KEY, which it reads), never on its argv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dsv4serve.bench.figures import Level
from dsv4serve.errors import LaunchError
from dsv4serve.serving import health as h

MAIN = ("-m", "vllm.entrypoints.cli.main", "bench", "serve")


def installed() -> bool:
    """vLLM is importable here (found without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def tokenizer_of(base_url: str, model: str, api_key: str | None) -> str:
    """The checkpoint directory the server loaded (vLLM's /v1/models `root`), else the model's name."""
    status, text = h.get_text(base_url + "/v1/models", 10.0, api_key)
    try:
        for entry in json.loads(text)["data"] if status == 200 else ():
            root = entry.get("root") or ""
            if entry.get("id") == model and root and Path(root).is_dir():
                return root
    except (ValueError, KeyError, TypeError):
        pass
    return model


def argv(
    base_url: str,
    model: str,
    tokenizer: str,
    concurrency: int,
    num_prompts: int,
    input_len: int,
    output_len: int,
    dataset: str | None,
    result_dir: str,
) -> list[str]:
    args = [sys.executable, *MAIN, "--backend", "vllm", "--base-url", base_url, "--model", model]
    args += [
        "--tokenizer",
        tokenizer,
        "--num-prompts",
        str(num_prompts),
        "--max-concurrency",
        str(concurrency),
    ]
    if dataset:
        args += [
            "--dataset-name",
            "custom",
            "--dataset-path",
            dataset,
            "--custom-output-len",
            str(output_len),
        ]
        args += ["--skip-chat-template"]
    else:
        args += ["--dataset-name", "random", "--random-input-len", str(input_len)]
        args += ["--random-output-len", str(output_len)]
    args += [
        "--ignore-eos",
        "--disable-tqdm",
        "--percentile-metrics",
        "ttft,tpot",
        "--metric-percentiles",
        "99",
    ]
    args += ["--save-result", "--result-dir", result_dir, "--result-filename", "result.json"]
    return args


def run_level(
    base_url: str,
    model: str,
    concurrency: int,
    num_prompts: int,
    input_len: int,
    output_len: int,
    dataset: str | None = None,
    api_key: str | None = None,
) -> Level:
    """One `vllm bench serve` run at this concurrency; its figures."""
    tokenizer = tokenizer_of(base_url, model, api_key)
    with tempfile.TemporaryDirectory(prefix="dsv4serve-bench-") as tmp:
        cmd = argv(base_url, model, tokenizer, concurrency, num_prompts, input_len, output_len, dataset, tmp)
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "NO_PROXY": "*"}
        if api_key:
            env["OPENAI_API_KEY"] = api_key
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        result = Path(tmp) / "result.json"
        if proc.returncode != 0 or not result.is_file():
            tail = "\n".join("  | " + line for line in (proc.stdout + proc.stderr).splitlines()[-15:])
            raise LaunchError(
                f"`vllm bench serve` failed (exit {proc.returncode}) at concurrency {concurrency}:\n{tail}",
                "--client own measures with dsv4serve's own client",
            )
        data = json.loads(result.read_text())
    return from_result(data, concurrency)


def from_result(data: dict, concurrency: int) -> Level:
    """A `vllm bench serve --save-result` document as a Level."""
    completed, failed = int(data.get("completed", 0)), int(data.get("failed", 0))
    rate = data.get("spec_decode_acceptance_rate")  # percent, where the server reports it

    def ms(key: str) -> float | None:
        value = data.get(key)
        return round(float(value), 2) if value is not None and completed else None

    return Level(
        concurrency=concurrency,
        requests=completed + failed,
        errors=failed,
        duration_s=round(float(data.get("duration", 0.0)), 3),
        output_tokens=int(data.get("total_output_tokens", 0)),
        tokens_per_s=round(float(data.get("output_throughput", 0.0)), 2),
        requests_per_s=round(float(data.get("request_throughput", 0.0)), 3),
        ttft_mean_ms=ms("mean_ttft_ms"),
        ttft_p99_ms=ms("p99_ttft_ms"),
        tpot_mean_ms=ms("mean_tpot_ms"),
        tpot_p99_ms=ms("p99_tpot_ms"),
        acceptance_rate=round(float(rate) / 100, 4) if rate is not None else None,
    )
