import json

import pytest
from helpers import example

from sftjudge.config import SFTConfig
from sftjudge.errors import TemplateError
from sftjudge.models.chat import template_fingerprint, tokenize_for_training
from sftjudge.train.batching import length_grouped_batches, mean_loss
from sftjudge.train.checkpoints import checkpoint_meta
from sftjudge.train.loop import TrainData, train

pytestmark = pytest.mark.model


def settings(**overrides):
    base = dict(method="lora", epochs=2, learning_rate=5e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=4,
                grad_accum=1, max_seq_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                target_modules=("q_proj", "v_proj"), precision="fp32", seed=0)
    return SFTConfig(**(base | overrides))


def rows(n, offset=0):
    return [example(i + offset, f"Message {i}: my router is broken", '{"intent": "bug_report"}') for i in range(n)]


DATA16 = TrainData(train=rows(16), val=rows(4, offset=100))
DATA8 = TrainData(train=rows(8), val=rows(2, offset=50))


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
    from sftjudge.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    seen = []
    result = train(model, tok, DATA16, settings(epochs=3, keep_checkpoints="all"),
                   tmp_path / "ckpt", on_epoch=seen.append)
    assert [m.epoch for m in result.epochs] == [1, 2, 3] == [m.epoch for m in seen]
    for m in result.epochs:
        assert m.train_loss > 0 and m.val_loss > 0
        meta = checkpoint_meta(tmp_path / "ckpt" / f"epoch-{m.epoch}")
        assert meta["template_fingerprint"] == template_fingerprint(tok)
        assert (tmp_path / "ckpt" / f"epoch-{m.epoch}" / "adapter_model.safetensors").is_file()
        assert (tmp_path / "ckpt" / f"epoch-{m.epoch}" / "training_state.pt").is_file()
        assert len(m.step_losses) == m.steps == 4
    # the data is one repeated pattern at a high LR: the loss must fall
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.best_epoch == min(result.epochs, key=lambda m: m.val_loss).epoch
    assert 0 < result.trainable_params < result.total_params
    json.dumps(result.to_json())


def test_mean_loss_is_eval_mode_and_deterministic(tiny_model_dir):
    from sftjudge.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    data = [tokenize_for_training(tok, r, 64) for r in rows(6)]
    model.train()
    a = mean_loss(model, data, batch_size=4, pad_id=tok.pad_token_id, bf16=False)
    b = mean_loss(model, data, batch_size=2, pad_id=tok.pad_token_id, bf16=False)
    assert a == pytest.approx(b, rel=1e-5)  # token-weighted: batch size and padding do not change it
    assert model.training  # mode restored


def test_full_fine_tuning_saves_full_weights(tiny_model_dir, tmp_path):
    from sftjudge.models.loading import load_causal_lm

    model, tok = load_causal_lm(str(tiny_model_dir))
    result = train(model, tok, DATA8, settings(method="full", epochs=1), tmp_path)
    assert (tmp_path / "epoch-1" / "model.safetensors").is_file()
    assert result.trainable_params == result.total_params


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import example
from test_sft import DATA16, settings
from sftjudge.models.loading import load_causal_lm
from sftjudge.train.loop import train

model, tok = load_causal_lm({model!r})

def die_after_first_epoch(metrics):
    if metrics.epoch == 1:
        os.kill(os.getpid(), signal.SIGKILL)

train(model, tok, DATA16, settings(epochs=3, lora_dropout=0.1), Path({ckpt!r}),
      on_epoch=die_after_first_epoch)
"""


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_model_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import epoch_checkpoints

    tests_dir = str(Path(__file__).parent)
    killed_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=tests_dir, model=str(tiny_model_dir), ckpt=str(killed_dir))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert list(epoch_checkpoints(killed_dir)) == [1]  # died right after epoch 1 was saved

    model, tok = load_causal_lm(str(tiny_model_dir))
    resumed = train(model, tok, DATA16, settings(epochs=3, lora_dropout=0.1), killed_dir)
    model, tok = load_causal_lm(str(tiny_model_dir))
    straight = train(model, tok, DATA16, settings(epochs=3, lora_dropout=0.1),
                     tmp_path / "straight")
    assert resumed.resumed_from_epoch == 1 and straight.resumed_from_epoch is None
    assert [m.epoch for m in resumed.epochs] == [1, 2, 3]
    for a, b in zip(resumed.epochs, straight.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4)


def test_early_stopping_keeps_the_best_epoch(tiny_model_dir, tmp_path):
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.checkpoints import epoch_checkpoints

    model, tok = load_causal_lm(str(tiny_model_dir))
    # train on one pattern, validate on another: val loss gets worse as training goes on
    train_rows = [example(i, f"router broken {i}", '{"intent": "bug_report"}') for i in range(16)]
    val_rows = [example(100 + i, f"refund speaker {i}", "9 8 7 6 5 4 3 2 1") for i in range(4)]
    all_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    data = TrainData(train=train_rows, val=val_rows)
    result = train(model, tok, data, settings(epochs=8, learning_rate=3e-2, lora_r=8, target_modules=all_modules,
                                              early_stopping_patience=2), tmp_path)
    val = [m.val_loss for m in result.epochs]
    best = result.best_epoch
    assert val[best - 1] == min(val)
    assert result.stopped_early and len(result.epochs) == best + 2 < 8
    assert "stopped early" in result.selection
    kept = list(epoch_checkpoints(tmp_path))
    assert best in kept and len(result.epochs) in kept and len(kept) <= 2  # best survives pruning
    assert result.best_checkpoint.endswith(f"epoch-{best}")


def test_gradient_checkpointing_gives_the_same_losses(tiny_model_dir, tmp_path):
    from sftjudge.models.loading import load_causal_lm

    results = []
    for flag in (False, True):
        model, tok = load_causal_lm(str(tiny_model_dir))
        results.append(train(model, tok, DATA8,
                             settings(epochs=1, gradient_checkpointing=flag), tmp_path / str(flag)))
    assert results[1].epochs[0].val_loss == pytest.approx(results[0].epochs[0].val_loss, rel=1e-4)
