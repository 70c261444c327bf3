"""Which engines answer in a generate stage: the student's and the base model's, loaded (or served) on first use.

The student answers first; then the base model answers what its caches miss. In-process engines (transformers, or
vllm.LLM) are two models, so the student's is closed before the base model loads. A vLLM server of the base model
with the LoRA checkpoint as an adapter answers for both, so it stays up until the stage ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sftjudge.config import RunConfig
from sftjudge.generate.backends import Engine, Generator, LazyGenerator
from sftjudge.generate.loading import make_generator
from sftjudge.run import files
from sftjudge.run.directory import RunDir


@dataclass(kw_only=True)
class StageEngines:
    student: Generator
    base: Generator
    shared: bool = False  # one engine answers for both (the base model's generator closes it)

    def student_done(self) -> None:
        """The student has answered everything: free its engine for the base model unless they share it."""
        if not self.shared:
            self.student.close()

    def close(self) -> None:
        """Close every engine and stop every server; also called when the stage fails."""
        self.student.close()
        self.base.close()


def stage_engines(run: RunDir, config: RunConfig, base: str, checkpoint: Path, tokenizers: tuple) -> StageEngines:
    """The stage's engines for the base model folder `base` and the chosen `checkpoint`; `tokenizers`: the
    student's and the base model's (both encode prompts for a server)."""
    from sftjudge.train.checkpoints import checkpoint_meta

    engine = Engine.for_student(config)
    if engine.backend != "vllm" or config.vllm.engine == "in_process":
        return StageEngines(student=LazyGenerator(lambda: make_generator(engine, base, checkpoint)[0]),
                            base=LazyGenerator(lambda: make_generator(engine, base)[0]))
    from sftjudge.generate.served import BASE, STUDENT, ServedGenerator, StudentServer

    log = run / files.VLLM_GENERATE_LOG
    student_tokenizer, base_tokenizer = tokenizers
    if checkpoint_meta(checkpoint)["method"] == "lora":
        server = StudentServer(config, engine, base, checkpoint, log)
        return StageEngines(student=ServedGenerator(server.connect, server.name(STUDENT), student_tokenizer),
                            base=ServedGenerator(server.connect, server.name(BASE), base_tokenizer, server.close),
                            shared=True)
    # A full checkpoint is other weights: the base model needs a server of its own, started only if needed.
    tuned = StudentServer(config, engine, str(checkpoint), None, log)
    untuned = StudentServer(config, engine, base, None, log)
    return StageEngines(student=ServedGenerator(tuned.connect, tuned.name(STUDENT), student_tokenizer, tuned.close),
                        base=ServedGenerator(untuned.connect, untuned.name(BASE), base_tokenizer, untuned.close))
