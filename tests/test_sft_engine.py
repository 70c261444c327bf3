"""The sft stage on TRL's SFTTrainer: what the engine adds beyond the old loop's guarantees (tests/test_sft.py).

Every assistant turn carries loss, the frozen base weights of a LoRA student sit in the training precision, a
quantised base is refused on a machine without CUDA before anything loads, packed rows train like unpacked ones,
and batches keep their bounds.
"""

from __future__ import annotations

import pytest
from helpers import example

from sftjudge.config import SFTConfig
from sftjudge.curate.rows import ChatMessage, Example, example_from_obj
from sftjudge.errors import ConfigError
from sftjudge.models.chat import tokenize_for_training

pytestmark = pytest.mark.model


def _settings(**overrides) -> SFTConfig:
    base = dict(method="lora", epochs=2, learning_rate=5e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=4,
                grad_accum=1, max_seq_len=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                target_modules=("q_proj", "v_proj"), precision="fp32", seed=0)
    return SFTConfig(**(base | overrides))


def _labelled_spans(tokenizer, tokenized) -> list[str]:
    """The text of each run of consecutive labelled positions."""
    spans, current = [], []
    for token, label in zip(tokenized.input_ids, tokenized.labels):
        if label != -100:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def test_a_multi_turn_chat_trains_on_every_assistant_turn_and_only_those(tiny_model):
    _, tok = tiny_model
    chat = Example(id="c1", messages=(
        ChatMessage(role="system", content="You sort support tickets."),
        ChatMessage(role="user", content="My router is broken"),
        ChatMessage(role="assistant", content="bug_report"),
        ChatMessage(role="user", content="And I want my money back"),
        ChatMessage(role="tool", content="refund policy: 30 days"),
        ChatMessage(role="assistant", content="refund"),
    ))
    tokenized = tokenize_for_training(tok, chat, max_len=256)
    assert _labelled_spans(tok, tokenized) == ["bug_report<|im_end|>\n", "refund<|im_end|>\n"]
    # everything else - system, user and tool turns, the assistant headers - is context without loss
    full = tok.apply_chat_template([m.model_dump() for m in chat.messages], tokenize=False)
    assert tok.decode(tokenized.input_ids) == full


def test_truncating_a_long_chat_keeps_the_last_answer_whole(tiny_model):
    _, tok = tiny_model
    chat = Example(id="c2", messages=(
        ChatMessage(role="user", content="word " * 100), ChatMessage(role="assistant", content="first " * 20),
        ChatMessage(role="user", content="again"), ChatMessage(role="assistant", content="last answer")))
    tokenized = tokenize_for_training(tok, chat, max_len=48)
    assert len(tokenized.input_ids) == 48
    assert _labelled_spans(tok, tokenized)[-1] == "last answer<|im_end|>\n"


def test_tool_and_function_turns_are_read_as_context():
    row = example_from_obj({"messages": [{"role": "user", "content": "weather?"},
                                         {"role": "assistant", "content": "calling"},
                                         {"role": "function", "content": "sunny"},
                                         {"role": "assistant", "content": "It is sunny."}]},
                           row_id="1", source="f:1")
    assert [m.role for m in row.messages] == ["user", "assistant", "tool", "assistant"]
    with pytest.raises(Exception, match="assistant turn must follow a user turn"):
        example_from_obj({"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a"}]}, row_id="2", source="f:2")


def test_lora_trains_on_bf16_base_weights_with_float32_adapters(tiny_model_dir, tmp_path):
    import torch

    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.loop import TrainData, train

    model, tok = load_causal_lm(str(tiny_model_dir))  # float32 as loaded: the stage casts the frozen part
    data = TrainData(train=[example(i, f"router {i}", "bug") for i in range(8)], val=[example(9, "router", "bug")])
    result = train(model, tok, data, _settings(epochs=1, precision="bf16"), tmp_path / "ckpt")
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    adapters = {n: d for n, d in dtypes.items() if "lora_" in n}
    assert adapters and set(adapters.values()) == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    assert result.precision == "bf16"


def test_a_full_fine_tune_keeps_float32_weights_under_bf16(tiny_model_dir, tmp_path):
    import torch

    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.loop import TrainData, train

    model, tok = load_causal_lm(str(tiny_model_dir))
    data = TrainData(train=[example(i, f"router {i}", "bug") for i in range(4)], val=[example(9, "router", "bug")])
    train(model, tok, data, _settings(epochs=1, method="full", precision="bf16"), tmp_path / "ckpt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the optimizer's small updates survive


def test_quantization_without_cuda_fails_before_the_model_loads(tiny_model_dir, monkeypatch):
    import torch

    from sftjudge.train import stage

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    loads = []
    monkeypatch.setattr(stage, "load_causal_lm", lambda *a, **k: loads.append(a))
    with pytest.raises(ConfigError, match=r"sft.quantization: 4bit \(QLoRA\) needs a CUDA card.*quantization: null"):
        stage.load_student(str(tiny_model_dir), _settings(quantization="4bit"))
    assert loads == []
    with pytest.raises(ValueError, match="trains LoRA adapters on quantised base weights"):
        _settings(quantization="8bit", method="full")


def test_fp16_is_refused_without_cuda_and_fsdp_only_for_full_fine_tunes(monkeypatch):
    import torch

    from sftjudge.train.precision import check_engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="fp16 is for CUDA cards"):
        check_engine(_settings(precision="fp16"))
    with pytest.raises(ValueError, match="sft.fsdp shards a full fine-tune"):
        _settings(fsdp=True)


def test_a_short_batch_keeps_its_bounds_in_one_process():
    from sftjudge.train.engine import GroupedSampler

    sampler = GroupedSampler([5, 1, 4, 2, 3], batch_size=2, world=1, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = sampler.batches()
        flat = list(sampler)
        # the trainer cuts the flat order every 2 indices: each cut must be one of the grouped batches
        assert [flat[i:i + 2] for i in range(0, len(flat), 2)] == batches
        assert sorted(i for b in batches for i in b if i != 5) == [0, 1, 2, 3, 4]


def test_a_packed_sequence_scores_each_row_as_if_it_were_alone(tiny_model_dir):
    import torch

    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.batching import summed_token_loss
    from sftjudge.train.engine import collate_rows, rows_dataset

    model, tok = load_causal_lm(str(tiny_model_dir))
    model.eval()
    rows = [tokenize_for_training(tok, example(i, f"Ticket {i}: " + "router " * i, "bug_report"), 64)
            for i in range(1, 4)]
    packed = rows_dataset(rows, pack_to=256)
    assert len(packed) < len(rows) + 1  # some rows share a sequence (the last row is the weightless one)
    collate = collate_rows(tok.pad_token_id, packed=True)
    together, n = 0.0, 0
    with torch.no_grad():
        for index in range(len(packed) - 1):
            batch = collate([packed[index]])
            extra = {k: v for k, v in batch.items() if k not in ("input_ids", "labels")}
            loss, count = summed_token_loss(model, batch["input_ids"], None, batch["labels"], extra=extra)
            together, n = together + float(loss), n + count
        alone = [summed_token_loss(model, *(t[None] for t in (torch.tensor(r.input_ids),
                                                               torch.ones(len(r.input_ids), dtype=torch.long),
                                                               torch.tensor(r.labels))))
                 for r in rows]
    assert n == sum(k for _, k in alone)
    assert together == pytest.approx(sum(float(s) for s, _ in alone), rel=1e-4)


def test_packing_gives_the_unpacked_val_loss_within_tolerance(tiny_model_dir, tmp_path):
    from sftjudge.models.loading import load_causal_lm
    from sftjudge.train.loop import TrainData, train

    data = TrainData(train=[example(i, f"Message {i}: my router is broken", '{"intent": "bug_report"}')
                            for i in range(16)],
                     val=[example(100 + i, f"Message {i}: my router is broken", '{"intent": "bug_report"}')
                          for i in range(4)])
    results = {}
    for packing, batch in ((False, 4), (True, 2)):  # about 2 rows per packed sequence: ~4 rows per step either way
        model, tok = load_causal_lm(str(tiny_model_dir))
        results[packing] = train(model, tok, data, _settings(packing=packing, batch_size=batch, max_seq_len=64,
                                                             epochs=2), tmp_path / str(packing))
    unpacked, packed = ([m.val_loss for m in results[k].epochs] for k in (False, True))
    assert unpacked[-1] < unpacked[0] and packed[-1] < packed[0]  # both learn
    assert packed == pytest.approx(unpacked, rel=0.05)


def test_out_of_memory_resumes_with_half_the_batch_and_the_same_effective_batch(tiny_model_dir, tmp_path,
                                                                                 monkeypatch):
    import json
    from pathlib import Path

    import torch
    from test_sft_distributed import _new_run, _rows

    from sftjudge.run import files
    from sftjudge.run.directory import RunDir
    from sftjudge.run.io import read_jsonl
    from sftjudge.train import engine, stage

    real, calls = engine.summed_token_loss, []

    def tight(model, ids, mask, labels, **kwargs):
        if model.training:
            calls.append(ids.shape[0])
            if len(calls) > 4 and ids.shape[0] > 2:  # epoch 2 (4 micro-batches of 4 rows each in epoch 1)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, ids, mask, labels, **kwargs)

    monkeypatch.setattr(engine, "summed_token_loss", tight)
    sft = _settings(batch_size=4, grad_accum=1, keep_checkpoints="all")
    run = RunDir(_new_run(tmp_path, "oom", sft, {"train": _rows(13), "val": _rows(3, 100), "test": _rows(2, 200)}))
    result, summary = stage.fine_tune(run, sft, str(tiny_model_dir))
    assert summary["batch_size"] == 2 and summary["resumed_from_epoch"] == 1
    assert [m["epoch"] for m in read_jsonl(run / files.EPOCH_METRICS)] == [1, 2]
    state = json.loads((Path(result.best_checkpoint).parent / "epoch-2" / "trainer_state.json").read_text())
    # 4 optimizer steps per epoch either way: 4 batches of 4, then 7 batches of 2 accumulated in pairs
    assert state["global_step"] == 8
    assert calls[:5] == [4] * 5 and calls[5:] == [2] * 7
