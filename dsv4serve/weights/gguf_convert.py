"""Run llama.cpp's convert_hf_to_gguf.py on a dsv4serve-generated DeepSeek-V4 checkpoint.

`python -m dsv4serve.weights.gguf_convert LLAMA_SRC CHECKPOINT OUT.gguf`, started by weights/gguf.py.

Why a wrapper: the converter names a BPE tokenizer's pre-tokenizer by hashing the ids it gives a fixed
text, and knows only the hashes of published tokenizers. The generated checkpoint's tokenizer is
byte-level BPE with GPT-2's pre-tokenizer regex (tokenizers' ByteLevel, use_regex) over a 512-token
vocabulary, which no published tokenizer shares, so the hash is unknown and the converter stops
("BPE pre-tokenizer was not recognized"). Only for that checkpoint (its dsv4serve-v4.json marker) this
names the pre-tokenizer "gpt-2", which is the regex it does use; any other checkpoint converts as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

MARKER = "dsv4serve-v4.json"


def main(argv: list[str]) -> int:
    src, checkpoint, out = argv
    sys.path.insert(0, str(Path(src) / "gguf-py"))
    sys.path.insert(0, src)
    import conversion.base as base  # llama.cpp's converter package, from the source tree

    generated = (Path(checkpoint) / MARKER).is_file()
    original = base.TextModel.get_vocab_base_pre

    def vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            if not generated:
                raise
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = vocab_base_pre
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", checkpoint, "--outfile", out]
    convert_hf_to_gguf.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
