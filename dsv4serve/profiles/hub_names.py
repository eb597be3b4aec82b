"""Names the Hugging Face hub accepts: repo ids and revisions (checked before they reach a URL or a path).

A repo id is `owner/name`, each part 1-96 of letters, digits, `_`, `-` and `.`, not starting or ending
with `-` or `.`, without `--` or `..` (huggingface_hub's validate_repo_id). A revision is a branch, tag
or commit: git ref characters, no `..`, no leading `/` or `-` (it also names a file under the cache's
refs/, so `../..` must never pass).
"""

from __future__ import annotations

import re

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_RE = re.compile(rf"{_PART}/{_PART}", re.ASCII)
_REVISION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./+-]{0,254}", re.ASCII)


def valid_repo_id(repo: str) -> bool:
    return bool(_REPO_RE.fullmatch(repo)) and "--" not in repo and ".." not in repo


def valid_revision(revision: str) -> bool:
    return (
        bool(_REVISION_RE.fullmatch(revision))
        and ".." not in revision
        and "//" not in revision
        and not revision.endswith(("/", ".", ".lock"))
    )
