"""`export systemd | compose | kubernetes PROFILE`: the plan as a unit file or container manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dsv4serve.commands.engine_options import EngineOpt, QuantOpt, RamOpt, ThinkingOpt, engine_options
from dsv4serve.commands.options import (
    CudaGraphsOpt,
    GpusOpt,
    HardwareOpt,
    HostOpt,
    MasterAddrOpt,
    MaxModelLenOpt,
    NodeRankOpt,
    NodesOpt,
    PortOpt,
    ProfileArg,
    ProfileDirOpt,
    StrategyOpt,
    WarmupOpt,
)
from dsv4serve.planning.types import DEFAULT_HOST, DEFAULT_PORT

FormatArg = Annotated[str, typer.Argument(help="systemd, compose or kubernetes.", metavar="FORMAT")]
OutputOpt = Annotated[
    Optional[Path],  # noqa: UP045 - typer needs Optional here
    typer.Option("--output", "-o", help="Write to this file (default: stdout).", dir_okay=False),
]
ImageOpt = Annotated[
    str,
    typer.Option("--image", help="Container image with vLLM and dsv4serve installed (compose, kubernetes)."),
]
BinOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--bin", help="The dsv4serve the systemd unit runs (default: this one's absolute path)."),
]
DEFAULT_IMAGE = "dsv4serve:latest"


def _this_executable() -> tuple[str, ...]:
    """The dsv4serve entry point next to this interpreter (a venv's bin/), else the interpreter itself."""
    import sys

    script = Path(sys.executable).parent / "dsv4serve"
    return (str(script),) if script.exists() else (sys.executable, "-m", "dsv4serve")


def _llama_server() -> str | None:
    from dsv4serve.engines.llamacpp.binary import find_server

    return find_server()


def _source(fmt: str, profile: str, given: dict) -> str:
    """The export command line for the header: the options the user gave, in a fixed order."""
    import shlex

    words = ["dsv4serve", "export", fmt, profile]
    for flag, value in given.items():
        if value is True:
            words.append(flag)
        elif value not in (None, False):
            words += [flag, str(value)]
    return shlex.join(words)


def _up_options(max_model_len, cuda_graphs, warmup, ram=None, thinking=None) -> list[str]:
    """The planning options the user gave, for the exported `up` to plan with the same (the engine and
    llama.cpp's quant are the plan's, pinned by make_deployment)."""
    options = []
    if max_model_len is not None:
        options += ["--max-model-len", str(max_model_len)]
    if cuda_graphs is not None:
        options.append("--cuda-graphs" if cuda_graphs else "--enforce-eager")
    if warmup is not None:
        options += ["--warmup", warmup]
    if ram is not None:  # the RAM the plan was made for: `up` in a container would read the host's
        options += ["--ram", f"{ram:g}"]
    if thinking is not None:
        options.append("--thinking" if thinking else "--no-thinking")
    return options


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        fmt: FormatArg,
        profile: ProfileArg,
        gpus: GpusOpt = None,
        hardware: HardwareOpt = None,
        port: PortOpt = DEFAULT_PORT,
        host: HostOpt = DEFAULT_HOST,
        max_model_len: MaxModelLenOpt = None,
        cuda_graphs: CudaGraphsOpt = None,
        warmup: WarmupOpt = None,
        nodes: NodesOpt = None,
        node_rank: NodeRankOpt = 0,
        master_addr: MasterAddrOpt = None,
        strategy: StrategyOpt = None,
        engine: EngineOpt = None,
        quant: QuantOpt = None,
        ram: RamOpt = None,
        thinking: ThinkingOpt = None,
        image: ImageOpt = DEFAULT_IMAGE,
        bin_path: BinOpt = None,
        output: OutputOpt = None,
        profile_dir: ProfileDirOpt = None,
    ) -> None:
        """Write a systemd unit, a Compose file or Kubernetes manifests that run `dsv4serve up PROFILE`
        (vLLM, llama.cpp or Transformers: --engine; the plan's engine and quant are pinned)."""
        import os
        import sys

        from dsv4serve.errors import UsageError
        from dsv4serve.export import FORMATS
        from dsv4serve.export.spec import make_deployment, weights_bytes
        from dsv4serve.preflight.engine_choice import plan_for_engine
        from dsv4serve.preflight.nodes import NodeOptions, check
        from dsv4serve.preflight.options import ensure_fits
        from dsv4serve.serving.health import default_watch
        from dsv4serve.serving.ready import startup_timeout

        if fmt not in FORMATS:
            raise UsageError(f"export {fmt!r}: unknown format", f"use one of {', '.join(FORMATS)}")
        # The rank is checked against the plan's nodes below: --hardware 2x8x... declares them too.
        node_options = check(NodeOptions(nodes, 0, master_addr, strategy=strategy), starting=False)
        options = _up_options(max_model_len, cuda_graphs, warmup, ram, thinking)
        loaded, plan = plan_for_engine(
            profile,
            engine_options(engine, quant, ram, thinking),
            profile_dirs=tuple(profile_dir or ()),
            gpus=gpus,
            hardware=hardware,
            max_model_len=max_model_len,
            host=host,
            port=port,
            cuda_graphs=cuda_graphs,
            warmup=warmup,
            node_options=node_options,
        )
        if not plan.fits:  # ensure_fits's message points at the problems "above": show them
            sys.stderr.write("".join(f"problem: {p}\n" for p in plan.problems))
        ensure_fits(plan)  # exporting a start that cannot succeed helps nobody (exit 3)
        # A profile given as a file is named by its absolute path: the unit does not run where we are.
        named = (
            str(Path(profile).resolve())
            if os.sep in profile or profile.endswith((".yaml", ".yml"))
            else profile
        )
        dep = make_deployment(
            loaded,
            plan,
            profile_arg=named,
            gpus=gpus,
            host=host,
            port=port,
            up_options=options,
            startup_timeout_s=startup_timeout(loaded.serve.startup_timeout_s, weights_bytes(loaded, plan)),
            stall_s=default_watch(plan).stall_s,
            source=_source(
                fmt,
                profile,
                {
                    "--gpus": gpus,
                    "--hardware": hardware,
                    "--port": port if port != DEFAULT_PORT else None,
                    "--host": host if host != DEFAULT_HOST else None,
                    "--nodes": nodes,
                    "--node-rank": node_rank or None,
                    "--master-addr": master_addr,
                    "--strategy": strategy,
                    "--engine": engine,
                    "--quant": quant,
                },
            )
            + (" " + " ".join(options) if options else ""),
        )
        if node_rank >= dep.nodes:
            raise UsageError(
                f"--node-rank {node_rank}: the plan has {dep.nodes} node(s), ranks 0 to {dep.nodes - 1}",
                "export one unit per node: --node-rank 0, 1, ...",
            )
        if fmt == "systemd":
            import getpass

            from dsv4serve.export.systemd import render_unit

            if dep.nodes > 1 and not master_addr:
                raise UsageError(
                    f"export systemd: the plan spans {dep.nodes} nodes; each node's unit needs --master-addr",
                    f"e.g. --node-rank {node_rank} --master-addr 10.0.0.1, once per node",
                )
            text = render_unit(
                dep,
                executable=(bin_path,) if bin_path else _this_executable(),
                user=getpass.getuser(),
                environ=os.environ,
                home=os.path.expanduser("~"),
                node_rank=node_rank,
                master_addr=master_addr,
                llama_server=_llama_server() if dep.engine == "llama.cpp" else None,
            )
        elif fmt == "compose":
            from dsv4serve.export.compose import render_compose

            text = render_compose(dep, image=image)
        else:
            from dsv4serve.export.kubernetes import render_kubernetes

            text = render_kubernetes(dep, image=image)
        if output is None:
            sys.stdout.write(text)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as err:
            raise UsageError(
                f"cannot write {output}: {err.strerror or err}", "choose another -o path"
            ) from err
        sys.stderr.write(f"dsv4serve: wrote {output}\n")
