"""Hugging Face Transformers' `transformers serve`: small models and reference checks (tiny-v4)."""
