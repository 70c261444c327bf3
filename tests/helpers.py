"""Small builders for in-memory test data."""

from __future__ import annotations

import json
from pathlib import Path

from sftjudge.curate.rows import ChatMessage, Example


def example(i: int | str, prompt: str = "What is 2+2?", completion: str = "4") -> Example:
    return Example(id=str(i), messages=(ChatMessage(role="user", content=prompt),
                                        ChatMessage(role="assistant", content=completion)), source=f"mem:{i}")


def write_lines(path: Path, lines: list[str | dict | list]) -> Path:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


# The gates the hand-made decide scenarios do not exercise, switched off (the shipped defaults in DecideConfig gate
# them); a test that needs one names it. One scored item is enough to decide in these scenarios.
UNGATED = {"max_alignment_tax": None, "min_overfit_gap": 0.0, "min_val_rise": 0.0, "block_val_rise": False,
           "min_paired_items": 1}


def decide_rules(**settings):
    """DecideRules built from the config, as the decide stage builds them, with `settings` in the decide section."""
    from sftjudge.config import DecideConfig, RunConfig
    from sftjudge.decide.records import DecideRules

    return DecideRules.from_config(RunConfig(decide=DecideConfig(**(UNGATED | settings))))
