"""Will the configured stages fit the device? `sftjudge plan CONFIG` prints it; the sft, generate and judge stages
check it before loading anything and refuse, naming settings that would fit, instead of failing minutes in with an
out-of-memory error."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftjudge.config import RunConfig
from sftjudge.config_yaml import apply_overrides
from sftjudge.errors import UserError
from sftjudge.plan.estimate import (
    Estimate,
    Judging,
    Training,
    generate_estimate,
    gib,
    host_estimate,
    judge_estimate,
    sft_estimate,
    vllm_estimate,
)
from sftjudge.plan.shape import ModelShape, model_shape

ENCODER_PARAMS = 22_700_000  # all-MiniLM-L6-v2
STAGES = ("sft", "generate", "judge")


class MemoryPlanError(UserError, RuntimeError):
    """The configuration will not fit the device's memory (see `sftjudge plan`)."""


@dataclass(frozen=True, kw_only=True)
class Target:
    """The device planned for: CUDA or not, and the bytes free (and in all) on it."""

    cuda: bool
    free: int
    total: int
    name: str
    host_free: int | None = None  # RAM free beside a card (a transformers stage loads there first); None: unchecked

    @staticmethod
    def here(gib_free: float | None = None, cuda: bool | None = None) -> "Target":
        """This machine's first GPU when it has one (else its RAM); `gib_free` plans for another device's size."""
        import torch

        on_gpu = torch.cuda.is_available() if cuda is None else cuda
        if gib_free is not None:
            size = int(gib_free * 2**30)
            return Target(cuda=on_gpu, free=size, total=size, name=f"a {'GPU' if on_gpu else 'machine'} with "
                                                                  f"{gib_free:g} GiB free")
        import psutil

        if on_gpu and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            return Target(cuda=True, free=free, total=total, name=f"this GPU ({torch.cuda.get_device_name()})",
                          host_free=psutil.virtual_memory().available)
        memory = psutil.virtual_memory()
        return Target(cuda=False, free=memory.available, total=memory.total, name="this machine's RAM")


@dataclass(kw_only=True)
class StagePlan:
    stage: str
    estimate: Estimate
    fits: bool
    limit: int  # bytes the stage may use
    suggestions: list[tuple[dict[str, Any], Estimate]] = field(default_factory=list)
    note: str = ""

    def message(self, target: Target) -> str:
        head = (f"{self.stage} needs {self.estimate.describe()}; {target.name} has {gib(self.limit)} GiB"
                + (f" ({self.note})" if self.note else ""))
        if self.fits:
            return head + ": fits"
        if not self.suggestions:
            return head + ": does not fit, and no setting tried here makes it fit: use a smaller model or a " \
                          "larger device (or memory_check=false if this estimate is wrong for your model)"
        ways = "; ".join(" ".join(f"{k}={_value(v)}" for k, v in change.items()) + f" (~{gib(e.total)} GiB)"
                         for change, e in self.suggestions)
        return head + f": does not fit. Settings that would: {ways}"


def _value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _bf16(precision: str, target: Target) -> bool:
    from sftjudge.runtime.device import bf16_supported

    return precision == "bf16" or (precision == "auto" and (target.cuda or bf16_supported()))


def _half(precision: str, target: Target) -> bool:
    """Whether a model answers in 2-byte weights: bf16 as above, or fp16 (runtime/device.compute_dtype)."""
    return precision == "fp16" or _bf16(precision, target)


def _weight_bytes(sft, bf16: bool) -> float:
    """Bytes per frozen base weight as the sft stage loads it (sftjudge/train/precision.py): LoRA's in the training
    precision or quantised (NF4 with its scales ~0.55, int8 ~1.05); a full fine-tune's are the trained ones.

    >>> from sftjudge.config import SFTConfig
    >>> _weight_bytes(SFTConfig(quantization="4bit"), True), _weight_bytes(SFTConfig(precision="fp32"), False)
    (0.55, 4)
    """
    from sftjudge.train.precision import student_dtype

    if sft.quantization:
        return 0.55 if sft.quantization == "4bit" else 1.05
    return {"float32": 4, "bfloat16": 2, "float16": 2}[student_dtype(sft, bf16)]


class Planner:
    """Estimates for one config on one target; shapes read once (config.json only, nothing loaded)."""

    def __init__(self, config: RunConfig, home: Path, target: Target, *, prepare: bool = True):
        self.config, self.home, self.target, self.prepare = config, home, target, prepare
        self._shapes: dict[tuple, ModelShape | None] = {}

    def shape(self, ref: str, lora: bool = False) -> ModelShape | None:
        """None only when `prepare` is off and `ref` is an embedded model not prepared yet."""
        sft = self.config.sft
        key = (ref, lora)
        if key not in self._shapes:
            self._shapes[key] = model_shape(ref, self.home, trust_remote_code=sft.trust_remote_code,
                                            lora_r=sft.lora_r if lora else 0,
                                            lora_targets=tuple(sft.target_modules) if lora else (),
                                            prepare=self.prepare)
        return self._shapes[key]

    def estimate(self, stage: str, config: RunConfig | None = None) -> Estimate | None:
        """The stage's peak for `config` (default the planner's), or None when it loads no model here."""
        c = config or self.config
        cuda = self.target.cuda
        if stage == "sft":
            sft = c.sft
            shape = self.shape(sft.base_model, lora=sft.method == "lora")
            if shape is None:
                return None
            bf16 = _bf16(sft.precision, self.target)
            one = sft_estimate(shape, Training(method=sft.method, batch_size=-(-sft.batch_size // sft.num_processes),
                                               max_seq_len=sft.max_seq_len, bf16=bf16,
                                               gradient_checkpointing=sft.gradient_checkpointing,
                                               weight_bytes=_weight_bytes(sft, bf16),
                                               quantized=bool(sft.quantization)), cuda=cuda)
            if sft.fsdp and sft.num_processes > 1:  # weights, gradients and optimizer state sharded over processes
                one = Estimate(stage="sft", parts={k: v // sft.num_processes if k in ("weights", "optimizer") else v
                                                   for k, v in one.parts.items()})
            if sft.num_processes > 1 and not cuda:  # every process holds its own copy in the same RAM
                return Estimate(stage="sft", parts={k: v * sft.num_processes for k, v in one.parts.items()})
            return one
        if stage == "generate":
            shape = self.shape(c.sft.base_model)
            if c.generate.backend == "vllm" or shape is None:
                return None  # vLLM is sized separately: it reserves a share of the card (_vllm_plan)
            return generate_estimate(shape, batch_size=c.generate.batch_size,
                                     prompt_tokens=c.sft.max_seq_len, max_new_tokens=c.generate.max_new_tokens,
                                     bf16=_half(c.sft.precision, self.target), cuda=cuda)
        if stage == "judge":
            judge = c.judge
            # served: nothing loaded here; vLLM: sized by its reservation (_vllm_plan)
            shape = None if judge.backend in ("openai", "vllm") else self.shape(judge.model)
            if shape is None:
                return None
            return judge_estimate(shape, Judging(
                batch_size=judge.batch_size, max_prompt_tokens=c.judge_prompt_tokens(),
                bf16=_bf16(judge.precision, self.target), rubric_criteria=4 if judge.rubric else 1,
                prefix_cache_mb=judge.prefix_cache_mb,
                encoder_params=ENCODER_PARAMS if judge.similarity_encoder else 0), cuda=cuda)
        raise ValueError(f"no memory estimate for stage {stage!r}")

    def plan(self, stage: str, *, resident: int = 0) -> StagePlan | None:
        """Does the stage fit? `resident`: bytes this process already holds that the estimate counts as runtime
        (a stage started inside a running flow), so they are not asked for twice."""
        c = self.config
        if stage == "generate" and c.generate.backend == "vllm":
            return self._vllm_plan(stage, c.sft.base_model, c.sft.precision, c.student_context_tokens)
        if stage == "judge" and c.judge.backend == "vllm":
            return self._vllm_plan(stage, c.judge.model, c.judge.precision, c.judge_context_tokens)
        estimate = self.estimate(stage)
        if estimate is None:
            return None
        limit = self.target.free + min(resident, estimate.parts.get("runtime", 0))
        fits = estimate.total <= limit
        suggestions = [] if fits else self._suggestions(stage, limit)
        planned = StagePlan(stage=stage, estimate=estimate, fits=fits, limit=limit, suggestions=suggestions)
        if stage == "generate" and self.target.cuda and self.target.host_free is not None:
            self._check_host(planned)
        return planned

    def _check_host(self, planned: StagePlan) -> None:
        """The transformers generate stage loads the student in float32 in host RAM before casting it onto the
        card: a box with a large card and little RAM fails there, not on the card."""
        host = host_estimate(self.shape(self.config.sft.base_model))
        if host.total > self.target.host_free:
            planned.fits = False
            planned.note = (f"loading it needs {host.describe()} of host RAM, which has {gib(self.target.host_free)} "
                            f"GiB free: use a machine with more RAM or generate.backend: vllm")

    def _vllm_plan(self, stage: str, model: str, precision: str, max_model_len: int) -> StagePlan | None:
        """A vLLM engine (generate's student, or the judge) takes gpu_memory_utilization of the card up front."""
        shape = self.shape(model)
        if not self.target.cuda or shape is None:
            return None  # vLLM's CPU backend sizes its cache by VLLM_CPU_KVCACHE_SPACE, not by this plan
        g = self.config.generate
        reserved, needs = vllm_estimate(shape, device_total=self.target.total, utilization=g.gpu_memory_utilization,
                                        bf16=_half(precision, self.target), max_model_len=max_model_len, stage=stage)
        reservation = reserved.parts["vllm reservation"]
        fits = needs <= reservation and reservation <= self.target.free
        suggestions = []
        if not fits and needs <= self.target.free * 0.95:
            share = round(min(0.95, needs / self.target.total + 0.05), 2)
            change = {"generate.gpu_memory_utilization": share}
            suggestions.append((change, Estimate(stage=stage, parts={"vllm reservation": int(
                self.target.total * share)})))
        return StagePlan(stage=stage, estimate=reserved, fits=fits, limit=self.target.free,
                         suggestions=suggestions, note=f"vLLM needs ~{gib(needs)} GiB inside its reservation")

    def _suggestions(self, stage: str, limit: int) -> list[tuple[dict[str, Any], Estimate]]:
        """The first few single changes (then pairs) of the stage's settings under which it would fit."""
        found = []
        for change in _candidates(stage, self.config):
            changed = _with(self.config, change)
            estimate = self.estimate(stage, changed)
            if estimate is not None and estimate.total <= limit:
                found.append((change, estimate))
                if len(found) == 3:
                    break
        return found


def _candidates(stage: str, config: RunConfig) -> list[dict[str, Any]]:
    """Changes that lower a stage's memory without changing what it computes, mildest first."""
    out: list[dict[str, Any]] = []
    if stage == "sft":
        sft = config.sft
        smaller = []
        b = sft.batch_size // 2
        while b >= 1:
            smaller.append({"sft.batch_size": b, "sft.grad_accum": sft.grad_accum * sft.batch_size // b})
            b //= 2
        checkpointing = [] if sft.gradient_checkpointing else [{"sft.gradient_checkpointing": True}]
        out += checkpointing + smaller
        out += [c | s for c in checkpointing for s in smaller]
        if sft.precision == "fp32":
            out.append({"sft.precision": "bf16"})
        if sft.method == "full":
            out += [{"sft.method": "lora"}] + [{"sft.method": "lora"} | c for c in checkpointing]
    elif stage == "generate":
        b = config.generate.batch_size // 2
        while b >= 1:
            out.append({"generate.batch_size": b})
            b //= 2
    elif stage == "judge":
        judge = config.judge
        if judge.prefix_cache_mb:
            out += [{"judge.prefix_cache_mb": judge.prefix_cache_mb // 4}, {"judge.prefix_cache_mb": 0}]
        b = judge.batch_size // 2
        while b >= 1:
            out.append({"judge.batch_size": b})
            out.append({"judge.batch_size": b, "judge.prefix_cache_mb": 0})
            b //= 2
        if judge.precision == "fp32":
            out.append({"judge.precision": "bf16"})
    return out


def _with(config: RunConfig, change: dict[str, Any]) -> RunConfig:
    """`config` with the suggested settings, applied as the command line's dotted overrides are (JSON is YAML)."""
    overrides = [f"{key}={json.dumps(value)}" for key, value in change.items()]
    return RunConfig.model_validate(apply_overrides(config.model_dump(mode="json"), overrides))


def check_memory(stage: str, config: RunConfig, home: Path) -> StagePlan | None:
    """Refuse (MemoryPlanError) a stage that will not fit this device, before it loads a model."""
    if not config.memory_check or stage not in STAGES:
        return None
    import psutil

    target = Target.here()
    planned = Planner(config, home, target, prepare=False).plan(stage, resident=psutil.Process().memory_info().rss)
    if planned is not None and not planned.fits:
        raise MemoryPlanError(planned.message(target))
    return planned
