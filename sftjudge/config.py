"""Run configuration: one pydantic model per stage, composed into `RunConfig`.

`RunConfig` is the flow's parameter type, so every field carries a description and a default: the Prefect UI
renders it as a form, and `sftjudge run CONFIG key.sub=value ...` applies dotted overrides on top of the YAML.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sftjudge.config_base import _Strict, refuse_password, refuse_system_dir
# The judge's sections live in config_judge.py; they are imported from here like every other section.
from sftjudge.config_judge import (  # noqa: F401
    AUTO_TEMPLATE_TOKENS,
    AUTO_TOKEN_RATIO,
    JUDGE_REPLY_TOKENS,
    JudgeConfig,
    JudgeHealthConfig,
    ServedJudgeConfig,
)


class NearDedupConfig(_Strict):
    """MinHash + LSH near-duplicate removal (datasketch)."""

    enabled: bool = Field(True, description="Drop near-duplicates, keeping the first row of each cluster.")
    threshold: float = Field(0.8, gt=0, le=1, description="Estimated Jaccard similarity at which rows cluster.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations (more: slower, more exact).")
    shingle_size: int = Field(3, ge=1, le=20, description="Words per shingle.")


class LengthConfig(_Strict):
    """Token-length bounds, counted with the student's tokenizer after its chat template is applied."""

    min_prompt_tokens: int = Field(1, ge=0, description="Rows whose rendered prompt is shorter are dropped.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Rows whose prompt is longer are dropped.")
    min_completion_tokens: int = Field(1, ge=0, description="Rows whose answer is shorter are dropped.")
    max_completion_tokens: int | None = Field(None, ge=1, description="Rows whose answer is longer are dropped.")
    drop_over_max_seq_len: bool = Field(
        True, description="Drop rows longer than sft.max_seq_len instead of training on a truncated copy."
    )


class PIIConfig(_Strict):
    """Scrubbing of emails, phone numbers, credit cards (Luhn-checked), SSNs and IP addresses."""

    action: Literal["mask", "drop", "off"] = Field(
        "mask", description="'mask' replaces PII with typed placeholders, 'drop' removes the row, 'off' skips."
    )


class QualityConfig(_Strict):
    """Optional quality scoring of rows with the judge model (slow: one judge pass per row)."""

    enabled: bool = Field(False, description="Score every row with the judge and drop low-quality ones.")
    judge: str = Field("quality", description="Judge definition used for scoring rows (under judge.judges_dir).")
    threshold: float = Field(5.0, ge=1, le=10, description="Rows scoring below this (1-10) are dropped.")


class ContaminationConfig(_Strict):
    """N-gram overlap of val/test rows with the training split and the regression suite."""

    n: int = Field(13, ge=3, le=50, description="Words per n-gram (13 follows the GPT-3 contamination study).")
    threshold: float = Field(0.5, gt=0, le=1, description="Share of a row's n-grams found elsewhere to flag it.")
    action: Literal["report", "drop", "fail"] = Field(
        "drop", description="What to do with flagged val/test rows: list them, drop them, or fail the run."
    )
    regression_suite: str | None = Field(
        None, description="Optional JSONL of prompts that val/test rows must not overlap either (like the "
                          "training split); e.g. a benchmark you report separately."
    )


class DataConfig(_Strict):
    """Where the instruction data comes from, how it is cleaned, and how it is split."""

    path: str = Field(
        "data/sample/support_tickets.jsonl",
        description="JSONL, JSON, CSV/TSV or Parquet file, a dataset saved with datasets' save_to_disk, or a hub "
                    "dataset id. Relative paths are resolved from the working directory.",
    )
    split: str = Field("train", description="Which split to read from a Hugging Face dataset.")
    format: Literal["auto", "prompt_completion", "alpaca", "messages"] = Field(
        "auto", description="Row format; 'auto' detects it per row from the keys present."
    )
    fields: dict[str, str] = Field(
        default_factory=dict,
        description="Rename your columns to ours, e.g. {prompt: question, completion: answer}.",
    )
    strict: bool = Field(False, description="Fail the run on the first invalid row instead of quarantining it.")
    special_tokens: Literal["strip_trailing", "drop", "keep"] = Field(
        "strip_trailing", description="Rows holding one of the student's special tokens (which the chat template "
                                      "would turn into control tokens): strip_trailing takes an end marker off the "
                                      "end of an answer (`...<|endoftext|>`, as many exports end) and quarantines rows "
                                      "with one anywhere else; drop quarantines them all; keep trains on them as is.")
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig, description="Near-duplicate removal.")
    length: LengthConfig = Field(default_factory=LengthConfig, description="Token-length filter.")
    pii: PIIConfig = Field(default_factory=PIIConfig, description="PII scrubbing.")
    quality: QualityConfig = Field(default_factory=QualityConfig, description="Optional judge quality filter.")
    contamination: ContaminationConfig = Field(
        default_factory=ContaminationConfig, description="Val/test overlap with train."
    )
    train_ratio: float = Field(0.8, gt=0, lt=1, description="Share of rows used for training.")
    val_ratio: float = Field(0.1, gt=0, lt=1, description="Share of rows used for validation loss.")
    test_ratio: float = Field(0.1, gt=0, lt=1, description="Share of rows held out for generation and judging.")
    stratify_by: str | None = Field(
        None, description="Keep this row field's value proportions equal across splits (a top-level field).")
    seed: int = Field(13, description="Seed of the split; same data + same seed gives the same split.")
    cache: bool = Field(True, description="Reuse curation results for the same input content and data config.")

    @model_validator(mode="after")
    def _ratios_sum_to_one(self) -> "DataConfig":
        total = self.train_ratio + self.val_ratio + self.test_ratio
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"train_ratio + val_ratio + test_ratio must be 1.0, got {total:.4f} "
                f"({self.train_ratio} + {self.val_ratio} + {self.test_ratio})"
            )
        return self


class SFTConfig(_Strict):
    """Supervised fine-tuning of the student model."""

    base_model: str = Field(
        "smollm2-135m-instruct",
        description="Student: an embedded model name (see `sftjudge models list`), a local directory, or a hub id.",
    )
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapters (peft) or full fine-tuning.")
    epochs: int = Field(2, ge=1, le=100, description="Passes over the training split.")
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate (linear warm-up, then linear decay).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of optimizer steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(
        8, ge=1, description="Rows per optimizer step (before gradient accumulation); with num_processes > 1 the "
                             "global batch, each process taking batch_size / num_processes of it.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step.")
    num_processes: int = Field(
        1, ge=1, description="Data-parallel training processes (one per GPU); above 1 the sft stage runs "
                             "`accelerate launch --multi_gpu --num_processes N -m sftjudge.cli train RUN_DIR`.")
    max_seq_len: int = Field(256, ge=16, description="Rows longer than this many tokens are truncated.")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA path during training.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that receive LoRA adapters.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 where the device is fast at it, else fp32. With LoRA the frozen base "
                            "weights are held in this precision (bf16/fp16); fp16 (CUDA cards without bf16) trains "
                            "with loss scaling.")
    quantization: Literal["4bit", "8bit"] | None = Field(
        None, description="QLoRA: load the frozen base weights quantised by bitsandbytes (4bit NF4 or 8bit); CUDA "
                          "only, method lora only.")
    packing: bool = Field(
        False, description="Pack several rows into each max_seq_len sequence (TRL's best-fit packing, no padding); "
                           "attention stays within each row; batch_size then counts packed sequences. Train and "
                           "val loss are still measured row by row.")
    fsdp: bool = Field(
        False, description="Shard a full fine-tune's weights, gradients and optimizer state over the num_processes "
                           "processes (FSDP through accelerate) when one card cannot hold them.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when val loss has not improved for this many epochs (None: never stop early)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory for long rows, ~30% slower."
    )
    keep_checkpoints: Literal["all", "best_and_last"] = Field(
        "best_and_last", description="Epoch checkpoints to keep; the best epoch by val loss is never deleted."
    )
    seed: int = Field(0, description="Seed for weight init of adapters, shuffling and dropout.")
    trust_remote_code: bool = Field(False, description="Allow model repos to run their own Python code.")

    @model_validator(mode="after")
    def _engine_settings_fit_together(self) -> "SFTConfig":
        if self.quantization and self.method != "lora":
            raise ValueError(f"sft.quantization: {self.quantization} trains LoRA adapters on quantised base weights "
                             f"(QLoRA); set sft.method: lora, or drop sft.quantization for a full fine-tune")
        if self.fsdp and self.method != "full":
            raise ValueError("sft.fsdp shards a full fine-tune; LoRA's frozen base weights fit where a full "
                             "fine-tune does not - set sft.method: full, or drop sft.fsdp")
        return self


class GenerateConfig(_Strict):
    """Answer generation on the test split."""

    backend: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers (CPU or GPU) or vLLM (GPU worker: a served engine, see vllm)."
    )
    max_new_tokens: int = Field(96, ge=1, description="Upper bound on generated tokens per answer.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together (transformers backend).")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding.")
    seed: int = Field(0, description="Sampling seed when temperature > 0.")
    stop: list[str] = Field(default_factory=list, description="An answer ends before the first of these strings.")
    tensor_parallel_size: int = Field(
        1, ge=1, description="vLLM: GPUs per model (also for a text-mode judge with judge.backend=vllm).")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM: share of GPU memory an engine may take (generation, and a text-mode "
                                      "judge with judge.backend=vllm).")
    baseline: bool = Field(
        False, description="Also answer the test split with the base model (no fine-tune), once per split and "
                           "params, shared across runs; judged as the baseline row of every comparison.")


class VLLMConfig(_Strict):
    """How vLLM runs for generate.backend=vllm and judge.backend=vllm."""

    engine: Literal["server", "in_process"] = Field(
        "server", description="server: answer through an OpenAI-compatible `vllm serve` in vLLM's own environment "
                              "(started from vllm.python for the stage and stopped after it, or the long-lived one "
                              "at vllm.base_url), so vLLM's pins never meet the trainer's; in_process: vllm.LLM in "
                              "the stage's own process (only where vllm is installed beside sftjudge).")
    python: str | None = Field(
        None, description="The Python of the vLLM environment that runs `vllm serve`; default $SFTJUDGE_VLLM_PYTHON "
                          "(the GPU image sets it), else the Python next to a `vllm` command on PATH.")
    base_url: str | None = Field(
        None, description="A running vLLM server (sidecar, URL ending in /v1) that answers for the student instead "
                          "of one started per stage: it must serve sft.base_model, see the runs directory at the "
                          "same path and allow runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).")
    @field_validator("base_url")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        return refuse_password(url, "reach the sidecar on the worker's own network, where it needs none")

    startup_s: float = Field(900, gt=0, description="Seconds a started server may take to answer (it loads and "
                                                     "compiles the model).")
    concurrency: int = Field(64, ge=1, description="Requests in flight to a vLLM server (it batches them).")
    enforce_eager: bool = Field(
        False, description="Start servers without CUDA graphs and torch.compile: a faster start, slower decoding "
                           "(worth it for a few hundred answers, as in bench/gpu_smoke.sh).")


class ReviewConfig(_Strict):
    """Human review of a run's answers (`sftjudge review`), judge-human agreement and release."""

    sample_size: int = Field(20, ge=1, le=1000, description="Test items in the review sample (frozen per run).")
    pass_score: float = Field(
        7.0, ge=1, le=10, description="Judge score (1-10) at or above which the judge counts an answer as a pass "
                                      "when its verdicts are compared with the reviewer's pass/fail.")
    min_agreement: float = Field(
        0.8, gt=0, le=1, description="Pass/fail agreement with the reviewer at which the judge counts as calibrated "
                                     "on this test split.")
    min_items: int = Field(20, ge=1, description="Labelled items that agreement (and a release) needs at least.")
    release_pass_rate: float = Field(
        0.9, gt=0, le=1, description="Share of the acceptance set the reviewer must pass for `sftjudge release`.")


class DecideConfig(_Strict):
    """Rules for promoting the new checkpoint or keeping the champion, fixed before the run starts."""

    min_improvement: float = Field(
        0.25, ge=0, description="Mean judge score (1-10) the challenger must gain over the champion to be promoted."
    )
    max_val_train_ratio: float = Field(
        2.0, gt=1, description="Val/train loss ratio at the chosen epoch above which the run counts as overfitting."
    )
    min_overfit_gap: float = Field(
        0.01, ge=0, description="Loss difference (nats) below which the overfitting rules do not fire: near zero "
                                "loss, val 0.0006 vs train 0.0002 (ratio 3) is noise, not memorisation.")
    min_val_rise: float = Field(
        0.1, ge=0, description="Val loss counts as rising when its last epoch is this much (relative) above its "
                               "best epoch, and by at least min_overfit_gap.")
    block_val_rise: bool = Field(
        True, description="A run whose val loss rose while its train loss fell is not promoted, even though its "
                          "best-val epoch was judged: rerun with fewer epochs or a lower learning rate. False: only "
                          "name it in the reasons.")
    min_judge_score: float = Field(1.0, ge=1, le=10, description="A run scoring below this is never promoted.")
    max_contaminated: int = Field(
        0, ge=0, description="Contaminated val/test rows tolerated (only non-zero when contamination.action=report)."
    )
    min_noise_floor: float = Field(
        0.0, ge=0, description="Lower bound on the noise floor (score points) whatever the measurement says."
    )
    ci_level: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of every bootstrap interval.")
    min_paired_items: int = Field(
        20, ge=1, description="Fewest test items scored in both runs (for a first run: scored test items) that can "
                              "carry an automatic promotion or rollback; with fewer the run is held, saying how many "
                              "are needed.")
    require_approval: bool = Field(
        False, description="A promotion waits for a person: the flow pauses for an approve/reject answer in the Prefect "
                           "UI (with a link to the report); reject or no answer within approval_timeout_s holds.")
    approval_timeout_s: int = Field(3600, ge=10, le=30 * 86400,
                                    description="Seconds a promotion waits for its approval (at most 30 days: the "
                                                "flow run waits paused that long).")
    max_alignment_tax: float | None = Field(
        2.0, ge=0, description="Largest drop (score points, 1-10) from the base model on any regression-suite "
                               "category; a run whose loss exceeds it over the whole interval is never promoted "
                               "(above it in the mean only: a warning). None: report only.")
    min_regression_score: float | None = Field(
        None, ge=1, le=10, description="Floor on the mean regression-suite score, over its whole interval "
                                       "(None: no floor).")


class RegressionConfig(_Strict):
    """The frozen regression suite: general prompts with criteria, answered and judged in every run, so the cost
    of fine-tuning on narrow data (the alignment tax) is measured per category against the base model."""

    enabled: bool = Field(True, description="Answer and judge the suite in every run.")
    suite: str = Field(
        "general", description="'general' (shipped with sftjudge: arithmetic, knowledge, instructions, reasoning, "
                               "writing, safety) or a JSONL path with instruction, output, category and criteria.")
    judge: str = Field("criteria", description="Judge definition in judge.judges_dir used for the suite.")
    max_new_tokens: int = Field(96, ge=1, description="Upper bound on generated tokens per suite answer.")


class TrackingConfig(_Strict):
    """MLflow: each cycle one MLflow run; the champion a registered model version with the `champion` alias."""

    enabled: bool = Field(True, description="Log every cycle to MLflow after its decision.")
    uri: str | None = Field(
        None, description="MLflow tracking URI (a server such as http://127.0.0.1:5000, or sqlite:///path); "
                          "default: sqlite:///<runs_dir>/mlflow.db, which `mlflow ui` shows with no server.")
    experiment: str = Field("sftjudge", description="MLflow experiment the runs are logged to.")
    registered_model: str | None = Field(
        None, description="Registered model name for champions; default sftjudge-<name>.")
    retries: int = Field(2, ge=0, le=10, description="Retries of a failed logging attempt; the decision stands "
                                                     "either way and a final failure is recorded in the manifest.")
    retry_delay_s: float = Field(10.0, ge=0, description="Seconds between logging attempts.")
    timeout_s: int = Field(30, ge=1, le=3600, description="Seconds one request to an MLflow server may take; each "
                                                          "logging attempt tries a request once (MLflow's own "
                                                          "retries are off unless MLFLOW_HTTP_REQUEST_MAX_RETRIES "
                                                          "is set), `retries` tries again.")

    @field_validator("uri")
    @classmethod
    def _no_password(cls, uri: str | None) -> str | None:
        return refuse_password(uri, "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                                    "MLFLOW_TRACKING_TOKEN) in the environment, where MLflow reads them")


class OrchestrationConfig(_Strict):
    """Where the GPU stages run. Empty means everything in this process (the CPU default, no server needed)."""

    gpu_deployment: str | None = Field(
        None, description="Deployment ('flow-name/deployment-name') of the gpu-stages flow on a GPU work pool; "
                          "sft, generate and judge then run there via run_deployment. The run directory must be "
                          "on storage both workers see.")
    gpu_concurrency_limit: str | None = Field(
        None, description="Global concurrency limit name held while the GPU stages run, so two runs do not "
                          "fight over one card (create it with deployments/setup.py).")


class RunConfig(_Strict):
    """One fine-tune → generate → judge → decide cycle."""

    name: str = Field("demo", pattern=r"^[^/\\]+$",
                      description="Short label stored with the run (not required to be unique); no '/' or '\\' "
                                  "(it names MLflow runs and registered models).")
    runs_dir: str = Field("runs", description="Where run directories and the run registry live.")
    home: str | None = Field(
        None, description="Model cache directory; default $SFTJUDGE_HOME or ~/.cache/sftjudge."
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch; default: the worker's budget, usable cores divided by "
                                "SFTJUDGE_RUNS_PER_WORKER (flow runs a worker executes at once; 1 when unset).")
    memory_check: bool = Field(
        True, description="Before the sft, generate and judge stages load a model, refuse one whose estimated peak "
                          "memory (`sftjudge plan`) exceeds what the device has free, naming settings that would "
                          "fit; false: skip the check.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data loading and splitting.")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Fine-tuning.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="Generation on the test split.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Judging.")
    decide: DecideConfig = Field(default_factory=DecideConfig, description="Promotion rules.")
    review: ReviewConfig = Field(default_factory=ReviewConfig, description="Human review, agreement, release.")
    regression: RegressionConfig = Field(
        default_factory=RegressionConfig, description="General-ability regression suite (alignment tax).")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow tracking and registry.")
    orchestration: OrchestrationConfig = Field(
        default_factory=OrchestrationConfig, description="GPU routing (Prefect work pools).")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig, description="vLLM as a served engine (GPU workers).")

    @field_validator("runs_dir")
    @classmethod
    def _own_folder(cls, runs_dir: str) -> str:
        return refuse_system_dir(runs_dir, "runs_dir")

    @property
    def student_context_tokens(self) -> int:
        """Tokens one student sequence can take in the generate stage: a prompt (curation keeps rows within
        sft.max_seq_len) plus the longest answer asked for (the test split's or the regression suite's); a vLLM
        engine is sized for this, not for the model's own context (128k for many, which a 24-48 GB card cannot hold).

        >>> RunConfig().student_context_tokens
        352
        """
        return self.sft.max_seq_len + self.longest_answer

    @property
    def longest_answer(self) -> int:
        """The most tokens a generated answer can have: the test split's or the regression suite's."""
        return max(self.generate.max_new_tokens, self.regression.max_new_tokens if self.regression.enabled else 0)

    def judge_prompt_tokens(self, template_tokens: int = AUTO_TEMPLATE_TOKENS, answers: int = 2) -> int:
        """Tokens a judge prompt may take: judge.max_prompt_tokens, or for 'auto' a judge definition's own text
        (`template_tokens`) plus a question and reference (curation keeps rows within sft.max_seq_len) and
        `answers` answers of the longest length asked for - or of a reference's, which the anchors judge as an
        answer - at AUTO_TOKEN_RATIO judge tokens per student token. The default sizes any definition of up to
        AUTO_TEMPLATE_TOKENS with two answers (pairwise).

        >>> RunConfig().judge_prompt_tokens(), RunConfig().judge_prompt_tokens(150, 1)
        (1664, 918)
        >>> RunConfig(judge={"max_prompt_tokens": 1024}).judge_prompt_tokens(150, 1)
        1024
        """
        if self.judge.max_prompt_tokens != "auto":
            return self.judge.max_prompt_tokens
        answer = max(self.longest_answer, self.sft.max_seq_len)
        return template_tokens + math.ceil(AUTO_TOKEN_RATIO * (self.sft.max_seq_len + answers * answer))

    @property
    def judge_context_tokens(self) -> int:
        """Tokens one judge sequence can take: the longest prompt and a text judge's reply (logprob judges read one
        or two tokens). A vLLM judge engine is sized for this, not for the model's own context."""
        return self.judge_prompt_tokens() + JUDGE_REPLY_TOKENS


