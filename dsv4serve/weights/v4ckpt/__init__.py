"""Generated DeepSeek-V4 checkpoints (DeepseekV4ForCausalLM): FP8 + MXFP4 layout, random weights.

spec.py: the shapes (tiny-v4, flash); layout.py: every tensor and shard, sized without writing;
fill.py: the bytes; tokenizer.py: the tokenizer; writer.py: parallel, atomic writing and the cache.
"""

from dsv4serve.weights.v4ckpt.spec import SHAPES, V4Spec, get_spec
from dsv4serve.weights.v4ckpt.writer import Written, checkpoint_dir, ensure_checkpoint, make

__all__ = ["SHAPES", "V4Spec", "Written", "checkpoint_dir", "ensure_checkpoint", "get_spec", "make"]
