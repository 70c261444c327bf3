"""The generate stage: the best checkpoint's answers to the test split (and the regression suite), cached.

Answers are appended as each batch finishes, keyed by (model fingerprint, prompt, params), so a retried stage
generates only what is missing and loads no model when nothing is; the base model's answers come from a cache
shared by every run on the same split.
"""

from __future__ import annotations

import gc
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.curate.rows import Example
from sftjudge.curate.split import load_split
from sftjudge.generate.backends import (
    Engine,
    GenerationParams,
    generation_params,
    prompts_for,
)
from sftjudge.generate.cache import (
    AnsweringModel,
    UntunedModel,
    generate_baseline,
    generate_cached,
)
from sftjudge.generate.engines import stage_engines
from sftjudge.generate.loading import checkpoint_tokenizer
from sftjudge.judge.suite import load_suite
from sftjudge.models.embedded import resolve_model
from sftjudge.models.fingerprint import model_fingerprint
from sftjudge.run import files
from sftjudge.run.io import write_jsonl
from sftjudge.run.stage import StageContext, run_stage


def generate_stage(run_path: str, config: RunConfig) -> dict[str, Any]:
    """Answer every test prompt with the best checkpoint; one record per item in generations.jsonl. With the
    regression suite enabled, also its prompts (regression_generations.jsonl) and, cached across runs, the base
    model's answers to them (regression_baseline.jsonl); with generate.baseline, the base model's test answers.
    """
    return run_stage("generate", run_path, config, _generate)


def _generate(ctx: StageContext) -> None:
    run, config, record = ctx.run, ctx.config, ctx.record
    summary = json.loads((run / files.SFT_SUMMARY).read_text())
    checkpoint = Path(summary["best_checkpoint"])
    base = resolve_model(config.sft.base_model, ctx.home)
    engine = Engine.for_student(config)
    rows = load_split(run.path, "test")
    tokenizer = checkpoint_tokenizer(checkpoint)
    prompts = prompts_for(tokenizer, rows)  # refuses a template mismatch up front
    suite = load_suite(config.regression.suite) if config.regression.enabled else None
    base_jobs = []  # (rows, params, file): the base model's answers this run wants
    if config.generate.baseline:
        base_jobs.append((rows, generation_params(config.generate), files.BASELINE_GENERATIONS))
    if suite is not None:
        base_jobs.append((suite, _suite_params(config), files.REGRESSION_BASELINE))
    untuned = UntunedModel.load(base, engine) if base_jobs else None
    engines = stage_engines(run, config, base, checkpoint, (tokenizer, untuned and untuned.tokenizer))
    model = AnsweringModel(fingerprint=model_fingerprint(base, checkpoint, engine=engine.id),
                           label=f"{run.run_id}/epoch-{summary['best_epoch']}", generator=engines.student)
    try:
        result = generate_cached(rows, prompts, generation_params(config.generate), run / files.GENERATIONS, model,
                                 chunk_size=engine.chunk_size)
        if suite is not None:
            generate_cached(suite, prompts_for(tokenizer, suite), _suite_params(config),
                            run / files.REGRESSION_GENERATIONS, model, chunk_size=engine.chunk_size)
        engines.student_done()  # frees the card for the base model, unless one engine answers for both
        if untuned is not None:
            _base_model_answers(ctx, replace(untuned, generator=engines.base), engine.chunk_size, base_jobs)
    finally:
        engines.close()  # frees the card for the judge, also when generation failed
        gc.collect()
    record.outputs = {"generations": files.GENERATIONS}
    if config.generate.baseline:
        record.outputs["baseline"] = files.BASELINE_GENERATIONS
    if suite is not None:
        record.outputs |= {"regression": files.REGRESSION_GENERATIONS, "regression_baseline": files.REGRESSION_BASELINE}
    records = result.records
    record.counts = {"items": len(records), **result.counts(), "model_fingerprint": model.fingerprint,
                     "hit_max_new_tokens": sum(r["finish_reason"] == "length" for r in records),
                     "completion_tokens": sum(r["completion_tokens"] for r in records)}


def _suite_params(config: RunConfig) -> GenerationParams:
    # The task's stop strings belong to the task's format, not to general prompts.
    return GenerationParams(max_new_tokens=config.regression.max_new_tokens, temperature=config.generate.temperature,
                            seed=config.generate.seed)


def _base_model_answers(ctx: StageContext, untuned: UntunedModel, chunk_size: int,
                        jobs: list[tuple[list[Example], GenerationParams, str]]) -> None:
    """The base model's answers for each (rows, params, file) job, from the baseline cache shared by every run.

    One generator serves all jobs: the base model (on a GPU worker, the student's vLLM server with no adapter)
    starts at most once per stage, and not at all when every answer is cached.
    """
    for rows, params, name in jobs:
        baseline = generate_baseline(untuned, rows, params, ctx.home, chunk_size=chunk_size)
        write_jsonl(ctx.run / name, baseline.records)
