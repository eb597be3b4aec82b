"""dsv4serve: serve DeepSeek-V4 with vLLM, planned before it starts."""

__version__ = "0.1.0"
