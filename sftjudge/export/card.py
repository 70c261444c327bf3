"""The model card (README.md) of an exported run: what the model is, what it learned from, and how it was judged,
all read from the run directory, so the card says no more than the run recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjudge.run import files
from sftjudge.run.io import read_json_if_present


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def model_card(run: Path, config, sft: dict[str, Any], dtype: str) -> str:
    """README.md for the exported folder of `run` (its config, sft.json, data report, metrics and decision)."""
    data = read_json_if_present(run / files.DATA_REPORT) or {}
    metrics = read_json_if_present(run / files.METRICS) or {}
    decision = read_json_if_present(run / files.DECISION) or {}
    name = f"{config.name}-{run.name}"
    lines = [
        "---", f"base_model: {config.sft.base_model}", "library_name: transformers",
        "tags: [sftjudge, " + ("lora-merged" if sft.get("method") == "lora" else "full-finetune") + "]", "---", "",
        f"# {name}", "",
        f"Fine-tuned from `{config.sft.base_model}` by sftjudge run `{run.name}` "
        f"({sft.get('method')}, merged and saved as {dtype} safetensors). Load it with "
        f"`AutoModelForCausalLM.from_pretrained` or serve it with `vllm serve <folder>`; the chat template is the "
        f"one it was trained with.", "",
        "## Data", "",
        f"- source `{data.get('input', config.data.path)}`, SHA-256 `{data.get('input_sha256', '-')}`",
        f"- rows in {data.get('rows_in', '-')}, kept {data.get('rows_kept', '-')}, dropped "
        f"{data.get('rows_dropped', '-')} (every drop with its reason in the run's data/quarantine.jsonl)",
    ]
    for step in data.get("steps", []):
        reasons = ", ".join(f"{k}: {v}" for k, v in (step.get("reasons") or {}).items())
        lines.append(f"  - {step.get('step')}: {step.get('in')} in, {step.get('kept')} kept, {step.get('dropped')} "
                     f"dropped" + (f" ({reasons})" if reasons else ""))
    splits = data.get("splits") or {}
    if splits:
        lines.append("- splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()))
    lines += ["", "## Training", "",
              f"- method {config.sft.method}" + (f", LoRA r={config.sft.lora_r} alpha={config.sft.lora_alpha} on "
                                                 f"{', '.join(config.sft.target_modules)}"
                                                 if config.sft.method == "lora" else ""),
              f"- learning rate {config.sft.learning_rate}, batch {config.sft.batch_size} x accumulation "
              f"{config.sft.grad_accum}, max sequence {config.sft.max_seq_len} tokens, precision "
              f"{sft.get('precision')}, seed {config.sft.seed}",
              f"- chosen epoch {sft.get('best_epoch')}: {sft.get('selection')}", "",
              "| epoch | train loss | val loss | val perplexity |", "|---|---|---|---|"]
    for epoch in sft.get("epochs", []):
        lines.append(f"| {epoch['epoch']} | {_fmt(epoch.get('train_loss'), 4)} | {_fmt(epoch.get('val_loss'), 4)} | "
                     f"{_fmt(epoch.get('val_ppl'), 3)} |")
    lines += ["", "## Evaluation", ""]
    if not metrics:
        lines.append("The run was not judged (no metrics.json): nothing is claimed about its quality.")
    else:
        sides = metrics.get("side_by_side") or {}
        lines += [f"Judge `{metrics.get('judge', '-')[:80]}` on {metrics.get('items')} held-out test items; "
                  f"'% of reference' places a score between an empty answer (0%) and the reference itself (100%).",
                  "", "| model | judge score | % of reference | similarity | token F1 | exact match |",
                  "|---|---|---|---|---|---|"]
        for side, label in (("base", "base model"), ("champion", "champion before"), ("run", "this model")):
            if side in sides:
                s = sides[side]
                lines.append(f"| {label} | {_fmt(s.get('judge'), 2)} | {_percent(s.get('normalised'))} | "
                             f"{_fmt(s.get('similarity'))} | {_fmt(s.get('token_f1'))} | "
                             f"{_fmt(s.get('exact_match'))} |")
        health = metrics.get("health") or {}
        lines += ["", f"- judge health: {'valid' if health.get('valid') else 'NOT valid'}"
                  + (f" ({'; '.join(health.get('problems') or [])})" if health.get("problems") else "")]
        calibration = metrics.get("calibration") or {}
        described = [f"pointwise Spearman {_fmt(c.get('spearman'), 2)} on {c.get('items')} items"
                     if kind == "pointwise" else f"pairwise agreement {_percent(c.get('agreement'))} on "
                     f"{c.get('items')} items" for kind, c in calibration.items() if isinstance(c, dict)]
        lines.append("- judge calibration against human labels: " + ("; ".join(described) or "not calibrated"))
        regression = metrics.get("regression") or {}
        if regression:
            taxes = {k: v.get("tax") for k, v in (regression.get("categories") or {}).items()}
            lines.append("- alignment tax (points lost against the base model on general prompts): "
                         + ", ".join(f"{k} {_fmt(v, 2)}" for k, v in taxes.items()))
    lines += ["", "## Decision", ""]
    if decision:
        lines.append(f"**{decision.get('action', '-').upper()}**")
        lines += [f"- {reason}" for reason in decision.get("reasons", [])]
    else:
        lines.append("No decision recorded for this run.")
    lines += ["", f"Generation settings of the run (in generation_config.json): greedy"
              f"{'' if config.generate.temperature == 0 else f', temperature {config.generate.temperature}'}, "
              f"max {config.generate.max_new_tokens} new tokens"
              + (f", stop strings {json.dumps(config.generate.stop)}" if config.generate.stop else "") + ".", ""]
    return "\n".join(lines)
