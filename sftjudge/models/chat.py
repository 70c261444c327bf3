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


def tokenize_for_training(tokenizer, example: Example, max_len: int) -> TokenizedExample:
    """Render the full chat, mask the prompt part, truncate to `max_len` keeping the start of the answer.

    The prompt is rendered with the generation header, and the full chat must start with exactly that text;
    otherwise the template is one where prompt and answer cannot be separated and we refuse rather than guess.
    """
    prompt_text = render_prompt(tokenizer, example.prompt_messages)
    full_text = tokenizer.apply_chat_template(
        example.prompt_messages + [{"role": "assistant", "content": example.completion}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise TemplateError(
            f"row {example.id}: the chat template renders the prompt differently with and without the answer; "
            f"cannot mask prompt tokens"
        )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    # Keep the whole answer when possible: cut the prompt from the left, it is the less valuable part.
    overflow = len(prompt_ids) + len(answer_ids) - max_len
    if overflow > 0:
        cut = min(overflow, max(len(prompt_ids) - 1, 0))
        prompt_ids = prompt_ids[cut:]
        answer_ids = answer_ids[: max_len - len(prompt_ids)]
    return TokenizedExample(input_ids=prompt_ids + answer_ids, labels=[-100] * len(prompt_ids) + answer_ids)
