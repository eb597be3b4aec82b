"""Generated DeepSeek-V4 checkpoints (DeepseekV4ForCausalLM): FP8 + MXFP4 layout, random weights.

spec.py: the shapes (tiny-v4, flash, pro) and their layer cuts; layout.py: every tensor and shard, sized
without writing;
fill.py: the bytes; tokenizer.py: the tokenizer; writer.py: parallel, atomic writing and the cache;
profile.py: the profile of a checkpoint written at a path.
"""

from dsv4serve.weights.v4ckpt.spec import SHAPES, V4Spec, cut, get_spec
from dsv4serve.weights.v4ckpt.writer import Written, checkpoint_dir, ensure_checkpoint, make

__all__ = ["SHAPES", "V4Spec", "Written", "checkpoint_dir", "cut", "ensure_checkpoint", "get_spec", "make"]
