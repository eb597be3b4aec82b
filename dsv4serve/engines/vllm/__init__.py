"""vLLM: its argv, the flags it folds or refuses, its version, its start-up log, its caches."""
