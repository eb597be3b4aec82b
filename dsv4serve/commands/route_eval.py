"""`dsv4serve route eval`: the routing measured on labelled prompts (thin over dsv4serve.router)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dsv4serve.commands.options import FlashKeyFileOpt, FlashModelOpt, JsonOpt, ProKeyFileOpt, UrlOpt


def eval_click_command():
    """`route eval` as a click command of its own (RouteCommand hands it the arguments after `eval`)."""
    sub = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    sub.command("eval")(eval_command)
    return typer.main.get_command(sub)


def eval_command(
    dataset: Annotated[
        str,
        typer.Argument(
            metavar="DATASET",
            help="JSONL of {prompt or messages, level: simple|complex, kind?}; or `builtin`.",
        ),
    ],
    flash: Annotated[
        UrlOpt, typer.Option("--flash", metavar="URL", help="Flash's URL: it classifies.")
    ] = None,
    pro: Annotated[
        UrlOpt,
        typer.Option("--pro", metavar="URL", help="Pro's URL (its max_model_len; never sent prompts)."),
    ] = None,
    router_profile: Annotated[
        str, typer.Option("--router-profile", help="Router profile: a name or a YAML path.")
    ] = "default",
    flash_model: FlashModelOpt = None,
    flash_key_file: FlashKeyFileOpt = None,
    pro_key_file: ProKeyFileOpt = None,
    price: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--price",
            metavar="MODEL=PRICE",
            help="flash=IN/OUT per million tokens, or flash=GPUSgpu@TOKENS_PER_S; once per model "
            "(default: relative, by active parameters).",
        ),
    ] = None,
    completion_tokens: Annotated[
        int, typer.Option("--completion-tokens", min=0, help="Output tokens a request, unless a line says.")
    ] = 300,
    target_pro_share: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(
            "--target-pro-share",
            metavar="SHARE",
            min=0.0,
            max=1.0,
            help="Calibrate classifier.threshold for it.",
        ),
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", min=1, max=256, help="Classifier calls at once (1: clean latency)."),
    ] = 1,
    limit: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--limit", min=1, help="Only the first N examples."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the router's decisions on labelled prompts: confusion, Pro share, cost vs always-Pro, latency,
    baselines (always-Flash, always-Pro, a length rule, random), a calibrated threshold."""
    from dsv4serve.errors import UsageError
    from dsv4serve.render import print_json
    from dsv4serve.router import eval_dataset, eval_prices, eval_render, eval_report, evaluate
    from dsv4serve.router.profile import load_router_profile
    from dsv4serve.router.server import require_stack
    from dsv4serve.router.upstreams import make_upstream

    require_stack()
    if not flash:
        raise UsageError(
            "--flash is required: Flash classifies every prompt", "e.g. --flash http://127.0.0.1:8001"
        )
    profile = load_router_profile(router_profile)
    prices = eval_prices.parse_prices(price)
    name, examples = eval_dataset.load_dataset(dataset)
    examples = examples[:limit] if limit else examples
    up_flash = make_upstream("flash", flash, flash_model, flash_key_file)
    up_pro = make_upstream("pro", pro, None, pro_key_file) if pro else None
    outcomes = evaluate.evaluate(profile, up_flash, up_pro, examples, concurrency)
    result = eval_report.report(examples, outcomes, prices, completion_tokens, target_pro_share)
    if as_json:
        print_json({"dataset": name, "profile": profile.name, **result})
        return
    for line in eval_render.render(name, profile.name, result):
        print(line)
