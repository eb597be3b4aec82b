"""Detached servers: `up -d`, their state records, and `ps`, `logs`, `stop` over them."""
