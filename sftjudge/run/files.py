"""The run directory's layout: every file a stage reads or writes, named once.

`runs/<run_id>/` holds the resolved config, the manifest, and what each stage wrote. Code and tests refer to
these names, never to string literals, so a renamed file cannot leave a reader behind.
"""

from __future__ import annotations

CONFIG = "config.yaml"  # the resolved RunConfig the run was started with
MANIFEST = "manifest.json"  # stages, status, timings, outputs, counts

# curate
DATA = "data"
TRAIN, VAL, TEST = "data/train.jsonl", "data/val.jsonl", "data/test.jsonl"
QUARANTINE = "data/quarantine.jsonl"  # every dropped row with its reason
DATA_REPORT = "data/report.json"  # the curation books

# sft
CHECKPOINTS = "checkpoints"  # checkpoints/epoch-N/
EPOCH_METRICS = "metrics.jsonl"  # one line per epoch: train and val loss, perplexity, steps
SFT_SUMMARY = "sft.json"  # best epoch, why, trainable params, test perplexity
LOSS_CURVE = "loss_curve.png"
SFT_LAUNCH_LOG = "sft_launch.log"  # output of `accelerate launch` when sft.num_processes > 1

# generate
GENERATIONS = "generations.jsonl"
BASELINE_GENERATIONS = "baseline_generations.jsonl"  # the base model's answers (generate.baseline)
REGRESSION_GENERATIONS = "regression_generations.jsonl"
REGRESSION_BASELINE = "regression_baseline.jsonl"
VLLM_GENERATE_LOG = "vllm_generate.log"  # output of the generate stage's vLLM server (generate.backend: vllm)

# judge
JUDGMENTS = "judgments.jsonl"
JUDGMENT_CACHE = "judgments.cache.jsonl"  # crash-tolerant, keyed: a retried judge stage judges only what is missing
PAIRWISE = "pairwise.jsonl"
BASELINE_JUDGMENTS = "baseline_judgments.jsonl"  # the base model's answers judged, per item (generate.baseline)
ANCHORS = "anchors.jsonl"  # per test item: the judge's score of the reference itself and of an empty answer
REGRESSION_JUDGMENTS = "regression_judgments.jsonl"
VLLM_JUDGE_LOG = "vllm_judge.log"  # output of the judge stage's vLLM server (judge.backend: vllm)
METRICS = "metrics.json"  # judge score, cheap metrics, pairwise, health, noise, regression suite

# decide
DECISION = "decision.json"
REPORT = "report.md"
REPORT_HTML = "report.html"
SCORE_HIST = "score_hist.png"

# human review (sftjudge review): written by a person's grading, never by a stage
REVIEW_SAMPLE = "review/sample.jsonl"  # the frozen items shown, each with its content hash
REVIEW_LABELS = "review/labels.jsonl"  # one line per labelled item, rewritten atomically on every label
REVIEW_AGREEMENT = "review/agreement.json"  # judge-human agreement with bootstrap intervals
REVIEW_RELEASE = "review/release.json"  # the registry's release record, kept with the run

SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}

# What each stage may write: a stage reset to "never ran" loses exactly these.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "curate": (DATA,),
    "sft": (CHECKPOINTS, EPOCH_METRICS, SFT_SUMMARY, LOSS_CURVE, SFT_LAUNCH_LOG),
    "generate": (GENERATIONS, BASELINE_GENERATIONS, REGRESSION_GENERATIONS, REGRESSION_BASELINE),
    "judge": (JUDGMENTS, JUDGMENT_CACHE, PAIRWISE, BASELINE_JUDGMENTS, ANCHORS, REGRESSION_JUDGMENTS, METRICS),
    "decide": (DECISION, REPORT, REPORT_HTML, SCORE_HIST),
}
