"""The engine options of plan, up, smoke and download (one definition each): --engine, --quant, --ram,
--thinking; and the EngineOptions they make (preflight.engine_choice)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

EngineOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means the profile's serve.engine, else auto
    typer.Option(
        "--engine",
        help="vllm, llama.cpp (GGUF: CPUs, Macs, consumer GPUs with experts in RAM), transformers (bf16 "
        "reference) or auto (default: the profile's serve.engine, else vLLM where it can run, else "
        "llama.cpp).",
    ),
]
QuantOpt = Annotated[
    Optional[str],  # noqa: UP045 - None means the largest that fits
    typer.Option(
        "--quant", help="llama.cpp: the GGUF quant to serve (default: the largest that fits RAM + VRAM)."
    ),
]
RamOpt = Annotated[
    Optional[float],  # noqa: UP045 - None means the OS's figure
    typer.Option(
        "--ram", help="Host RAM in GiB to plan llama.cpp/Transformers with (default: this machine's)."
    ),
]
ThinkingOpt = Annotated[
    Optional[bool],  # noqa: UP045 - None means the chat template's default
    typer.Option(
        "--thinking/--no-thinking",
        help="llama.cpp, Transformers: DeepSeek-V4's thinking on or off by default (its reasoning flags); "
        "requests may still ask for either.",
    ),
]


def engine_options(engine=None, quant=None, ram=None, thinking=None):
    """The options as preflight.engine_choice.EngineOptions."""
    from dsv4serve.preflight.engine_choice import EngineOptions

    return EngineOptions(engine=engine, quant=quant, ram_gib=ram, thinking=thinking)
