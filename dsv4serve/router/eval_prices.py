"""`route eval`'s prices: --price per million tokens or per GPU-hour, else relative by active parameters."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsv4serve.errors import UsageError

# Without --price: relative cost per token, by active parameters (Flash 13B, Pro 49B; facts/deepseek-v4.md).
DEFAULT_PRICES = {"flash": (13.0, 13.0), "pro": (49.0, 49.0)}
PRICE_RE = re.compile(
    r"(?P<tier>flash|pro)=(?P<a>[0-9.]+)(?:/(?P<b>[0-9.]+)|(?P<gpu>gpus?@)(?P<tps>[0-9.]+))?"
)


@dataclass(frozen=True)
class Prices:
    """Per million tokens (input, output) of each model, and what the unit is."""

    flash: tuple[float, float]
    pro: tuple[float, float]
    unit: str

    def cost(self, tier: str, prompt: float, completion: float) -> float:
        inp, out = getattr(self, tier)
        return (prompt * inp + completion * out) / 1e6


def parse_prices(values: list[str] | None) -> Prices:
    """--price flash=IN/OUT (per million input/output tokens; one number for both) or flash=Ngpu@TPS (the
    server's GPUs and output tokens per second: GPU-hours per million generated tokens); both models,
    one form. None: relative cost by active parameters."""
    if not values:
        return Prices(DEFAULT_PRICES["flash"], DEFAULT_PRICES["pro"], "relative (active parameters)")
    found: dict[str, tuple[float, float]] = {}
    forms = set()
    for value in values:
        m = PRICE_RE.fullmatch(value.strip())
        try:
            a = float(m["a"]) if m else -1.0
            b = float(m["b"]) if m and m["b"] else a
            tps = float(m["tps"]) if m and m["tps"] else None
        except ValueError:
            m = None
        if m is None or (tps is not None and tps <= 0):
            raise UsageError(
                f"--price {value!r}: not a price",
                "flash=0.14/0.28 (per million input/output tokens) or flash=2gpu@2500 (GPUs @ tokens/s)",
            )
        if tps is not None:  # GPU-hours per million generated tokens; prompts ride along
            found[m["tier"]] = (0.0, a * 1e6 / (tps * 3600))
            forms.add("GPU-hours")
        else:
            found[m["tier"]] = (a, b)
            forms.add("price")
    if set(found) != {"flash", "pro"} or len(forms) != 1:
        raise UsageError(
            "--price needs both models in one form", "e.g. --price flash=0.14/0.28 --price pro=1.74/3.48"
        )
    return Prices(found["flash"], found["pro"], forms.pop())
