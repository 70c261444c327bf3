import json

import pytest

from helpers import example
from sftjudge.chat import TemplateError, template_fingerprint, tokenize_for_training
from sftjudge.sft import TrainSettings, checkpoint_meta, length_grouped_batches, mean_loss, train

pytestmark = pytest.mark.model


def settings(**overrides):
    base = dict(method="lora", epochs=2, learning_rate=5e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=4,
                grad_accum=1, max_seq_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                target_modules=("q_proj", "v_proj"), precision="fp32", seed=0)
    return TrainSettings(**(base | overrides))


def rows(n, offset=0):
    return [example(i + offset, f"Message {i}: my router is broken", '{"intent": "bug_report"}') for i in range(n)]


def test_prompt_tokens_carry_no_loss(tiny_model):
    _, tok = tiny_model
    ex = example(1, "Extract the fields", '{"intent": "refund"}')
    tokenized = tokenize_for_training(tok, ex, max_len=256)
    n_prompt = len(tok(tok.apply_chat_template(ex.prompt_messages, tokenize=False, add_generation_prompt=True),
                       add_special_tokens=False)["input_ids"])
    assert tokenized.labels[:n_prompt] == [-100] * n_prompt
    assert tokenized.labels[n_prompt:] == tokenized.input_ids[n_prompt:]
    target_text = tok.decode(tokenized.input_ids[n_prompt:])
    assert target_text.startswith('{"intent": "refund"}<|im_end|>')


def test_truncation_keeps_answer_start(tiny_model):
    _, tok = tiny_model
    ex = example(1, "word " * 200, "short answer")
    tokenized = tokenize_for_training(tok, ex, max_len=32)
    assert len(tokenized.input_ids) == 32
    assert tokenized.n_target_tokens > 0


def test_template_without_a_separable_prompt_is_refused(tiny_model):
    _, tok = tiny_model
    original = tok.chat_template
    try:
        # A template that renders the generation header differently from the stored assistant turn.
        tok.chat_template = original.replace("'<|im_start|>assistant\n'", "'<|im_start|>ASSISTANT\n'")
        with pytest.raises(TemplateError, match="cannot mask prompt tokens"):
            tokenize_for_training(tok, example(1), max_len=64)
    finally:
        tok.chat_template = original


def test_length_grouped_batches_cover_every_index_once():
    import random

    batches = length_grouped_batches([7, 3, 9, 1, 4, 4, 8], 3, random.Random(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(7))
    assert max(len(b) for b in batches) == 3


def test_training_logs_train_and_val_loss_every_epoch_and_saves_checkpoints(tiny_model_dir, tmp_path):
    from sftjudge.sft import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    seen = []
    result = train(model, tok, rows(16), rows(4, offset=100), settings(epochs=3), tmp_path / "ckpt",
                   on_epoch=seen.append)
    assert [m.epoch for m in result.epochs] == [1, 2, 3] == [m.epoch for m in seen]
    for m in result.epochs:
        assert m.train_loss > 0 and m.val_loss > 0
        meta = checkpoint_meta(tmp_path / "ckpt" / f"epoch-{m.epoch}")
        assert meta["template_fingerprint"] == template_fingerprint(tok)
        assert (tmp_path / "ckpt" / f"epoch-{m.epoch}" / "adapter_model.safetensors").is_file()
    # the data is one repeated pattern at a high LR: the loss must fall
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.best_epoch == min(result.epochs, key=lambda m: m.val_loss).epoch
    assert 0 < result.trainable_params < result.total_params
    json.dumps(result.to_json())


def test_mean_loss_is_eval_mode_and_deterministic(tiny_model_dir):
    from sftjudge.sft import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    data = [tokenize_for_training(tok, r, 64) for r in rows(6)]
    model.train()
    a = mean_loss(model, data, batch_size=4, pad_id=tok.pad_token_id, bf16=False)
    b = mean_loss(model, data, batch_size=2, pad_id=tok.pad_token_id, bf16=False)
    assert a == pytest.approx(b, rel=1e-5)  # token-weighted: batch size and padding do not change it
    assert model.training  # mode restored


def test_full_fine_tuning_saves_full_weights(tiny_model_dir, tmp_path):
    from sftjudge.sft import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    result = train(model, tok, rows(8), rows(2, offset=50), settings(method="full", epochs=1), tmp_path)
    assert (tmp_path / "epoch-1" / "model.safetensors").is_file()
    assert result.trainable_params == result.total_params
