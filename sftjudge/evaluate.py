"""Judge a run's generations and decide against the champion: the I/O around judge.py and decide.py."""

from __future__ import annotations

import gc
import json
import statistics
from pathlib import Path
from typing import Any

from sftjudge.config import JudgeConfig, RunConfig
from sftjudge.decide import Decision, DecideRules, RunResult, decide
from sftjudge.metrics import aggregate, item_metrics
from sftjudge.registry import Registry
from sftjudge.rundir import RunDir, atomic_write_json, read_jsonl, write_jsonl


def judge_key(judge: JudgeConfig) -> str:
    return f"{judge.judge}@{judge.model}"


def load_logprob_judge(judges_dir: str, name: str, model_ref: str, home: str | None, precision: str,
                       max_prompt_tokens: int):
    """A LogprobJudge for judge definition `name` on model `model_ref` (bf16 when fast here)."""
    import torch

    from sftjudge.device import device, use_bf16
    from sftjudge.judge import LogprobJudge, load_judge
    from sftjudge.models import resolve_model, sftjudge_home
    from sftjudge.sft import load_causal_lm

    spec = load_judge(Path(judges_dir), name)
    model, tokenizer = load_causal_lm(resolve_model(model_ref, sftjudge_home(home)))
    model = model.to(device=device(), dtype=torch.bfloat16 if use_bf16(precision) else torch.float32)
    return LogprobJudge(model, tokenizer, spec, max_prompt_tokens=max_prompt_tokens)


def judge_generations(run: RunDir, judge: JudgeConfig, home: str | None, precision: str) -> dict[str, Any]:
    """Score generations.jsonl with the configured judge; write judgments.jsonl and metrics.json."""
    generations = read_jsonl(run / "generations.jsonl")
    scorer = load_logprob_judge(judge.judges_dir, judge.judge, judge.model, home, precision,
                                judge.max_prompt_tokens)
    items = [{"id": g["id"], "instruction": g["instruction"], "reference": g["reference"], "answer": g["text"]}
             for g in generations]
    judgments = scorer.score(items, batch_size=judge.batch_size)
    del scorer
    gc.collect()
    rows, cheap_rows = [], []
    for gen, judgment in zip(generations, judgments):
        cheap = item_metrics(gen["text"], gen["reference"])
        cheap_rows.append(cheap)
        rows.append(judgment.to_json() | {"judge": judge_key(judge), "answer": gen["text"],
                                          "reference": gen["reference"], "metrics": cheap})
    write_jsonl(run / "judgments.jsonl", rows)
    scores = [j.score for j in judgments if j.score is not None]
    metrics = {
        "judge": judge_key(judge), "items": len(judgments), "scored": len(scores),
        "judge_score_mean": round(statistics.fmean(scores), 4) if scores else None,
        "judge_score_stdev": round(statistics.pstdev(scores), 4) if len(scores) > 1 else None,
        "label_mass_mean": round(statistics.fmean(j.label_mass for j in judgments), 4) if judgments else None,
        "truncated_prompts": sum(j.truncated for j in judgments),
        "cheap": aggregate(cheap_rows),
    }
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def run_result(run: RunDir) -> RunResult:
    """The challenger's numbers, read back from its run directory."""
    manifest = run.manifest()
    sft = manifest["stages"]["sft"]["counts"]
    metrics = json.loads((run / "metrics.json").read_text())
    return RunResult(run_id=run.run_id, judge_score=metrics["judge_score_mean"],
                     train_loss=sft["train_loss_at_best"], val_loss=sft["best_val_loss"],
                     test_fingerprint=manifest["stages"]["curate"]["counts"]["test_fingerprint"],
                     judge_key=metrics["judge"])


def _result_from_registry(row: dict[str, Any]) -> RunResult:
    return RunResult(run_id=row["run_id"], judge_score=row["judge_score"], train_loss=row["train_loss_at_best"],
                     val_loss=row["best_val_loss"], test_fingerprint=row["test_fingerprint"], judge_key=row["judge"])


def decide_and_record(run: RunDir, config: RunConfig) -> Decision:
    """Decide promote/rollback against the registry's champion; write decision.json; record both atomically."""
    registry = Registry.in_runs_dir(config.runs_dir)
    challenger = run_result(run)
    champion_row = registry.champion()
    champion = _result_from_registry(champion_row) if champion_row and champion_row["run_id"] != run.run_id else None
    rules = DecideRules(min_improvement=config.decide.min_improvement,
                        max_val_train_ratio=config.decide.max_val_train_ratio,
                        min_judge_score=config.decide.min_judge_score)
    decision = decide(challenger, champion, rules)
    atomic_write_json(run / "decision.json", decision.to_json())
    manifest = run.manifest()
    sft = json.loads((run / "sft.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    registry.record({
        "run_id": run.run_id, "name": manifest["name"], "created_at": manifest["created_at"],
        "base_model": config.sft.base_model, "method": config.sft.method,
        "dataset_sha256": manifest["stages"]["curate"]["counts"]["input_sha256"],
        "test_fingerprint": challenger.test_fingerprint, "template_fingerprint": sft["template_fingerprint"],
        "epochs": config.sft.epochs, "learning_rate": config.sft.learning_rate, "batch_size": config.sft.batch_size,
        "best_epoch": sft["best_epoch"], "best_val_loss": challenger.val_loss,
        "train_loss_at_best": challenger.train_loss, "judge": challenger.judge_key,
        "judge_score": challenger.judge_score, "exact_match": metrics["cheap"].get("exact_match"),
        "decision": decision.action, "reasons": decision.reasons, "checkpoint": sft["best_checkpoint"],
        "run_dir": str(run.path.resolve()),
    }, promote=decision.action == "promote")
    return decision
