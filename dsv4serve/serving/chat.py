"""One chat request against a running server: smoke's check, and the curl line `up` prints when ready."""

from __future__ import annotations

import shlex
import time

SMOKE_PROMPT = "Say hello in five words."


def curl_line(base_url: str, model: str, keyed: bool = False, thinking_off: bool = False) -> str:
    """A pasteable curl of one chat completion (a keyed server's names $DSV4SERVE_API_KEY). thinking_off:
    DeepSeek-V4 under vLLM 0.28+ thinks by default; the request asks for a plain answer."""
    extra = ', "chat_template_kwargs": {"thinking": false}' if thinking_off else ""
    body = f'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]{extra}}}'
    # A keyed server: the header names the variable, never the key itself.
    auth = ' -H "Authorization: Bearer $DSV4SERVE_API_KEY"' if keyed else ""
    json_header = "-H 'Content-Type: application/json'"
    return f"curl {base_url}/v1/chat/completions {json_header}{auth} -d {shlex.quote(body)}"


def chat_once(
    base_url: str, model: str, max_tokens: int = 32, api_key: str | None = None, engine: str = "vllm"
) -> dict:
    """One streamed chat completion through the openai client: reply, time to first token, tokens/s.
    The thinking a reasoning parser splits off (`reasoning_content`, vLLM's `reasoning`) counts as
    reply tokens too, and is returned as `reasoning`."""
    import httpx
    import openai

    http = httpx.Client(trust_env=False)  # local traffic only: ignore any HTTP(S)_PROXY
    client = openai.OpenAI(
        base_url=base_url + "/v1", api_key=api_key or "none", http_client=http, max_retries=0
    )
    t0 = time.monotonic()
    first = last = None
    parts: list[str] = []
    thought: list[str] = []
    usage = None
    # A random-weight model may pick end-of-sequence first: ask for a few tokens at least (vLLM's and
    # llama-server's min_tokens; `transformers serve` refuses fields it does not know).
    extra = {} if engine == "transformers" else {"min_tokens": 4}
    try:
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": SMOKE_PROMPT}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
            timeout=120,
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                delta = choice.delta
                extra_fields = (delta.model_extra or {}) if delta else {}
                reasoning = extra_fields.get("reasoning_content") or extra_fields.get("reasoning")
                if delta and (delta.content or reasoning):
                    last = time.monotonic()
                    first = first or last
                    parts.append(delta.content or "")
                    thought.append(reasoning or "")
    except openai.OpenAIError as err:
        from dsv4serve.errors import LaunchError

        raise LaunchError(f"the chat completion failed: {err}", "read the vLLM log above") from err
    finally:
        http.close()
    tokens = usage.completion_tokens if usage is not None else len(parts)
    decode_s = (last - first) if first is not None and last is not None else 0.0
    return {
        "reply": "".join(parts),
        "reasoning": "".join(thought),
        "completion_tokens": tokens,
        "ttft_s": round(first - t0, 3) if first is not None else None,
        "request_s": round(time.monotonic() - t0, 3),
        # Decode rate: tokens after the first over the time after the first.
        "tokens_per_s": round((tokens - 1) / decode_s, 1) if tokens > 1 and decode_s > 0 else None,
    }
