"""Chat-template rendering shared by training, generation and judging.

Training and generation must render prompts identically or the fine-tune is evaluated on a format it never saw;
`template_fingerprint` is stored with the checkpoint and checked before generating.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sftjudge.curate.rows import Example
from sftjudge.errors import TemplateError


def chat_template_of(tokenizer) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise TemplateError(
            "the tokenizer has no chat template; use an instruction-tuned model or add a chat_template to its "
            "tokenizer_config.json"
        )
    return template if isinstance(template, str) else str(template)


def template_fingerprint(tokenizer) -> str:
    """SHA-256 (first 16 hex) of the chat template text plus the special tokens it relies on."""
    text = chat_template_of(tokenizer) + f"|eos={tokenizer.eos_token}|bos={tokenizer.bos_token}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text up to and including the assistant header, exactly as training renders it."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens: loss is taken on the completion only

    @property
    def n_target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != -100)

    def without_loss(self) -> "TokenizedExample":
        """The same tokens with no label: a row that pads a batch is computed but carries no loss."""
        return TokenizedExample(input_ids=self.input_ids, labels=[-100] * len(self.labels))


def tokenize_for_training(tokenizer, example: Example, max_len: int) -> TokenizedExample:
    """Render the full chat with loss on every assistant turn, the rest masked; truncate to `max_len`.

    Each assistant turn's prompt - the chat before it, rendered with the generation header - must be exactly how
    the longer chat starts; otherwise the template is one where prompt and answer cannot be separated (or one
    that rewrites earlier turns) and we refuse rather than guess. System, user and tool turns are context only.
    Truncation cuts from the left first, never past the start of the last answer (the turn the test split judges),
    then the end of the last answer.
    """
    messages = [m.model_dump() for m in example.messages]
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = render_prompt(tokenizer, messages[:k])
        full_text = tokenizer.apply_chat_template(messages[:k + 1], tokenize=False)
        if not full_text.startswith(prompt_text) or not prompt_text.startswith(rendered):
            raise TemplateError(
                f"row {example.id}: the chat template renders the prompt differently with and without the answer "
                f"(assistant turn {k}); cannot mask prompt tokens")
        context = tokenizer(prompt_text[len(rendered):], add_special_tokens=False)["input_ids"]
        answer = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        ids += context + answer
        labels += [-100] * len(context) + answer
        rendered = full_text
    last_answer = len(ids) - len(answer)
    # Keep the whole last answer when possible: cut the earlier part from the left, it is the less valuable part.
    overflow = len(ids) - max_len
    if overflow > 0:
        cut = min(overflow, max(last_answer - 1, 0))
        ids, labels = ids[cut:][:max_len], labels[cut:][:max_len]
    return TokenizedExample(input_ids=ids, labels=labels)
