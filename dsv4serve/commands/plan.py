"""CLI commands (being written)."""


def register(app) -> None:
    pass
