"""What the decision works on and produces: a run's numbers, the rules in force, the decision with its reasons."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sftjudge.config import DecideConfig, RunConfig


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """What decide needs to know about one run."""

    run_id: str
    judge_score: float | None
    train_loss: float
    val_loss: float
    test_fingerprint: str
    judge_key: str  # judge definition + judge model: scores from different judges are not comparable
    judge_problems: tuple[str, ...] = ()  # judge health failures: the score cannot be trusted to decide
    judge_status: str = "valid"  # valid, degraded (a compressed scale) or invalid
    item_scores: dict[str, float] = field(default_factory=dict)  # per test item, for paired differences
    train_losses: tuple[float, ...] = ()  # per epoch
    val_losses: tuple[float, ...] = ()
    unparseable_rate: float = 0.0
    contaminated: int = 0
    train_rows: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # flattened config, for one-variable hygiene
    regression: dict[str, Any] | None = None  # regression-suite summary: per-category run/base scores and tax
    item_metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # per test item: ROUGE-L, token F1, ...
    baseline_items: dict[str, dict[str, Any]] = field(default_factory=dict)  # base model per item: score, metrics
    dimensions: dict[str, float] = field(default_factory=dict)  # rubric means: accuracy, completeness, format, ...
    item_texts: dict[str, dict[str, str]] = field(default_factory=dict)  # per test item: answer and reference

    def scored_texts(self) -> dict[str, dict[str, Any]]:
        """Per test item: score, answer and reference, as the length control reads them."""
        return {i: {"score": s} | self.item_texts[i] for i, s in self.item_scores.items() if i in self.item_texts}

    def items(self) -> dict[str, dict[str, Any]]:
        """Per test item: the judge score and the reference metrics, as consistency checks read them."""
        return {i: {"score": s, "metrics": self.item_metrics.get(i, {})} for i, s in self.item_scores.items()}

    @property
    def val_train_ratio(self) -> float:
        return self.val_loss / self.train_loss if self.train_loss > 0 else float("inf")


@dataclass(frozen=True, kw_only=True)
class DecideRules:
    """The decide settings fixed in the run's config, plus the judge's noise floor measured in the run."""

    decide: DecideConfig
    max_unparseable_rate: float  # judge.health's limit, also a promotion gate
    noise_floor: float  # run-to-run judge variance in score points, never below decide.min_noise_floor

    @classmethod
    def from_config(cls, config: RunConfig, measured_noise: float = 0.0) -> DecideRules:
        return cls(decide=config.decide, max_unparseable_rate=config.judge.health.max_unparseable_rate,
                   noise_floor=max(measured_noise, config.decide.min_noise_floor))


@dataclass
class Decision:
    action: Literal["promote", "hold", "rollback", "awaiting_approval"]
    reasons: list[str]
    champion_before: str | None
    comparison: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    advice: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
