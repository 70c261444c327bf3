"""A tiny randomly initialised Llama with a byte-level BPE tokenizer trained on the spot.

It exercises every code path (chat template, LoRA, generation, logprob judging) in seconds and offline, for
tests and `configs/tiny.yaml`. Its outputs are noise by design; nothing about quality is measured with it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sftjudge.run.io import atomic_directory

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Extract the support ticket fields as JSON.",
    'Message: Hello, my router stopped working after the update, please help asap!',
    '{"intent": "bug_report", "product": "router", "priority": "high", "order_id": null}',
    '{"intent": "refund", "product": "smart speaker", "priority": "medium", "order_id": "A12345"}',
    "Rate the candidate answer against the reference answer from 1 to 10. Reply with only the number.",
    "Question: Reference answer: Candidate answer: Score: yes no",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10",
    "system user assistant billing shipping account access feature request low high web dashboard mobile app",
]


def build_tiny_tokenizer():
    """Train a ~400-token byte-level BPE (digits split one per token, as in Qwen and SmolLM2) with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(out: Path, seed: int = 0) -> Path:
    """Write a tiny Llama (2 layers, hidden 64) + tokenizer to `out` as a normal transformers checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "sftjudge-model.json").write_text(json.dumps({"name": "tiny", "seed": seed}))
    return Path(out)


def build_tiny_encoder(out: Path, seed: int = 0) -> Path:
    """Write a tiny random BERT encoder (2 layers, hidden 32) with a WordPiece tokenizer trained on the spot."""
    import torch
    from tokenizers import (
        Tokenizer,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_CORPUS * 4, trainer=trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    # [CLS] text [SEP], as BERT tokenizers do: an empty answer is still a sequence of two tokens.
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    with atomic_directory(Path(out)) as tmp:
        BertModel(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)
