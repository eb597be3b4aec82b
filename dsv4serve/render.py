"""Output helpers for the CLI: errors on stderr, JSON on stdout, Rich consoles created on use."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from dsv4serve.errors import oneline

# Whether a JSON document went to stdout in this command: an error after it goes to stderr, so stdout
# stays exactly one JSON document.
_json_written = False
_notes: set[str] = set()  # notes already printed in this command (up plans twice: once is enough)
# Piped output is not cut or wrapped: wider than any line dsv4serve prints.
PIPE_WIDTH = 1 << 20


def start() -> None:
    """A new command (tests run several in one process): nothing written yet."""
    global _json_written
    _json_written = False
    _notes.clear()


def print_error(message: str, hint: str = "", *, multiline: bool = False) -> None:
    """One line for what went wrong, one for what to do next; plain text, stderr."""
    from dsv4serve.redact import mask_text  # a launch error quotes vLLM's log, which quotes its args

    message, hint = mask_text(message), mask_text(hint)
    if not multiline:
        message, hint = oneline(message), oneline(hint)
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")
    sys.stderr.flush()


def print_json_error(message: str, hint: str, exit_code: int) -> None:
    """The error of a --json command as JSON: on stdout, or on stderr when stdout already has its one
    document (a plan that does not fit: the plan, then exit 3)."""
    from dsv4serve.redact import mask_text

    error = {"error": {"message": mask_text(message), "hint": mask_text(hint), "exit_code": exit_code}}
    stream = sys.stderr if _json_written else sys.stdout
    stream.write(_dumps(error) + "\n")
    stream.flush()


def print_json(data: Any) -> None:
    global _json_written
    sys.stdout.write(_dumps(data) + "\n")
    sys.stdout.flush()
    _json_written = True


def _dumps(data: Any) -> str:
    try:  # strict JSON: Infinity and NaN are not JSON, and parsers reject them
        return json.dumps(data, indent=2, sort_keys=False, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(data), indent=2, sort_keys=False, default=str)


def _finite(data: Any) -> Any:
    """Non-finite floats as null (the profile checks keep them out; this is the last line of defence)."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def note(text: str) -> None:
    """A one-line notice on stderr (stdout stays for results and JSON), once per command."""
    if text in _notes:
        return
    _notes.add(text)
    sys.stderr.write(f"note: {oneline(text)}\n")
    sys.stderr.flush()


def console(stderr: bool = False):
    """A console bound to the current stdout/stderr (so tests capturing them see the output).

    User text (descriptions, paths, extra args) reaches it, so nothing is read as markup ([/] would
    crash, [x] vanish) or emoji (:fire:), and piped output is neither cut nor wrapped at 80 columns.
    Plain text is written as Rich would write it under those settings, without importing Rich (~25 ms
    of every `plan`); a Rich renderable (a Table) goes to a Rich console."""
    return _TextConsole(stderr)


# The control codes Rich's Text drops (bell, backspace, vertical tab, form feed, carriage return).
_CONTROL = {7: None, 8: None, 11: None, 12: None, 13: None}


class _TextConsole:
    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self.file = sys.stderr if stderr else sys.stdout

    def print(self, *objects: Any, sep: str = " ", end: str = "\n", **options: Any) -> None:
        if not all(isinstance(o, str) for o in objects):
            rich_console(self._stderr).print(*objects, sep=sep, end=end, **options)
            return
        self.file.write(sep.join(o.translate(_CONTROL) for o in objects) + end)
        self.file.flush()


def rich_console(stderr: bool = False):
    """A Rich console with console()'s settings, for tables and progress."""
    from rich.console import Console

    file = sys.stderr if stderr else sys.stdout
    try:
        piped = not file.isatty()
    except (AttributeError, ValueError):
        piped = True
    return Console(
        file=file,
        highlight=False,
        soft_wrap=True,
        markup=False,
        emoji=False,
        width=PIPE_WIDTH if piped else None,
    )


def text_table(title: str, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[str]]) -> str:
    """A table in the box style of Rich's default (heavy head), without importing Rich's table code
    (~25 ms of every `plan`). columns: (header, "left" | "right")."""
    widths = [max(len(head), *(len(row[i]) for row in rows)) for i, (head, _) in enumerate(columns)]

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def cells(values: Sequence[str], edge: str, justify: Sequence[str]) -> str:
        padded = (
            v.ljust(w) if j == "left" else v.rjust(w) for v, w, j in zip(values, widths, justify, strict=True)
        )
        return edge + edge.join(f" {v} " for v in padded) + edge

    justify = [j for _, j in columns]
    out = [title, line("┏", "━", "┳", "┓"), cells([head for head, _ in columns], "┃", justify)]
    out.append(line("┡", "━", "╇", "┩"))
    out += [cells(row, "│", justify) for row in rows]
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out)
