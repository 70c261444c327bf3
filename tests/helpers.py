"""Small builders for in-memory test data."""

from __future__ import annotations

import json
from pathlib import Path

from sftjudge.rows import ChatMessage, Example


def example(i: int | str, prompt: str = "What is 2+2?", completion: str = "4") -> Example:
    return Example(id=str(i), messages=(ChatMessage(role="user", content=prompt),
                                        ChatMessage(role="assistant", content=completion)), source=f"mem:{i}")


def write_lines(path: Path, lines: list[str | dict | list]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path
