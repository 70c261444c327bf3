"""The run report: `report.md` plus plots, written from the run directory alone so it can be rebuilt any time."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from sftjudge.judge.pairwise import bootstrap_ci
from sftjudge.run import files
from sftjudge.run.directory import RunDir
from sftjudge.run.io import atomic_write_text, read_json_if_present, read_jsonl
from sftjudge.run.summary import human_review_lines


def plot_losses(epochs, out: Path) -> Path:
    """Train and val loss per epoch (the overfitting picture), with the per-step training loss behind them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [m.epoch for m in epochs]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    steps = [(m.epoch - 1 + (i + 1) / len(m.step_losses), loss)
             for m in epochs for i, loss in enumerate(m.step_losses)]
    if steps:
        ax.plot([x for x, _ in steps], [y for _, y in steps], color="lightgrey", linewidth=0.8,
                label="training steps (dropout on)")
    ax.plot(xs, [m.train_loss for m in epochs], marker="o", label="train (eval mode)")
    ax.plot(xs, [m.val_loss for m in epochs], marker="o", label="validation")
    best = min(epochs, key=lambda m: m.val_loss)
    ax.axvline(best.epoch, color="grey", linestyle=":", label=f"best epoch {best.epoch}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("completion-token loss")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_scores(scores: list[float], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.hist(scores, bins=[x + 0.5 for x in range(0, 11)], edgecolor="black")
    ax.set_xlabel("judge score (1-10)")
    ax.set_ylabel("test items")
    ax.set_xticks(range(1, 11))
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def data_report_markdown(data: dict[str, Any]) -> str:
    lines = [
        f"Input `{data['input']}` (sha256 {data['input_sha256'][:12]}): {data['rows_in']} rows in = "
        f"{data['rows_kept']} kept {data['splits']} + {data['rows_dropped']} dropped (each with its reason in "
        f"data/quarantine.jsonl); {data['blank_lines_skipped']} blank lines skipped."
        + (" Curation reused from cache." if data.get("cache", {}).get("hit") else ""),
        _table(["step", "in", "kept", "dropped", "reasons"],
               [[s["step"], s["in"], s["kept"], s["dropped"], "; ".join(f"{k}: {v}" for k, v in s["reasons"].items())]
                for s in data["steps"]]),
    ]
    stripped = sum(s.get("trailing_stripped", 0) for s in data["steps"])
    if stripped:
        lines.append(f"Special tokens: an end marker (like `<|endoftext|>`) was taken off the end of an answer in "
                     f"{stripped} rows (data.special_tokens: strip_trailing); rows holding one elsewhere were dropped.")
    if data.get("pii_counts"):
        lines.append("PII found: " + ", ".join(f"{k} {v}" for k, v in data["pii_counts"].items()))
    if data.get("cluster_sizes"):
        lines.append("Near-duplicate cluster sizes (size: clusters): "
                     + ", ".join(f"{k}: {v}" for k, v in data["cluster_sizes"].items()))
    lengths = data.get("token_lengths") or {}
    if lengths.get("total_tokens"):
        lines.append(f"Tokens per kept row (prompt + answer, chat template applied): mean {lengths['mean_total']}, "
                     f"max {lengths['max_total']}")
        lines.append(_table(["tokens", "rows"], [[f"{b['from']}-{b['to']}", b["count"]]
                                                 for b in lengths["total_tokens"]]))
    flagged = data.get("contamination") or []
    lines.append(f"Contamination: {len(flagged)} val/test rows overlap train or the regression suite"
                 + (": " + ", ".join(f"{f['id']} ({f['overlap']:.2f})" for f in flagged[:10]) if flagged else "."))
    lines += [f"**Warning:** {w}" for w in data.get("warnings", [])]
    return "\n\n".join(lines)


def _sft_note(run: RunDir) -> str:
    sft = json.loads((run / files.SFT_SUMMARY).read_text())
    return (f"Chosen: {sft['selection']}. Perplexity of the test split's reference answers under it: "
            f"{sft['test_ppl']} (loss {sft['test_loss']}), measured like the train and val losses. "
            f"{sft['trainable_params']:,} trainable of {sft['total_params']:,} parameters, {sft['precision']}, "
            f"batch {sft['batch_size']}" + (f", resumed after epoch {sft['resumed_from_epoch']}"
                                            if sft.get("resumed_from_epoch") else "") + ".")


def budget_line(budget: dict[str, Any], truncated: int) -> str:
    """How judge prompts were fitted, in one sentence.

    >>> budget_line({"setting": 1024, "context_window": 32768, "tokens": {"rubric": 1024}}, 2)[:78]
    'Judge prompts: up to 1024 tokens (rubric), set by judge.max_prompt_tokens=1024'
    """
    sizes = ", ".join(f"{n} tokens ({name})" for name, n in budget["tokens"].items())
    how = ("sized by judge.max_prompt_tokens=auto from the judge text, sft.max_seq_len and generate.max_new_tokens"
           + (f" within the judge's {budget['context_window']}-token context" if budget.get("context_window") else "")
           if budget["setting"] == "auto" else f"set by judge.max_prompt_tokens={budget['setting']}")
    cut = (f"{truncated} prompt(s) had an answer cut in the middle (the judge was told how much)" if truncated
           else "no prompt was cut")
    return f"Judge prompts: up to {sizes}, {how}; {cut}."


def judge_report_markdown(metrics: dict[str, Any]) -> str:
    """Judge scores, cheap metrics, pairwise result and judge health as markdown."""
    health = metrics["health"]
    rows = [["judge", metrics["judge"]], ["items", metrics["items"]],
            ["judge score mean (1-10)", metrics["judge_score_mean"]],
            ["judge score stdev", metrics["judge_score_stdev"]], ["unparseable", metrics["unparseable"]]]
    rows += [[k, v] for k, v in metrics["cheap"].items()]
    parts = [_table(["metric", "value"], rows)]
    if budget := metrics.get("prompt_budget"):
        parts.append(budget_line(budget, metrics.get("truncated_prompts") or 0))
    baseline = metrics.get("baseline")
    if baseline:
        parts.append(f"Baseline - the base model without fine-tuning ({baseline['model']}), same items and judge: "
                     f"judge score {baseline['judge_score_mean']}, "
                     + ", ".join(f"{k} {v}" for k, v in baseline["cheap"].items()) + ".")
    if sides := metrics.get("side_by_side"):
        labels = {"base": "base model", "champion": "champion", "run": "this run"}
        rows = [["judge score (1-10)", "judge"], ["% of reference quality", "normalised"],
                ["semantic similarity", "similarity"], ["token F1", "token_f1"], ["ROUGE-L", "rouge_l"],
                ["exact match", "exact_match"]]

        def shown(name: str, key: str) -> Any:
            value = sides[name].get(key)
            return f"{value:.0%}" if key == "normalised" and value is not None else value

        parts.append("Side by side, same test items:\n\n" + _table(
            ["", *(labels[k] for k in sides)],
            [[title, *(shown(name, key) for name in sides)] for title, key in rows
             if any(sides[name].get(key) is not None for name in sides)]))
    if dims := metrics.get("dimensions"):
        sides = [(k, label) for k, label in (("base", "base model"), ("champion", "champion"), ("run", "this run"))
                 if dims.get(k)]
        parts.append(f"Per dimension ({dims['judge']}, 1-10; the weakest one drives the advice):\n\n"
                     + _table(["dimension", *(label for _, label in sides)],
                              [[name, *(dims[k].get(name) for k, _ in sides)] for name in dims["run"]]))
    if scale := metrics.get("normalised"):
        anchors, names = metrics["anchors"], {"run": "this run", "base": "base model", "champion": "champion"}
        shown = ", ".join(f"{names[k]} {'-' if v is None else f'{v:.0%}'}" for k, v in scale.items())
        parts.append(f"Reference-anchored scale (an empty answer = 0%, the reference itself = 100%; this judge gives "
                     f"them {anchors['empty_mean']} and {anchors['reference_mean']} on average over "
                     f"{anchors['items']} items): **{shown}** of reference quality.")
    pairwise = metrics.get("pairwise")
    if pairwise:
        ci = pairwise["win_rate_ci95"]
        parts.append(
            f"Pairwise vs the champion ({pairwise['pairs']} items, both answer orders): {pairwise['wins']} wins, "
            f"{pairwise['losses']} losses, {pairwise['ties']} ties; win rate {pairwise['win_rate']}"
            + (f" (95% CI {ci[0]}-{ci[1]})" if ci else "")
            + f"; swap consistency {pairwise['swap_consistency']}, judge picked position A "
              f"{pairwise['first_position_rate']} of the time.")
    for kind, c in (metrics.get("calibration") or {}).items():
        numbers = ", ".join(f"{k} {c[k]}" for k in ("spearman", "kendall", "mae", "within_1", "agreement",
                                                   "swap_consistency") if c.get(k) is not None)
        parts.append(f"Calibration against human labels ({kind}, {c['items']} items, {c['at']}): {numbers}.")
    verdict = ("valid" if health["valid"] else
               "**DEGRADED** - the judge's scale is too compressed to decide this run"
               if health.get("status") == "degraded" else "**INVALID** - the judge score does not decide this run")
    parts.append(f"Judge health: {verdict}."
                 + "".join(f"\n- problem: {p}" for p in health["problems"])
                 + "".join(f"\n- warning: {w}" for w in health["warnings"]))
    return "\n\n".join(parts)


def regression_report_markdown(regression: dict[str, Any] | None, champion: dict[str, float] | None) -> str:
    """The alignment-tax table: per suite category, base model vs champion vs this run, and points lost."""
    if not regression:
        return "The regression suite was not run (regression.enabled is false)."
    champion = champion or {}
    rows = [[name, c["items"], c["base"], champion.get(name), c["run"], c["tax"], _interval(c.get("item_taxes"))]
            for name, c in regression["categories"].items()]
    rows.append(["**all**", sum(c["items"] for c in regression["categories"].values()), regression["base_mean"],
                 None, regression["run_mean"], None if regression["run_mean"] is None
                 else round(regression["base_mean"] - regression["run_mean"], 4), None])
    return (f"Suite `{regression['suite']}` judged by {regression['judge']} (1-10). The tax is the base model's "
            f"score minus this run's: the general ability the fine-tune cost; the gate trusts it only over its "
            f"95% interval (a few items per category cannot tell a small loss from noise).\n\n"
            + _table(["category", "items", "base model", "champion", "this run", "tax", "tax 95% CI"], rows))


def _interval(values: list[float] | None) -> str | None:
    if not values:
        return None
    low, high = bootstrap_ci(values)
    return f"{low:+.2f} to {high:+.2f}"


def _side_by_side(run: RunDir, judgments: list[dict[str, Any]], champion_dir: str | None, count: int) -> str:
    """Sampled test items: reference, base model, champion and this run's answers next to each other."""
    def answers(path: Path) -> dict[str, str]:
        return {g["id"]: g["text"] for g in read_jsonl(path)} if path.is_file() else {}

    base = answers(run / files.BASELINE_GENERATIONS)
    champion = answers(Path(champion_dir) / files.GENERATIONS) if champion_dir else {}
    headers = ["id", "score", "exact", "this run", "reference"]
    headers[4:4] = (["base model"] if base else []) + (["champion"] if champion else [])
    rows = []
    for j in judgments[:count]:
        extra = ([base.get(j["id"], "")[:120]] if base else []) + ([champion.get(j["id"], "")[:120]] if champion else [])
        rows.append([j["id"], j["score"], j["metrics"]["exact_match"], j["answer"][:120], *extra, j["reference"][:120]])
    return _table(headers, rows)


def write_report(run: RunDir, sample_items: int = 8) -> Path:
    """Write report.md (decision, losses, judge, data books, sample answers) and score_hist.png."""
    manifest = run.manifest()
    decision = json.loads((run / files.DECISION).read_text())
    data = json.loads((run / files.DATA_REPORT).read_text())
    metrics = json.loads((run / files.METRICS).read_text())
    epochs = read_jsonl(run / files.EPOCH_METRICS)
    judgments = read_jsonl(run / files.JUDGMENTS)
    plot_scores([j["score"] for j in judgments if j["score"] is not None], run / files.SCORE_HIST)
    stages = [[name, s.get("status"), s.get("seconds", "")] for name, s in manifest["stages"].items()]
    parts = [
        f"# Run {run.run_id} ({manifest['name']})",
        f"**Decision: {decision['action'].upper()}**" + (f" (champion before: {decision['champion_before']})"
                                                         if decision["champion_before"] else ""),
        "\n".join(f"- {reason}" for reason in decision["reasons"]),
        *(["**Warnings**\n\n" + "\n".join(f"- {w}" for w in decision["warnings"])] if decision.get("warnings") else []),
        *(["**Next steps**\n\n" + "\n".join(f"- {a}" for a in decision["advice"])] if decision.get("advice") else []),
        "## Stages", _table(["stage", "status", "seconds"], stages),
        "## Training (loss on completion tokens, train and val measured the same way)",
        _table(["epoch", "train loss", "val loss", "val/train", "train ppl", "val ppl", "seconds"],
               [[e["epoch"], e["train_loss"], e["val_loss"], e["val_loss"] / e["train_loss"], e["train_ppl"],
                 e["val_ppl"], e["seconds"]] for e in epochs]),
        _sft_note(run),
        "![loss curve](loss_curve.png)",
        "## Judge and metrics",
        judge_report_markdown(metrics),
        "![judge score histogram](score_hist.png)",
        "## Human review",
        "\n".join(f"- {line}" for line in human_review_lines(read_json_if_present(run / files.REVIEW_AGREEMENT),
                                                               read_json_if_present(run / files.REVIEW_RELEASE))),
        "## Regression suite (alignment tax)",
        regression_report_markdown(metrics.get("regression"),
                                   (decision.get("comparison", {}).get("champion") or {}).get("regression")),
        "## Data",
        data_report_markdown(data),
        f"## Sample test items (first {sample_items})",
        _side_by_side(run, judgments, (metrics.get("pairwise") or {}).get("champion_run_dir"), sample_items),
    ]
    out = run / files.REPORT
    atomic_write_text(out, "\n\n".join(parts) + "\n")
    return out


def run_diff(path_a: Path, path_b: Path) -> dict[str, Any]:
    """Config keys that differ (flattened) and the headline results of both runs."""
    import yaml

    from sftjudge.config_yaml import flatten
    from sftjudge.run.summary import run_summary

    cfg_a = flatten(yaml.safe_load((Path(path_a) / files.CONFIG).read_text()))
    cfg_b = flatten(yaml.safe_load((Path(path_b) / files.CONFIG).read_text()))
    changed = {k: (cfg_a.get(k), cfg_b.get(k)) for k in sorted(set(cfg_a) | set(cfg_b)) if cfg_a.get(k) != cfg_b.get(k)}
    sa, sb = run_summary(path_a), run_summary(path_b)
    keys = ("best_epoch", "best_val_loss", "train_loss_at_best", "judge_score", "exact_match", "regression_mean",
            "decision")
    results = {k: (sa.get(k), sb.get(k)) for k in keys}
    tax_a, tax_b = _taxes(Path(path_a)), _taxes(Path(path_b))
    results |= {f"alignment_tax.{c}": (tax_a.get(c), tax_b.get(c)) for c in sorted(set(tax_a) | set(tax_b))}
    return {"runs": [sa["run_id"], sb["run_id"]], "config": changed, "results": results}


def _taxes(run_path: Path) -> dict[str, float | None]:
    """Per-category alignment tax of a run (empty for runs without the regression suite)."""
    metrics = run_path / files.METRICS
    regression = json.loads(metrics.read_text()).get("regression") if metrics.is_file() else None
    return {c: v["tax"] for c, v in (regression or {}).get("categories", {}).items()}


# Where a link or image in report.html may point: the report's own plots are inlined as PNG data; links are web pages.
_SAFE_TARGET = re.compile(r"(?:https?://|#|data:image/png;base64,)", re.IGNORECASE)


def _safe_html(text: str) -> str:
    r"""report.md as HTML in which nothing from the data, the answers or a run's name can run: raw HTML is shown as
    text (Markdown's HTML passthrough is switched off), and a link or image pointing anywhere but a web page or an
    inlined plot (javascript:, data:text/html, ...) keeps its text and loses its target. report.html is shared and
    stored as an MLflow artifact, so it must be safe to open.

    >>> _safe_html('# run <script>alert(1)</script>\n\n[x](javascript:alert(1)) <img src=x onerror=alert(1)>')
    '<h1>run &lt;script&gt;alert(1)&lt;/script&gt;</h1>\n<p><a>x</a> &lt;img src=x onerror=alert(1)&gt;</p>'
    """
    import markdown
    from markdown.treeprocessors import Treeprocessor

    class DropUnsafeTargets(Treeprocessor):
        def run(self, root):
            for element in root.iter():
                for attribute in ("href", "src"):
                    target = element.get(attribute)
                    if target is not None and not _SAFE_TARGET.match(target.strip()):
                        del element.attrib[attribute]

    converter = markdown.Markdown(extensions=["tables"])
    converter.preprocessors.deregister("html_block")
    converter.inlinePatterns.deregister("html")
    converter.treeprocessors.register(DropUnsafeTargets(converter), "drop_unsafe_targets", 0)
    return converter.convert(text)


def write_html(run: RunDir) -> Path:
    """report.md as one self-contained HTML file (plots inlined), to attach or share."""
    import base64

    text = (run / files.REPORT).read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        image = run / match.group(2)
        if not image.is_file():
            return match.group(0)
        data = base64.b64encode(image.read_bytes()).decode()
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    body = _safe_html(re.sub(r"!\[([^\]]*)\]\(([^)]+\.png)\)", inline, text))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;"
             "padding:4px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}")
    out = run / files.REPORT_HTML
    atomic_write_text(out, f"<!doctype html><html><head><meta charset='utf-8'><title>sftjudge {run.run_id}</title>"
                           f"<style>{style}</style></head><body>{body}</body></html>\n")
    return out
