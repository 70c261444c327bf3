"""Peak memory of each model stage, estimated from the model's shape and the run's settings before loading.

What each stage holds at its peak, as the code in this repository runs it (bench/plan.py compares these with
measured peaks):

- sft: the student's weights as loaded (a full fine-tune's in float32; LoRA's frozen base in the training
  precision, or quantised: bitsandbytes leaves the embeddings and the output layer in bf16), the trainable
  parameters' gradients and AdamW's two moments (float32), and then the larger of two moments: the backward pass
  (the activations kept for one micro-batch - batch x max_seq_len tokens through every layer; with gradient
  checkpointing only each layer's input plus one layer's working set -, the output layer's logits at the labelled
  positions, and under bf16 autocast the bf16 copies of trained float32 weights that autocast makes and the graph
  keeps) or the optimizer step (AdamW's multi-tensor step computes a float32 temporary per trained parameter).
- generate: on a card, the student in its precision and the key/value cache of a batch of prompts plus
  max_new_tokens; the float32 load before the cast happens in host RAM (`host_estimate`). On the CPU both are
  one memory: the larger counts. vLLM instead reserves gpu_memory_utilization of the card.
- judge: the judge's weights in its precision, the key/value cache of one batch of max_prompt_tokens prompts (the
  rubric repeats it per criterion), one forward pass's working set, and the shared-prefix store's budget.

Every estimate adds the runtime's own footprint (interpreter and libraries on the CPU, the CUDA context on a card).
Numbers are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sftjudge.plan.shape import ModelShape

GIB = 2**30
CPU_RUNTIME = int(0.5 * GIB)  # python with torch, transformers, peft: 0.39 GiB RSS here; with prefect, mlflow 0.54
CUDA_CONTEXT = int(0.6 * GIB)  # CUDA context and cuBLAS workspaces per process


@dataclass(frozen=True, kw_only=True)
class Estimate:
    stage: str
    parts: dict[str, int] = field(default_factory=dict)  # what the peak is made of, bytes

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """'~3.1 GiB (weights 2.0, optimizer 0.3, ...)'"""
        inner = ", ".join(f"{name} {gib(size)}" for name, size in self.parts.items() if size >= 0.05 * GIB)
        return f"~{gib(self.total)} GiB ({inner})"


def gib(size: int) -> str:
    return f"{size / GIB:.1f}"


def _runtime(cuda: bool) -> int:
    return CUDA_CONTEXT if cuda else CPU_RUNTIME


def layer_activations(shape: ModelShape, tokens: int, seq_len: int, *, act_bytes: int, lora_inputs: int,
                      scores: bool) -> int:
    """Bytes one decoder layer keeps for its backward pass over `tokens` tokens (batch x seq_len).

    Residual stream in float32 (two per layer), the two norm outputs, q/k/v and the attention output, four MLP
    intermediates (gate, up, activation, product), LoRA dropout copies of each targeted module's input, and the
    attention probabilities when the attention kernel materialises them (the CPU's masked SDPA does).
    """
    h, i = shape.hidden, shape.intermediate
    per_token = (2 * h * 4 + 2 * h * act_bytes + (2 * h + 2 * shape.kv_heads * shape.head_dim) * act_bytes
                 + 4 * i * act_bytes + lora_inputs * act_bytes)
    total = tokens * per_token
    if scores:
        total += tokens * shape.heads * seq_len * act_bytes
    return total


@dataclass(frozen=True, kw_only=True)
class Training:
    """What sizes one training process besides the model."""

    method: str  # "lora" or "full"
    batch_size: int
    max_seq_len: int
    bf16: bool
    gradient_checkpointing: bool = False
    label_share: float = 1.0  # share of positions with a label (1.0: all, an upper bound)
    weight_bytes: float = 4  # per frozen base weight: 4 in float32, 2 in bf16 (LoRA's default), ~0.55 in 4 bit
    quantized: bool = False  # bitsandbytes: embeddings and output layer stay bf16


@dataclass(frozen=True, kw_only=True)
class Judging:
    """What sizes the judge stage besides the model."""

    batch_size: int
    max_prompt_tokens: int
    bf16: bool
    rubric_criteria: int  # 0 without a rubric
    prefix_cache_mb: int
    encoder_params: int  # the similarity encoder's parameters (0 without one)


def sft_estimate(shape: ModelShape, settings: Training, *, cuda: bool) -> Estimate:
    """Peak of one training process."""
    method, batch_size, max_seq_len, bf16 = settings.method, settings.batch_size, settings.max_seq_len, settings.bf16
    gradient_checkpointing, label_share, weight_bytes = (settings.gradient_checkpointing, settings.label_share,
                                                         settings.weight_bytes)
    tokens = batch_size * max_seq_len
    act = 2 if bf16 else 4
    trainable = shape.params if method == "full" else shape.lora_params
    if settings.quantized:
        base = (shape.params - shape.embedding_params) * weight_bytes + shape.embedding_params * 2
    else:
        base = shape.params * (4 if method == "full" else weight_bytes)
    weights = int(base) + (shape.lora_params * 4 if method == "lora" else 0)
    optimizer = trainable * (4 + 8)  # gradients + AdamW's two moments, float32
    lora_in = shape.lora_inputs if method == "lora" else 0
    one_layer = layer_activations(shape, tokens, max_seq_len, act_bytes=act, lora_inputs=lora_in, scores=not cuda)
    if gradient_checkpointing:
        activations = shape.layers * tokens * shape.hidden * 4 + one_layer
    else:
        activations = shape.layers * one_layer
    labelled = int(tokens * label_share)
    logits = labelled * shape.vocab * 4 * 2  # float32 logits and their gradient
    backward = {"activations": activations, "logits": logits}
    if bf16 and method == "full":
        backward["autocast copies"] = shape.params * 2
    step = {"optimizer step": trainable * 4}
    transient = backward if sum(backward.values()) >= sum(step.values()) else step
    return Estimate(stage="sft", parts={"weights": weights, "optimizer": optimizer, **transient,
                                        "runtime": _runtime(cuda)})


def generate_estimate(shape: ModelShape, *, batch_size: int, prompt_tokens: int, max_new_tokens: int, bf16: bool,
                      cuda: bool) -> Estimate:
    """Peak of the transformers generate stage on its device: generating; on the CPU, where the float32 load happens
    in the same memory, loading if that is larger (on a card the load is `host_estimate`'s). `bf16`: any 16-bit
    precision."""
    dtype = 2 if bf16 else 4
    kv = batch_size * (prompt_tokens + max_new_tokens) * shape.kv_bytes_per_token(dtype)
    working = batch_size * prompt_tokens * (shape.hidden + shape.intermediate) * dtype * 2 \
        + batch_size * shape.vocab * 4 * 2
    running = {"weights": shape.params * dtype, "kv cache": kv, "working": working}
    loading = {"weights (float32 while loading)": shape.params * 4}
    peak = loading if not cuda and sum(loading.values()) > sum(running.values()) else running
    return Estimate(stage="generate", parts=peak | {"runtime": _runtime(cuda)})


def host_estimate(shape: ModelShape) -> Estimate:
    """Host RAM of a transformers stage that loads a model in float32 before casting it onto a card."""
    return Estimate(stage="generate", parts={"weights (float32 while loading)": shape.params * 4,
                                             "runtime": CPU_RUNTIME})


def vllm_estimate(shape: ModelShape, *, device_total: int, utilization: float, bf16: bool,
                  max_model_len: int, stage: str = "generate") -> tuple[Estimate, int]:
    """vLLM takes `utilization` of the card up front; it must hold the weights and at least one full sequence's
    key/value cache. Returns (what vLLM takes, the least it needs inside that) for `stage` (generate or judge)."""
    dtype = 2 if bf16 else 4
    needs = int(shape.params * dtype * 1.05) + max_model_len * shape.kv_bytes_per_token(dtype)
    return Estimate(stage=stage, parts={"vllm reservation": int(device_total * utilization),
                                             "runtime": CUDA_CONTEXT}), needs


def judge_estimate(shape: ModelShape, settings: Judging, *, cuda: bool) -> Estimate:
    """Peak of the judge stage: weights in the judge's precision, a batch's cache (times the rubric's criteria,
    which repeat it), one forward pass's working set and attention scores, the prefix store's budget."""
    batch_size, max_prompt_tokens, rubric_criteria = (settings.batch_size, settings.max_prompt_tokens,
                                                      settings.rubric_criteria)
    prefix_cache_mb, encoder_params = settings.prefix_cache_mb, settings.encoder_params
    dtype = 2 if settings.bf16 else 4
    rows = batch_size * max(1, rubric_criteria)
    kv = rows * max_prompt_tokens * shape.kv_bytes_per_token(dtype)
    tokens = batch_size * max_prompt_tokens
    working = tokens * (2 * shape.hidden + 2 * shape.intermediate) * dtype \
        + batch_size * shape.heads * max_prompt_tokens ** 2 * (dtype if not cuda else 0)
    return Estimate(stage="judge", parts={"weights": shape.params * dtype, "kv cache": kv, "working": working,
                                          "prefix store": prefix_cache_mb * 2**20,
                                          "encoder": encoder_params * 4, "runtime": _runtime(cuda)})
