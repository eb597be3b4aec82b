"""prepare_launch for llama.cpp and Transformers: their installed release, their weights, their spec.

- llama.cpp: the chosen quant's GGUF files only (weights/gguf.py), planned again with the hub's listing
  before the first byte and with the files on disk after; a checkpoint without a GGUF repo (tiny-v4)
  is converted by llama.cpp's converter. The server gets the GGUF's first shard.
- Transformers: the checkpoint as vLLM would get it (weights/fetch.py), loaded from its directory; its
  hub cache must exist (else /v1/models answers 500), and it stays offline.
"""

from __future__ import annotations

import dataclasses

from dsv4serve.serving.spec import LaunchSpec


def prepare_other(
    profile_name: str, profile, plan, engine_options, options: dict, timeout, allow_download: bool, progress
):
    """(plan, LaunchSpec) of a llama.cpp or Transformers server whose plan was made."""
    from dsv4serve.engines.base import get_engine
    from dsv4serve.preflight.engine_choice import EngineOptions, plan_for_engine
    from dsv4serve.preflight.options import ensure_fits
    from dsv4serve.redact import register as register_secrets
    from dsv4serve.redact import secret_values
    from dsv4serve.serving.launch_args import arg_value, log_path
    from dsv4serve.serving.ready import startup_timeout

    engine = get_engine(plan.engine)
    engine.require_version(None, engine.installed_version(), profile.name)  # before any download
    options = {k: v for k, v in options.items() if k in _PLAN_KEYS}
    chosen = dataclasses.replace(engine_options or EngineOptions(), engine=plan.engine)
    if plan.engine == "llama.cpp":
        chosen = dataclasses.replace(chosen, quant=plan.engine_plan.quant)

    def again(**more):
        return plan_for_engine(profile_name, chosen, starting=True, **options, **more)[1]

    if plan.engine == "llama.cpp":
        from dsv4serve.weights.gguf import fetch_gguf

        ep = plan.engine_plan
        if ep.weights_exact:
            ensure_fits(plan)
        sized: dict[str, int] = {}

        def replan(total: int) -> None:
            sized[ep.quant] = total
            ensure_fits(again(sizes=dict(sized)))

        result = fetch_gguf(
            profile,
            ep.quant,
            ep.pattern,
            allow_download=allow_download,
            progress=progress,
            before_download=None if ep.weights_exact else replan,
        )
        if ep.repo is None:  # converted: its size is the file's
            sized["converted"] = result.path.stat().st_size
        plan = again(model_location=str(result.path), sizes=sized or None)
        weights = plan.engine_plan.weights_bytes
    else:
        from dsv4serve.weights.fetch import fetch_weights

        ensure_fits(plan)
        path = fetch_weights(profile, allow_download=allow_download, progress=progress)
        plan = again(model_location=str(path))
        weights = profile.model.weights_bytes
    ensure_fits(plan)
    env = dict(plan.env)
    env.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: nothing reaches for the hub
    if plan.engine == "transformers":
        from dsv4serve.weights.fetch import hub_settings

        env.setdefault("HF_HUB_CACHE", str(hub_settings().cache_dir))
    engine.prepare(tuple(env.items()))
    register_secrets(secret_values(plan.env, plan.args))
    alias = arg_value(plan.args, "-a")
    spec = LaunchSpec(
        argv=engine.launch_argv(plan.args),
        host=arg_value(plan.args, "--host") or options.get("host", "127.0.0.1"),
        port=int(arg_value(plan.args, "--port") or options.get("port", 8000)),
        # llama-server answers to its alias; transformers serve only to the model it pinned, as given
        served_model_name=alias or plan.model,
        startup_timeout_s=startup_timeout(profile.serve.startup_timeout_s, weights, timeout),
        env=env,
        log_path=log_path(profile.name),
        engine=plan.engine,
    )
    return plan, spec


# prepare_launch's options that the llama.cpp and Transformers planners take
_PLAN_KEYS = ("profile_dirs", "gpus", "hardware", "max_model_len", "host", "port", "extra_args")
