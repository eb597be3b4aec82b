"""Weights: hub downloads (the only importer of huggingface_hub), local paths, generated checkpoints."""
