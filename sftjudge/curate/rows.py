"""The one internal row shape every input format maps to, and the mapping from each format.

A row is a chat: optional system message, user/assistant turns, ending with the assistant answer that is the
training target and the judge's reference. prompt/completion and Alpaca rows become a one-turn chat.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant", "tool"]  # tool: a tool's result, context like a user turn
    content: str


class Example(BaseModel):
    """One instruction example: `messages` ends with the assistant answer (the reference)."""

    model_config = ConfigDict(frozen=True)
    id: str
    messages: tuple[ChatMessage, ...]
    source: str = Field("", description="file:line the row came from, for error messages and quarantine")
    meta: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="other scalar top-level fields of the row (e.g. a category to stratify by)")

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return [m.model_dump() for m in self.messages[:-1]]

    @property
    def completion(self) -> str:
        return self.messages[-1].content

    @property
    def instruction(self) -> str:
        """The last user turn: what the judge is shown as the question."""
        return next(m.content for m in reversed(self.messages) if m.role == "user")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "messages": [m.model_dump() for m in self.messages], "source": self.source,
                "meta": self.meta}


ROW_FIELDS = {"id", "prompt", "completion", "instruction", "input", "output", "messages", "system"}


class RowError(ValueError):
    """A row that cannot become an Example; `field` names the offending key."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field!r}: {problem}")
        self.field = field
        self.problem = problem


# Characters that render as nothing: an answer made only of them is empty.
_INVISIBLE = dict.fromkeys(map(ord, "\x00\u200b\u200c\u200d\u2060\ufeff"))


def _text(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise RowError(key, "missing")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise RowError(key, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escape ("\ud83d" without its pair) cannot be written out
        raise RowError(key, f"has an unpaired surrogate: {value[exc.start]!r} at character {exc.start} "
                            f"(a broken emoji escape); fix or remove it") from None
    if required and not value.translate(_INVISIBLE).strip():  # NUL or zero-width characters only: still empty
        raise RowError(key, "is empty")
    return value


def detect_format(obj: dict[str, Any]) -> str:
    """Name the row format from the keys present.

    >>> detect_format({"prompt": "a", "completion": "b"})
    'prompt_completion'
    >>> detect_format({"instruction": "a", "output": "b"})
    'alpaca'
    >>> detect_format({"messages": []})
    'messages'
    """
    if "messages" in obj:
        return "messages"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    if "prompt" in obj or "completion" in obj:
        return "prompt_completion"
    raise RowError("prompt", f"no known format: expected prompt/completion, instruction/output or messages; "
                             f"got keys {sorted(obj)}")


def _messages_from_chat(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise RowError("messages", "must be a non-empty list of {role, content}")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RowError(f"messages[{i}]", "must be an object with role and content")
        role = item.get("role")
        role = "tool" if role in ("tool", "function", "ipython") else role  # names of a tool result's turn
        if role not in ("system", "user", "assistant", "tool"):
            raise RowError(f"messages[{i}].role", f"must be system, user, assistant or tool, got {role!r}")
        try:
            content = _text(item, "content", required=role != "system")
        except RowError as exc:
            raise RowError(f"messages[{i}].content", exc.problem) from None
        messages.append(ChatMessage(role=role, content=content))
    if messages[-1].role != "assistant":
        raise RowError("messages", "must end with an assistant message (the reference answer)")
    if not any(m.role == "user" for m in messages):
        raise RowError("messages", "needs at least one user message")
    if messages[0].role == "assistant" or (messages[0].role == "system" and messages[1].role == "assistant"):
        raise RowError("messages", "an assistant turn must follow a user turn (it answers something)")
    return messages


def example_from_obj(obj: Any, *, row_id: str, source: str, fmt: str = "auto") -> Example:
    """Map one decoded JSON object to an Example, or raise RowError naming the field."""
    if not isinstance(obj, dict):
        raise RowError("(row)", f"must be a JSON object, got {type(obj).__name__}")
    fmt = detect_format(obj) if fmt == "auto" else fmt
    if fmt == "messages":
        messages = _messages_from_chat(obj.get("messages"))
    elif fmt == "alpaca":
        instruction = _text(obj, "instruction")
        extra = _text(obj, "input", required=False)
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=_text(obj, "output"))]
    elif fmt == "prompt_completion":
        messages = [
            ChatMessage(role="user", content=_text(obj, "prompt")),
            ChatMessage(role="assistant", content=_text(obj, "completion")),
        ]
    else:
        raise RowError("(row)", f"unknown format {fmt!r}")
    system = obj.get("system")
    if isinstance(system, str) and system.strip() and messages[0].role != "system":
        messages.insert(0, ChatMessage(role="system", content=system))
    explicit_id = obj.get("id")
    meta = {k: v for k, v in obj.items()
            if k not in ROW_FIELDS and isinstance(v, (str, int, float, bool))}
    return Example(id=str(explicit_id) if explicit_id not in (None, "") else row_id,
                   messages=tuple(messages), source=source, meta=meta)
