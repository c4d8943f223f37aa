"""The deployment spec of a use case (``deployment.yaml``): strategy, canary steps and bake times, shadow and
A/B settings, and the canary judge's thresholds. Overrides (``{"canary.bake_s": 10}``) apply per deployment.

Errors name the key at fault (``canary.steps``, ``ab.weights``...).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config import validation_lines
from pipelines.deploy.analysis import AnalysisConfig
from pipelines.usecases import SpecError, UseCase

__all__ = ["ABSpec", "CanarySpec", "DeploymentSpec", "ShadowSpec", "load_deployment_spec"]

Strategy = Literal["canary", "shadow", "ab", "direct"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CanarySpec(_Spec):
    steps: list[float] = Field(default_factory=lambda: [5, 25, 50, 100],
                               description="percent of requests on the candidate, increasing, ending at 100")
    bake_s: float = Field(300, gt=0, description="time a step runs before it is judged")
    min_requests: int = Field(200, ge=1, description="candidate requests a step needs before it is judged")
    max_bake_s: float = Field(1200, gt=0, description="an inconclusive step is extended up to this, then rolled back")
    check_every_s: float = Field(30, gt=0, description="how often a baking step is judged after bake_s")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step is a percentage in (0, 100]")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)) or steps[-1] != 100:
            raise ValueError("steps must increase and end at 100")
        return steps

    @model_validator(mode="after")
    def _bakes(self) -> CanarySpec:
        if self.max_bake_s < self.bake_s:
            raise ValueError("max_bake_s must be at least bake_s")
        return self


class ShadowSpec(_Spec):
    sample: float = Field(1.0, gt=0, le=1, description="share of requests copied to the candidate")
    duration_s: float = Field(900, gt=0, description="how long the shadow runs")
    min_requests: int = Field(500, ge=1, description="shadow-scored requests needed for a verdict")


class ABSpec(_Spec):
    sticky_key: str = Field(description="request field hashed to pick the arm (one entity, one arm)")
    weights: dict[str, float] = Field(default_factory=lambda: {"A": 0.5, "B": 0.5},
                                      description="arm -> share; A is the version serving, B the candidate")
    alpha: float = Field(0.05, gt=0, lt=0.5)
    power: float = Field(0.8, gt=0, lt=1)
    min_detectable_effect: float | None = Field(None, gt=0, description="MAE difference the test is powered "
                                                "for (label units); None = 5% of the control's MAE")
    duration_s: float = Field(3600, gt=0, description="how long the test collects traffic (fixed horizon)")

    @field_validator("weights")
    @classmethod
    def _two_arms(cls, weights: dict[str, float]) -> dict[str, float]:
        if set(weights) != {"A", "B"}:
            raise ValueError("two arms, A (serving) and B (candidate)")
        if any(not 0 < w < 1 for w in weights.values()) or abs(sum(weights.values()) - 1) > 1e-6:
            raise ValueError("each weight is in (0, 1) and they sum to 1")
        return weights


class DeploymentSpec(_Spec):
    strategy: Strategy = "canary"
    canary: CanarySpec = CanarySpec()
    shadow: ShadowSpec = ShadowSpec()
    ab: ABSpec | None = None
    analysis: AnalysisConfig = AnalysisConfig()


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise SpecError(f"override {dotted!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_deployment_spec(usecase: UseCase, overrides: dict[str, Any] | None = None) -> DeploymentSpec:
    """The use case's ``deployment.yaml`` (defaults when absent) with dotted-key ``overrides`` applied."""
    raw: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v)
                           for k, v in dict(usecase.extra.get("deployment") or {}).items()}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise SpecError(f"override keys are dotted names such as 'canary.bake_s', got {key!r}")
        _set(raw, key, value)
    try:
        return DeploymentSpec.model_validate(raw)
    except ValidationError as exc:
        where = usecase.path / "deployment.yaml"
        suffix = f" (with overrides {', '.join(sorted(overrides))})" if overrides else ""
        raise SpecError("\n".join([f"invalid deployment spec {where}{suffix}:", *validation_lines(exc)])) from None
