"""`bench`: load a running server and keep its figures (`bench NAME|URL`), list them, compare two runs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsv4serve.commands.options import ApiKeyFileOpt, JsonOpt


def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _levels_table(levels: list[dict]) -> list[str]:
    head = (
        ("CONC", 5),
        ("REQ", 5),
        ("ERR", 4),
        ("TOK/S", 9),
        ("REQ/S", 7),
        ("TTFT ms", 9),
        ("p99", 9),
        ("TPOT ms", 8),
        ("p99", 8),
    )
    lines = [" ".join(f"{name:>{width}}" for name, width in head) + " ACCEPT"]
    for lv in levels:
        lines.append(
            f"{lv['concurrency']:>5} {lv['requests']:>5} {lv['errors']:>4} {_cell(lv['tokens_per_s']):>9} "
            f"{_cell(lv['requests_per_s'], 2):>7} {_cell(lv['ttft_mean_ms']):>9} "
            f"{_cell(lv['ttft_p99_ms']):>9} "
            f"{_cell(lv['tpot_mean_ms'], 2):>8} {_cell(lv.get('tpot_p99_ms'), 2):>8} "
            f"{_cell(lv['acceptance_rate'], 3)}"
        )
    return lines


def _about(run: dict) -> str:
    import time

    engine = f"{run['engine']} {run['engine_version']}".strip()
    what = f"in {run['input_len']}" if run["input_len"] else f"dataset {run['dataset']}"
    extra = "".join(f", {k} {run[k]}" for k in ("gpus", "plan_digest", "label") if run.get(k))
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(run["at"]))
    how = f"{run['client']} client, {what} out {run['output_len']}{extra}"
    return f"#{run['id']} {stamp} {run['target']} ({run['model']}, {engine}; {how})"


def _note(text: str) -> None:
    """Progress on stderr, so stdout holds only the figures (or their JSON)."""
    import sys

    sys.stderr.write(f"dsv4serve: {text}\n")
    sys.stderr.flush()


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_command(
        target: Annotated[
            str,
            typer.Argument(help="A detached server's NAME or a URL; or `list`, `compare` or `plot`."),
        ],
        runs: Annotated[
            Optional[list[int]],  # noqa: UP045
            typer.Argument(help="compare: the two run ids; plot: the runs to draw."),
        ] = None,
        concurrency: Annotated[
            str, typer.Option("--concurrency", help="Requests in flight, per level.")
        ] = "1,8,64",
        input_len: Annotated[
            int, typer.Option("--input-len", min=1, max=1_000_000, help="Prompt tokens.")
        ] = 128,
        output_len: Annotated[
            int, typer.Option("--output-len", min=1, max=1_000_000, help="Output tokens.")
        ] = 64,
        num_prompts: Annotated[
            Optional[int],  # noqa: UP045
            typer.Option(
                "--num-prompts", min=1, max=100_000, help="Requests per level (default: 4 x it, >= 8)."
            ),
        ] = None,
        dataset: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option("--dataset", help='Prompts from a JSONL file of {"prompt": ...} lines.'),
        ] = None,
        client: Annotated[
            str,
            typer.Option(
                "--client", help="auto (vllm bench serve where vLLM serves and is installed), vllm, own."
            ),
        ] = "auto",
        model: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option("--model", help="The served model (default: the server's)."),
        ] = None,
        label: Annotated[str, typer.Option("--label", help="A note kept with the run.")] = "",
        plot_file: Annotated[
            Optional[str],  # noqa: UP045
            typer.Option(
                "--plot", "-o", help="Write a PNG of the runs: throughput and latency against concurrency."
            ),
        ] = None,
        api_key_file: ApiKeyFileOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Measure a running server (TTFT, TPOT, tokens/s, requests/s, errors, speculative acceptance) at each
        concurrency and keep the run; `bench list` shows the runs, `bench compare A B` the ratios B/A,
        `bench plot RUN... -o FILE.png` draws runs over each other."""
        from dsv4serve.bench import run as bench_run
        from dsv4serve.bench import store
        from dsv4serve.errors import UsageError
        from dsv4serve.render import console, print_json

        out = console()
        if plot_file is not None:
            from dsv4serve.bench import plot

            if target == "list":
                raise UsageError("bench list draws no plot", "`dsv4serve bench plot RUN... -o FILE.png`")
            plot.check_file(plot_file)  # before minutes of measuring
        if target == "plot":
            if not runs or plot_file is None:
                raise UsageError(
                    "bench plot needs run ids and -o FILE.png",
                    "see `dsv4serve bench list`: bench plot 3 5 -o bench.png",
                )
            drawn = bench_run.stored(runs)
            written = plot.write(drawn, plot_file)
            if as_json:
                print_json({"plot": str(written), "runs": [run["id"] for run in drawn]})
                return
            ids = ", ".join(f"#{run['id']}" for run in drawn)
            out.print(f"wrote {written} ({ids})", markup=False, crop=False, overflow="ignore")
            return
        if target == "list":
            found = store.runs()
            if as_json:
                print_json({"runs": found, "store": str(store.path())})
                return
            if not found:
                out.print("no benchmark runs yet (`dsv4serve bench NAME|URL`)", markup=False)
            for run in found:
                out.print(_about(run), markup=False, crop=False, overflow="ignore")
                for line in _levels_table(run["levels"]):
                    out.print("  " + line, markup=False, crop=False, overflow="ignore")
            return
        if target == "compare":
            if not runs or len(runs) != 2:
                raise UsageError(
                    "bench compare needs two run ids", "see `dsv4serve bench list`: bench compare 3 5"
                )
            result = bench_run.compare(runs[0], runs[1])
            if plot_file is not None:
                _note(f"wrote {plot.write([result['a'], result['b']], plot_file)}")
            if as_json:
                print_json(result)
                return
            out.print(f"A: {_about(result['a'])}", markup=False, crop=False, overflow="ignore")
            out.print(f"B: {_about(result['b'])}", markup=False, crop=False, overflow="ignore")
            out.print(
                f"{'CONC':>5} " + " ".join(f"{label:>12}" for _, label, _ in bench_run.FIGURES) + "   (B/A)",
                markup=False,
            )
            for row in result["levels"]:
                cells = " ".join(f"{_cell(row['ratio'][key], 3):>12}" for key, _, _ in bench_run.FIGURES)
                out.print(f"{row['concurrency']:>5} {cells}", markup=False, crop=False, overflow="ignore")
            return
        if runs:
            raise UsageError(
                f"unexpected argument {runs[0]} after {target}", "`dsv4serve bench NAME|URL [options]`"
            )
        from dsv4serve.service import keys
        from dsv4serve.service.target import resolve

        levels = bench_run.parse_concurrency(concurrency)
        api_key = keys.read_api_key(api_key_file)
        found = resolve(target, "127.0.0.1", 8000, model, api_key)

        run = bench_run.bench(
            found,
            concurrency=levels,
            input_len=input_len,
            output_len=output_len,
            num_prompts=num_prompts,
            dataset=dataset,
            client=client,
            label=label,
            api_key=api_key,
            say=_note,
        )
        if plot_file is not None:
            _note(f"wrote {plot.write([run], plot_file)}")
        if as_json:
            print_json(run)
            return
        out.print(_about(run), markup=False, crop=False, overflow="ignore")
        for line in _levels_table(run["levels"]):
            out.print("  " + line, markup=False, crop=False, overflow="ignore")
