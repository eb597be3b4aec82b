"""Preflight: from a command's options to a plan that fits (profile, GPUs, overrides) and its text."""
