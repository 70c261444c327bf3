"""Memory handed back between model stages (issue 25, items 4, 5 and 8), shown on the CPU.

On a GPU worker the stages of one flow run share a process and a card: whatever one stage leaves alive, the next
cannot load. Models live in reference cycles (accelerate rebinds `forward` to the model; the trainer and its epoch
callback refer to each other), so "no reference left" is not enough: something must collect. Each test here runs
with the automatic collector off, so only the code's own collection frees anything, as on a busy worker where the
collector's thresholds are not reached between two loads.
"""

from __future__ import annotations

import contextlib
import gc
import weakref

import pytest

from sftjudge.runtime.oom import with_smaller_batch_on_oom


@contextlib.contextmanager
def collector_off():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class _Held:
    """Stands for a model: it sits in a reference cycle, as a prepared model does."""

    def __init__(self):
        self.me = self


def test_an_out_of_memory_retry_frees_the_failed_attempt_before_retrying():
    refs: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    def work(size: int) -> int:
        alive_at_retry.append(any(r() is not None for r in refs))
        model = _Held()  # held by this frame, which the exception's traceback keeps
        refs.append(weakref.ref(model))
        if size > 1:
            raise MemoryError("CUDA out of memory")
        return size

    with collector_off():
        assert with_smaller_batch_on_oom(work, 4, log=lambda message: None) == 1
    # before the fix the retry freed inside the except block, where the traceback still held the failed model
    assert alive_at_retry == [False, False, False]


@pytest.mark.model
def test_the_sft_stage_lets_go_of_the_trained_student_before_it_loads_the_next(tmp_path, tiny_model_dir,
                                                                               monkeypatch):
    from test_sft_distributed import _new_run, _rows
    from test_sft_engine import _settings

    from sftjudge.run.directory import RunDir
    from sftjudge.train import stage

    real, loaded = stage.load_student, []
    alive_at_load: list[int] = []

    def tracked(base_path, sft):
        alive_at_load.append(sum(r() is not None for r in loaded))
        model, tokenizer = real(base_path, sft)
        loaded.append(weakref.ref(model))
        return model, tokenizer

    monkeypatch.setattr(stage, "load_student", tracked)
    sft = _settings(epochs=1)
    run = RunDir(_new_run(tmp_path, "handback", sft, {"train": _rows(8), "val": _rows(3, 100),
                                                      "test": _rows(2, 200)}))
    with collector_off():
        stage.fine_tune(run, sft, str(tiny_model_dir))
        # the trained student is gone when the test-loss pass loads its own, and that one is gone at the end
        assert alive_at_load == [0, 0]
        assert [r() is None for r in loaded] == [True, True]
