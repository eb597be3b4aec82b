"""llama.cpp's `llama-server` on GGUF files: its argv, its binary and version, its start-up log."""
