"""What one `route` was given, checked before anything starts: each upstream a URL or a server to start."""

from __future__ import annotations

from collections.abc import Mapping

from dsv4serve.errors import LaunchError, UsageError
from dsv4serve.router.pair import Member, is_url
from dsv4serve.router.upstreams import Upstream, make_upstream

NAMES = ("flash", "pro")
PAIR_HINT = (
    "start both with the router: dsv4serve route --flash flash --pro pro; "
    "or point it at running servers: --flash http://127.0.0.1:8001 --pro http://127.0.0.1:8002"
)


def require_upstreams(flash: str | None, pro: str | None, serving: bool) -> None:
    """Flash always (it classifies every request), Pro to serve (--explain can do without)."""
    if not flash:
        raise UsageError("--flash is required: Flash classifies every request", PAIR_HINT)
    if serving and not pro:
        raise UsageError("--pro is required to serve", PAIR_HINT)


def members_to_start(
    given: Mapping[str, str],
    ports: Mapping[str, int],
    gpus: Mapping[str, str | None],
    port: int,
    hardware: str | None,
    dry_run: bool,
) -> list[Member]:
    """The upstreams given as profiles, as the members the router starts (each on ports[name], with
    gpus[name]); --dry-run and --hardware only with one, and every port apart from the router's."""
    members = [Member(n, given[n], ports[n], gpus[n]) for n in NAMES if not is_url(given[n])]
    if (hardware or dry_run) and not members:
        raise UsageError("--dry-run and --hardware plan servers the router starts: give a profile")
    if hardware and not dry_run:
        raise UsageError("--hardware only plans: add --dry-run", "GPUs that are declared cannot serve")
    used = [port, *(m.port for m in members)]
    if len(set(used)) < len(used):
        raise UsageError(
            f"the router and the servers it starts need ports of their own, not {used}",
            "set --port, --flash-port and --pro-port apart",
        )
    return members


def upstreams(
    given: Mapping[str, str],
    models: Mapping[str, str | None],
    key_files: Mapping[str, str | None],
    started=None,
) -> dict[str, Upstream]:
    """Each upstream: a given URL (with its --*-model and key), else the started member's local server
    (started: router.pair.Pair)."""
    return {
        n: make_upstream(n, given[n], models[n], key_files[n]) if is_url(given[n]) else started.upstream(n)
        for n in NAMES
    }


def explain_running(
    profile,
    given: Mapping[str, str | None],
    models: Mapping[str, str | None],
    key_files: Mapping[str, str | None],
    prompt: str,
    tools: bool,
):
    """--explain: one decision asked of running servers (URLs; Pro optional), as server.explain makes
    it. A Flash that does not answer is a LaunchError: the router would answer 502, not route."""
    from dsv4serve.router.server import explain

    flash, pro = given["flash"], given["pro"]
    if not is_url(flash) or (pro and not is_url(pro)):
        raise UsageError("--explain asks running servers: give --flash (and --pro) as URLs")
    up_flash = make_upstream("flash", flash, models["flash"], key_files["flash"])
    up_pro = make_upstream("pro", pro, models["pro"], key_files["pro"]) if pro else None
    result = explain(profile, up_flash, up_pro, prompt, tools)
    if result.flash_model is None:
        raise LaunchError(
            f"flash at {up_flash.base_url} does not answer /v1/models",
            "start it first, or check --flash and its key",
        )
    return result
