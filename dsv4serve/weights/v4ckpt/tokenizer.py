"""A byte-level BPE tokenizer with every special token DeepSeek-V4's chat encoding and parsers use.

vLLM's `--tokenizer-mode deepseek_v4` builds the prompt text itself (vllm/tokenizers/
deepseek_v4_encoding.py) and encodes it with this tokenizer; the reasoning and tool parsers find
<think>, </think> and ｜DSML｜ in the decoded text. Ids: 0-255 the bytes, then word-like filler so the
tokenizer has exactly vocab_size entries (every id the model samples decodes), then the added tokens.
"""

from __future__ import annotations

import itertools
import string

from dsv4serve.weights.tiny import tokenizer_json as byte_level_tokenizer

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# (content, special). "special": False for what the parsers must still see with skip_special_tokens.
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    (BOS, True),
    (EOS, True),
    (PAD, True),
    ("<｜User｜>", True),  # deepseek_v4_encoding: USER_SP_TOKEN
    ("<｜Assistant｜>", True),  # ASSISTANT_SP_TOKEN
    ("<think>", False),  # thinking_start_token: the reasoning parser splits on it
    ("</think>", False),  # thinking_end_token
    ("｜DSML｜", False),  # dsml_token: the tool parser's <｜DSML｜tool_calls> markup
    ("<｜latest_reminder｜>", True),  # LATEST_REMINDER_SP_TOKEN
    ("<｜action｜>", True),  # DS_TASK_SP_TOKENS
    ("<｜query｜>", True),
    ("<｜authority｜>", True),
    ("<｜domain｜>", True),
    ("<｜title｜>", True),
    ("<｜read_url｜>", True),
    ("<｜deepseek_image｜>", True),  # IMAGE_PLACEHOLDER (vLLM 0.32)
    ("<｜fim▁begin｜>", True),  # renderers/deepseek_v4.py: completion suffix (fill in the middle)
    ("<｜fim▁hole｜>", True),
    ("<｜fim▁end｜>", True),
)
_SPACE = "Ġ"  # GPT-2's byte-level character for a space
CHAT_TEMPLATE = "chat_template.jinja"
# How `transformers serve` splits a V4 reply (tokenizer_config's response_template): the prompt ends with
# <｜Assistant｜><think> (thinking) or <｜Assistant｜></think> (not), so the reply opens inside or after
# the thinking; the thinking goes to `reasoning_content`, the rest up to end-of-sentence to `content`.
RESPONSE_TEMPLATE = {
    "defaults": {"role": "assistant"},
    "start_anchor_pattern": "<｜Assistant｜>(?:</think>)?",
    "fields": {
        "thinking": {"open": "<think>", "close": "</think>", "content": "text"},
        "content": {"close_pattern": r"\s*<｜end▁of▁sentence｜>", "content": "text"},
    },
}


def chat_template() -> str:
    """DeepSeek-V4's chat template (llama.cpp's models/templates/deepseek-ai-DeepSeek-V4.jinja, MIT)."""
    from importlib.resources import files

    return files("dsv4serve.weights.v4ckpt").joinpath(CHAT_TEMPLATE).read_text(encoding="utf-8")


def token_id(vocab_size: int, content: str) -> int:
    """Added tokens take the last ids: the tokenizers library numbers them after the model vocab."""
    names = [c for c, _ in ADDED_TOKENS]
    return vocab_size - len(names) + names.index(content)


def _filler():
    """' ab', 'ab', ' ac', ...: lowercase words, so random ids decode to word-like text."""
    for length in itertools.count(2):
        for letters in itertools.product(string.ascii_lowercase, repeat=length):
            word = "".join(letters)
            yield _SPACE + word
            yield word


def tokenizer_json(vocab_size: int) -> dict:
    """tokenizer.json: byte-level BPE (any text round-trips), exactly vocab_size ids; the two-letter
    words merge from their letters, so the merges llama.cpp's loader needs are there."""
    n_model = vocab_size - len(ADDED_TOKENS)
    if n_model < 256:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for the 256 byte tokens")
    base = byte_level_tokenizer()  # tiny's: byte-level pre-tokenizer and decoder, BPE without merges
    vocab = dict(base["model"]["vocab"])  # the 256 bytes
    merges = []
    for i, word in zip(range(256, n_model), _filler(), strict=False):
        vocab[word] = i
        if len(word) == 2:  # "ab" = "a" + "b": merges llama.cpp's BPE loader requires (none: it refuses)
            merges.append(f"{word[0]} {word[1]}")
    bos = {"SpecialToken": {"id": BOS, "type_id": 0}}
    return {
        **base,
        "added_tokens": added_tokens(vocab_size),
        # BOS first, as DeepSeek's tokenizer does for plain completions (the chat encoding adds its own).
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                bos,
                {"Sequence": {"id": "A", "type_id": 0}},
                bos,
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [token_id(vocab_size, BOS)], "tokens": [BOS]}},
        },
        "model": {**base["model"], "vocab": vocab, "merges": merges},
    }


def added_tokens(vocab_size: int) -> list[dict]:
    """tokenizer.json's added_tokens entries, at the last ids."""
    first = vocab_size - len(ADDED_TOKENS)
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False}
    return [
        {"id": first + i, "content": content, **flags, "special": special}
        for i, (content, special) in enumerate(ADDED_TOKENS)
    ]


def tokenizer_config(vocab_size: int, max_length: int) -> dict:
    keys = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in keys} for a in added_tokens(vocab_size)},
        "response_template": RESPONSE_TEMPLATE,
    }
