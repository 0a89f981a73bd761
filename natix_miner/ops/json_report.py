"""The one way the command-line tools write a JSON report: indented, the folder created, optionally printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def emit_json(obj: Any, path: str | Path | None = None, *, echo: bool = True) -> str:
    """``obj`` as indented JSON, written to ``path`` (its folder created) when given and printed when ``echo``."""
    text = json.dumps(obj, indent=2, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    if echo:
        print(text)
    return text
