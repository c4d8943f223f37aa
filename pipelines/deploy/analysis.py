"""The statistics of progressive delivery: canary judgement, shadow comparison and A/B analysis.

A canary serves a slice of live traffic next to the primary; every bake interval :func:`judge_window` gets the
answers both versions logged over the window and says ``pass`` (promote further), ``fail`` (roll back) or
``inconclusive`` (keep baking). The method choices, and why:

* **Latency: an effect bound on the tail, tested sequentially.** The candidate fails only when its p95 /
  p99 is above ``primary * latency_tolerance + latency_slack_ms`` (the effect, as Kayenta's tolerance) *and*
  the evidence for it is significant by a test of that very statement: the share of candidate answers
  slower than the bound is more than the quantile lets through (5% for p95, 1% for p99). That share is a
  Bernoulli rate, tested with an exact always-valid mixture likelihood ratio (uniform mixture over the
  alternative), so looking after every bake interval does not inflate the false-failure rate. A
  location test (Mann-Whitney) would say "significantly slower" for a 0.3 ms shift of the bulk on a few
  thousand requests while the tail estimate of a few hundred is mostly noise; together they rolled back
  good canaries on a loaded machine.
* **Rates (errors, fallbacks, interval misses): an always-valid sequential test.** The window is looked at
  after every bake interval, and a fixed-horizon test peeked at ten times fails a harmless canary far more
  often than ``alpha``. The mixture sequential probability ratio test (Johari, Pekelis & Walsh 2017, "Always
  valid inference") keeps its false-failure rate under ``alpha`` however often it is looked at; its
  confidence bound gives the ``pass``.
* **Prediction shift: PSI + KS.** The population stability index on ten bins at the primary's quantiles
  (the effect, with the usual 0.25 "major shift" threshold) and the two-sample Kolmogorov-Smirnov test (the
  significance; its D is a second effect size that PSI's binning can miss).
* **Online error: Mann-Whitney on the absolute errors** of the answers whose outcome is known, with a relative
  and absolute tolerance on the MAE. Outcomes arrive late, so these checks are often inconclusive at first
  and then do not block a pass; once known they must not fail.
* **Per-segment judgement.** A regression in one segment (one airport, one customer tier) is averaged away in
  the global figures when the segment is a third of the traffic or less; so every check except latency is
  also run per value of each configured segment column, Bonferroni-corrected across the segments.
* **Shadow: paired Wilcoxon.** A shadow answers the *same* requests as the primary, so the per-request
  differences of their absolute errors are compared with the Wilcoxon signed-rank test, much more powerful
  than comparing two independent samples.
* **A/B: SRM + CI + power.** A chi-square sample-ratio-mismatch check first (a broken splitter invalidates
  everything after it), then the MAE difference with a Welch confidence interval (and a bootstrap one to
  compare), and a fixed-horizon power analysis that says how many requests per arm the experiment needs
  before "no difference" means anything.

Pure functions on numpy arrays / pandas frames; numpy, pandas and scipy only.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field
from scipy import special, stats

__all__ = ["FAIL", "INCONCLUSIVE", "PASS", "ABResult", "AnalysisConfig", "Check", "Judgement",
           "PairedComparison", "ab_compare", "ab_report_html", "error_check", "judge_window", "latency_check",
           "paired_check", "rate_check", "required_sample_size", "shift_check", "srm_check",
           "tail_exceedance_test"]

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

ALL = "all"
PSI_BINS = 10
PSI_EPSILON = 1e-4
DEFAULT_TAU2 = 1e-3
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20170101

# the global checks that must all pass for the window to pass
_GATING = ("latency_p95", "latency_p99", "error_rate", "fallback_rate", "prediction_shift")
_ONLINE = ("online_mae", "coverage")


def _json_safe(value: Any) -> Any:
    """numpy scalars to Python, NaN/inf to None, recursively: ``json.dumps(..., allow_nan=False)`` works."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        return f if math.isfinite(f) else None
    return value


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}g}"


def _fmt_p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "n/a"
    return "<1e-300" if p < 1e-300 else f"{p:.2g}"


def _p(p: float | None) -> str:
    """``p=0.012``, or ``p<1e-300`` when it underflows."""
    text = _fmt_p(p)
    return f"p{text}" if text.startswith("<") else f"p={text}"


class AnalysisConfig(BaseModel):
    """Thresholds of the canary judge. Tolerances are what a candidate may lose before it counts: a judge
    with none fails every canary on a big enough window."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=0.5, description="significance level of every test (the segment "
                         "checks are Bonferroni-corrected on top)")
    min_requests: int = Field(100, ge=1, description="requests (or known outcomes) each version needs in the "
                              "global slice; fewer -> inconclusive")
    min_segment_requests: int = Field(30, ge=1, description="rows each version needs in a segment value for "
                                      "it to be judged")
    latency_tolerance: float = Field(1.25, ge=1.0, description="candidate latency quantile may be up to this "
                                     "factor of the primary's (plus the slack) before it counts")
    latency_slack_ms: float = Field(2.0, ge=0, description="absolute slack (ms) on top of the factor, so "
                                    "sub-millisecond primaries are not judged on jitter")
    error_rate_tolerance: float = Field(0.01, ge=0, le=1, description="absolute increase of the failed-call "
                                        "rate tolerated")
    fallback_rate_tolerance: float = Field(0.02, ge=0, le=1, description="absolute increase of the fallback "
                                           "rate tolerated")
    psi_threshold: float = Field(0.25, ge=0, description="PSI above which a significant prediction shift "
                                 "fails")
    ks_threshold: float = Field(0.15, ge=0, le=1, description="KS D above which a significant prediction "
                                "shift fails")
    mae_tolerance: float = Field(0.10, ge=0, description="relative MAE degradation tolerated (0.10: up to 10% "
                                 "worse)")
    mae_slack: float = Field(1.0, ge=0, description="absolute MAE degradation tolerated on top, in label "
                             "units")
    coverage_tolerance: float = Field(0.05, ge=0, le=1, description="absolute increase of the interval miss "
                                      "rate tolerated")
    segments: list[str] = Field(default_factory=list, description="columns whose values are judged one by "
                                "one (every check but latency)")
    max_segments: int = Field(50, ge=1, description="per segment column, only the most frequent values are "
                              "judged")


def _min_n(cfg: AnalysisConfig, segment: str) -> int:
    """The global slice needs ``min_requests`` per version, a segment slice ``min_segment_requests``."""
    return cfg.min_requests if segment == ALL else cfg.min_segment_requests


def _clean(values: Any) -> np.ndarray:
    a = np.asarray(values, dtype=float).ravel()
    return a[np.isfinite(a)]


@dataclass(frozen=True)
class Check:
    """One judged figure on one slice: what was compared, the verdict, and a sentence saying why."""

    name: str
    segment: str
    verdict: str
    statistic: float
    p_value: float | None
    primary: float
    candidate: float
    n_primary: int
    n_candidate: int
    reason: str
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


@dataclass(frozen=True)
class Judgement:
    """The window's verdict, every check behind it, and the reasons (failures, or what is missing)."""

    verdict: str
    checks: list[Check]
    reasons: list[str]

    def check(self, name: str, segment: str = ALL) -> Check:
        """The check called ``name`` on ``segment`` (KeyError when it was not run)."""
        for c in self.checks:
            if c.name == name and c.segment == segment:
                return c
        raise KeyError((name, segment))

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "checks": [c.to_dict() for c in self.checks],
                "reasons": list(self.reasons)}


# ---------------------------------------------------------------------------------------------- latency


def _mann_whitney_less(primary: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """One-sided Mann-Whitney U (H1: primary stochastically less than candidate); all-tied -> p = 1."""
    if primary.size == 0 or candidate.size == 0:
        return math.nan, math.nan
    with np.errstate(all="ignore"):
        res = stats.mannwhitneyu(primary, candidate, alternative="less")
    p = float(res.pvalue)
    return float(res.statistic), (1.0 if not math.isfinite(p) else p)


def tail_exceedance_test(exceed: int, n: int, share: float) -> tuple[float, float]:
    """Always-valid test of ``H0: P(slower than the bound) <= share`` from ``exceed`` of ``n`` answers slower
    than it. Returns ``(likelihood ratio, p-value)``.

    The ratio mixes the alternatives ``q`` uniformly over ``[share, 1]``::

        Lambda = integral_share^1 (q/share)^k ((1-q)/(1-share))^(n-k) dq / (1 - share)

    For every ``q`` above ``share`` each factor has expectation <= 1 under any rate <= ``share``, so Lambda
    is a test supermartingale under H0 and (Ville) the chance that ``1/Lambda`` *ever* drops below alpha is
    at most alpha: it may be looked at after every answer. Computed exactly (a truncated Beta integral)."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    if n < 0 or not 0 <= exceed <= n:
        raise ValueError(f"need 0 <= exceed <= n, got {exceed} of {n}")
    if n == 0:
        return 1.0, 1.0
    a, b = exceed + 1.0, n - exceed + 1.0
    log_lr = (special.betaln(a, b) + stats.beta.logsf(share, a, b) - math.log1p(-share)
              - exceed * math.log(share) - (n - exceed) * math.log1p(-share))
    lr = math.exp(min(float(log_lr), 700.0))
    return lr, min(1.0, 1.0 / lr)


def latency_check(primary_ms: Any, candidate_ms: Any, cfg: AnalysisConfig, segment: str = ALL,
                  quantile: float = 0.95) -> Check:
    """Latency judge on the ``quantile`` (p95 / p99). The bound is ``primary * latency_tolerance +
    latency_slack_ms``; fail when the candidate's quantile is above it *and* significantly so: more than
    ``1 - quantile`` of its answers are slower than the bound by :func:`tail_exceedance_test` (p < alpha,
    valid however often it is looked at). Pass when the quantile is within the bound; above it but not
    significantly, or too few requests -> inconclusive. The bound comes from the primary's own quantile,
    re-estimated at every look (the primary has the larger share of the traffic, and the tolerance and slack
    cover its noise)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    name = f"latency_p{round(quantile * 100):d}"
    label = f"p{round(quantile * 100):d}"
    p_ms, c_ms = _clean(primary_ms), _clean(candidate_ms)
    n_p, n_c = int(p_ms.size), int(c_ms.size)
    q_p = float(np.quantile(p_ms, quantile)) if n_p else math.nan
    q_c = float(np.quantile(c_ms, quantile)) if n_c else math.nan
    bound = q_p * cfg.latency_tolerance + cfg.latency_slack_ms
    share = 1.0 - quantile
    exceed = int(np.count_nonzero(c_ms > bound)) if n_p else 0
    lr, p = tail_exceedance_test(exceed, n_c, share) if n_p else (math.nan, math.nan)
    extra = {"threshold_ms": bound, "ratio": q_c / q_p if q_p > 0 else math.nan,
             "candidate_above_threshold": float(exceed), "share_allowed": share,
             "median_primary_ms": float(np.median(p_ms)) if n_p else math.nan,
             "median_candidate_ms": float(np.median(c_ms)) if n_c else math.nan}
    figures = f"candidate {label} {_fmt(q_c)} ms vs primary {_fmt(q_p)} ms"
    slower = f"{exceed} of {n_c} candidate answers slower than it, {_fmt(share)} allowed"
    need = _min_n(cfg, segment)
    if min(n_p, n_c) < need:
        verdict = INCONCLUSIVE
        reason = f"too few requests (primary {n_p}, candidate {n_c} < {need})"
    elif q_c > bound and p < cfg.alpha:
        verdict = FAIL
        reason = (f"{figures}, above the {_fmt(bound)} ms allowed: {slower} (always-valid {_p(p)} < alpha "
                  f"{_fmt(cfg.alpha)})")
    elif q_c > bound:
        verdict = INCONCLUSIVE
        reason = (f"{figures}, above the {_fmt(bound)} ms allowed but not significantly: {slower} "
                  f"(always-valid {_p(p)} >= alpha {_fmt(cfg.alpha)})")
    else:
        verdict = PASS
        reason = f"{figures}, within the {_fmt(bound)} ms allowed ({slower})"
    return Check(name, segment, verdict, lr, p, q_p, q_c, n_p, n_c, reason, extra)


# ---------------------------------------------------------------------------------------------- rates


def _rate_var(events: float, n: float) -> float:
    """Bernoulli variance of the mean, with the rate floored at 1/n (and capped at 1 - 1/n) so that a zero
    count does not claim zero uncertainty."""
    if n < 2:
        return 0.25
    p = min(max(events / n, 1.0 / n), 1.0 - 1.0 / n)
    return p * (1.0 - p) / n


def _mixture_half_width(v: float, tau2: float, alpha: float) -> float:
    """Half-width of the always-valid (1 - alpha) interval of the normal-mixture SPRT."""
    return math.sqrt((2.0 * v * (v + tau2) / tau2) * math.log(math.sqrt((v + tau2) / v) / alpha))


_RATE_LABELS = {"coverage": "interval miss rate", "error_rate": "error rate", "fallback_rate": "fallback rate"}


def rate_check(name: str, primary_events: int, primary_n: int, candidate_events: int, candidate_n: int,
               tolerance: float, cfg: AnalysisConfig, segment: str = ALL, *, tau2: float = DEFAULT_TAU2) -> Check:
    """Always-valid test that the candidate's event rate is at most ``tolerance`` above the primary's, safe to
    evaluate after every bake interval (mixture SPRT, Johari, Pekelis & Walsh 2017, normal approximation).

    With ``theta = p_c - p_p``, ``theta_hat`` its estimate and ``V = p_p(1-p_p)/n_p + p_c(1-p_c)/n_c`` (each
    rate floored at 1/n for the variance), the likelihood ratio of ``H0: theta = tolerance`` against a normal
    mixture ``theta ~ N(tolerance, tau2)`` is::

        Lambda = sqrt(V / (V + tau2)) * exp(tau2 * (theta_hat - tolerance)^2 / (2 V (V + tau2)))

    It is counted as evidence only when ``theta_hat > tolerance`` (one-sided ``H0: theta <= tolerance``), and
    the always-valid p-value is ``min(1, 1/Lambda)``: by Ville's inequality the chance that it *ever* drops
    below alpha under H0 is at most alpha, so failing at the first look where it does keeps the
    false-failure rate at alpha however many looks are taken. The same mixture gives the always-valid bound
    ``theta_hat + sqrt((2 V (V + tau2) / tau2) * log(sqrt((V + tau2) / V) / alpha))``.

    Verdicts: FAIL when p < alpha and ``theta_hat > tolerance``; PASS when both versions have enough requests
    and either the bound on ``theta`` is <= tolerance, or the candidate's own rate is so low that its bound
    (same mixture, one sample) is <= tolerance (then ``theta <= p_c <= tolerance`` whatever the primary's);
    otherwise INCONCLUSIVE. ``tau2`` is the mixing variance: the scale of the differences the test is most
    sensitive to (1e-3: about 3 percentage points). ``Check.statistic`` is Lambda (1 when ``theta_hat <=
    tolerance``); ``Check.extra`` has the difference and both bounds."""
    if tau2 <= 0:
        raise ValueError("tau2 must be > 0")
    if min(primary_n, candidate_n) < 0 or primary_events < 0 or candidate_events < 0:
        raise ValueError("counts must be >= 0")
    if primary_events > primary_n or candidate_events > candidate_n:
        raise ValueError("events cannot exceed requests")
    label = _RATE_LABELS.get(name, name.replace("_", " "))
    need = _min_n(cfg, segment)
    if min(primary_n, candidate_n) == 0:
        return Check(name, segment, INCONCLUSIVE, math.nan, None, math.nan, math.nan, int(primary_n),
                     int(candidate_n), f"no requests (primary {primary_n}, candidate {candidate_n})",
                     {"tolerance": tolerance})
    r_p, r_c = primary_events / primary_n, candidate_events / candidate_n
    theta = r_c - r_p
    v = _rate_var(primary_events, primary_n) + _rate_var(candidate_events, candidate_n)
    if theta > tolerance:
        log_lr = 0.5 * math.log(v / (v + tau2)) + tau2 * (theta - tolerance) ** 2 / (2.0 * v * (v + tau2))
        p = 1.0 if log_lr <= 0 else math.exp(-min(log_lr, 700.0))
    else:
        log_lr, p = 0.0, 1.0
    upper = theta + _mixture_half_width(v, tau2, cfg.alpha)
    v_c = _rate_var(candidate_events, candidate_n)
    upper_c = r_c + _mixture_half_width(v_c, tau2, cfg.alpha)
    extra = {"difference": theta, "upper_bound": upper, "candidate_upper_bound": upper_c,
             "tolerance": tolerance, "log_likelihood_ratio": log_lr}
    figures = (f"candidate {label} {_fmt(r_c)} ({candidate_events}/{candidate_n}) vs primary {_fmt(r_p)} "
               f"({primary_events}/{primary_n})")
    if p < cfg.alpha:
        verdict = FAIL
        reason = (f"{figures}: more than {_fmt(tolerance)} above (always-valid {_p(p)} < alpha "
                  f"{_fmt(cfg.alpha)})")
    elif min(primary_n, candidate_n) < need:
        verdict = INCONCLUSIVE
        reason = f"too few requests (primary {primary_n}, candidate {candidate_n} < {need})"
    elif upper <= tolerance:
        verdict = PASS
        reason = f"{figures}: difference at most {_fmt(upper)} <= tolerance {_fmt(tolerance)}"
    elif upper_c <= tolerance:
        verdict = PASS
        reason = f"{figures}: candidate's rate at most {_fmt(upper_c)} <= tolerance {_fmt(tolerance)}"
    else:
        verdict = INCONCLUSIVE
        reason = (f"{figures}: difference bound {_fmt(upper)} still above tolerance {_fmt(tolerance)} "
                  f"(always-valid {_p(p)})")
    return Check(name, segment, verdict, math.exp(min(log_lr, 700.0)), p, r_p, r_c, int(primary_n),
                 int(candidate_n), reason, extra)


# ---------------------------------------------------------------------------------------------- predictions


def _psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI on ``bins`` bins at the expected sample's quantiles (fewer when it has ties), empty bins clipped."""
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1))[1:-1])
    e = np.bincount(np.searchsorted(edges, expected, side="right"), minlength=edges.size + 1) / expected.size
    a = np.bincount(np.searchsorted(edges, actual, side="right"), minlength=edges.size + 1) / actual.size
    e, a = np.clip(e, PSI_EPSILON, None), np.clip(a, PSI_EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def shift_check(primary_pred: Any, candidate_pred: Any, cfg: AnalysisConfig, segment: str = ALL) -> Check:
    """Did the candidate's predictions move? Fail when the two-sample KS test is significant *and* the shift
    is large (PSI above ``psi_threshold`` or KS D above ``ks_threshold``): a new model is expected to answer
    somewhat differently, only a major move is a regression by itself."""
    p_pred, c_pred = _clean(primary_pred), _clean(candidate_pred)
    n_p, n_c = int(p_pred.size), int(c_pred.size)
    m_p = float(p_pred.mean()) if n_p else math.nan
    m_c = float(c_pred.mean()) if n_c else math.nan
    need = _min_n(cfg, segment)
    if min(n_p, n_c) < need:
        return Check("prediction_shift", segment, INCONCLUSIVE, math.nan, None, m_p, m_c, n_p, n_c,
                     f"too few requests (primary {n_p}, candidate {n_c} < {need})")
    psi = _psi(p_pred, c_pred)
    ks = stats.ks_2samp(p_pred, c_pred)
    d, p = float(ks.statistic), float(ks.pvalue)
    extra = {"ks_d": d, "psi": psi, "median_primary": float(np.median(p_pred)),
             "median_candidate": float(np.median(c_pred))}
    figures = (f"PSI {_fmt(psi)}, KS D {_fmt(d)} (mean prediction candidate {_fmt(m_c)} vs primary "
               f"{_fmt(m_p)})")
    if p < cfg.alpha and (psi > cfg.psi_threshold or d > cfg.ks_threshold):
        verdict = FAIL
        reason = (f"predictions shifted: {figures}, above PSI {_fmt(cfg.psi_threshold)} or D "
                  f"{_fmt(cfg.ks_threshold)} (KS {_p(p)} < alpha {_fmt(cfg.alpha)})")
    else:
        verdict = PASS
        reason = f"no major prediction shift: {figures} (KS {_p(p)})"
    return Check("prediction_shift", segment, verdict, psi, p, m_p, m_c, n_p, n_c, reason, extra)


def error_check(primary_abs_err: Any, candidate_abs_err: Any, cfg: AnalysisConfig, segment: str = ALL) -> Check:
    """Online accuracy on the answers whose outcome is known (NaN dropped): fail when the candidate's MAE is
    above ``primary * (1 + mae_tolerance) + mae_slack`` and its absolute errors are significantly larger
    (one-sided Mann-Whitney p < alpha); pass when it is within that bound; above it but not significantly,
    or too few outcomes -> inconclusive."""
    p_err, c_err = _clean(primary_abs_err), _clean(candidate_abs_err)
    n_p, n_c = int(p_err.size), int(c_err.size)
    mae_p = float(p_err.mean()) if n_p else math.nan
    mae_c = float(c_err.mean()) if n_c else math.nan
    need = _min_n(cfg, segment)
    if min(n_p, n_c) < need:
        return Check("online_mae", segment, INCONCLUSIVE, math.nan, None, mae_p, mae_c, n_p, n_c,
                     f"outcomes not known yet (n={min(n_p, n_c)} < {need})")
    bound = mae_p * (1.0 + cfg.mae_tolerance) + cfg.mae_slack
    u, p = _mann_whitney_less(p_err, c_err)
    extra = {"threshold": bound, "ratio": mae_c / mae_p if mae_p > 0 else math.nan}
    figures = f"candidate MAE {_fmt(mae_c)} vs primary {_fmt(mae_p)}"
    if mae_c > bound and p < cfg.alpha:
        verdict = FAIL
        reason = (f"{figures}, above the {_fmt(bound)} allowed (Mann-Whitney {_p(p)} < alpha "
                  f"{_fmt(cfg.alpha)})")
    elif mae_c > bound:
        verdict = INCONCLUSIVE
        reason = (f"{figures}, above the {_fmt(bound)} allowed but not significantly worse (Mann-Whitney "
                  f"{_p(p)})")
    else:
        verdict = PASS
        reason = f"{figures}, within the {_fmt(bound)} allowed (Mann-Whitney {_p(p)})"
    return Check("online_mae", segment, verdict, u, p, mae_p, mae_c, n_p, n_c, reason, extra)


# ---------------------------------------------------------------------------------------------- window


_REQUIRED_COLUMNS = ("arm", "latency_ms", "error", "fallback", "prediction", "abs_error", "covered")


def _as_float(series: pd.Series) -> np.ndarray:
    try:
        return series.astype(float).to_numpy()
    except (TypeError, ValueError):
        return pd.to_numeric(series, errors="coerce").astype(float).to_numpy()


def _coverage_check(p: pd.DataFrame, c: pd.DataFrame, cfg: AnalysisConfig, segment: str) -> Check:
    """The interval miss rate (outcome outside the widest interval), on the answers with a known outcome."""
    cov_p, cov_c = _as_float(p["covered"]), _as_float(c["covered"])
    cov_p, cov_c = cov_p[np.isfinite(cov_p)], cov_c[np.isfinite(cov_c)]
    need = _min_n(cfg, segment)
    if min(cov_p.size, cov_c.size) < need:
        miss_p = float(1 - cov_p.mean()) if cov_p.size else math.nan
        miss_c = float(1 - cov_c.mean()) if cov_c.size else math.nan
        return Check("coverage", segment, INCONCLUSIVE, math.nan, None, miss_p, miss_c, int(cov_p.size),
                     int(cov_c.size), f"outcomes not known yet (n={min(cov_p.size, cov_c.size)} < "
                     f"{need})")
    return rate_check("coverage", int((cov_p < 0.5).sum()), int(cov_p.size), int((cov_c < 0.5).sum()),
                      int(cov_c.size), cfg.coverage_tolerance, cfg, segment)


def _flag_check(name: str, column: str, tolerance: float, p: pd.DataFrame, c: pd.DataFrame,
                cfg: AnalysisConfig, segment: str) -> Check:
    fp, fc = _as_float(p[column]), _as_float(c[column])
    fp, fc = fp[np.isfinite(fp)], fc[np.isfinite(fc)]
    return rate_check(name, int((fp > 0.5).sum()), int(fp.size), int((fc > 0.5).sum()), int(fc.size),
                      tolerance, cfg, segment)


def _slice_checks(p: pd.DataFrame, c: pd.DataFrame, cfg: AnalysisConfig, segment: str) -> list[Check]:
    """The checks judged on every slice (global and per segment value)."""
    return [
        _flag_check("error_rate", "error", cfg.error_rate_tolerance, p, c, cfg, segment),
        _flag_check("fallback_rate", "fallback", cfg.fallback_rate_tolerance, p, c, cfg, segment),
        shift_check(p["prediction"], c["prediction"], cfg, segment),
        error_check(p["abs_error"], c["abs_error"], cfg, segment),
        _coverage_check(p, c, cfg, segment),
    ]


def _segment_values(frame: pd.DataFrame, column: str, cfg: AnalysisConfig) -> list[Any]:
    """The ``max_segments`` most frequent values with ``min_segment_requests`` rows in both arms."""
    counts = frame.groupby([column, "arm"], observed=True).size().unstack("arm", fill_value=0)
    for arm in ("primary", "candidate"):
        if arm not in counts:
            counts[arm] = 0
    ok = counts[(counts["primary"] >= cfg.min_segment_requests) & (counts["candidate"] >= cfg.min_segment_requests)]
    order = (ok["primary"] + ok["candidate"]).sort_values(ascending=False, kind="stable")
    return list(order.index[: cfg.max_segments])


GLOBAL_CHECKS = 7  # latency p95 and p99 + the five slice checks
SEGMENT_CHECKS = 5


def _explain(check: Check) -> str:
    return f"{check.name} [{check.segment}]: {check.reason}"


def judge_window(frame: pd.DataFrame, cfg: AnalysisConfig) -> Judgement:
    """Judge one bake window of logged answers (columns ``arm`` = primary|candidate, ``latency_ms``,
    ``error``, ``fallback``, ``prediction``, ``abs_error`` (NaN: outcome unknown), ``covered`` (NaN:
    unknown), plus ``cfg.segments``).

    Globally: latency p95 and p99, error rate, fallback rate, prediction shift, online MAE and coverage. Per
    segment column, for its ``max_segments`` most frequent values with ``min_segment_requests`` rows in both
    arms: everything but latency (latency is an infrastructure property, and tail quantiles of small slices
    are noise). The judgement's false-failure rate is held at ``alpha`` as a whole (Bonferroni): half of it
    is shared by the global checks, the other half by every segment check (``alpha / 2 / m``, ``m`` the
    segment checks judged), so fifty airports and seven kinds of check do not make hundreds of chances of
    rolling back a good version. A regression big enough to matter still fails far below these levels.

    Verdict: any check FAIL -> FAIL; else PASS when the global latency (p95, p99), error_rate, fallback_rate
    and prediction_shift all pass (online MAE / coverage may still be inconclusive, as outcomes arrive late,
    but when known they must not fail); else INCONCLUSIVE."""
    missing = [c for c in (*_REQUIRED_COLUMNS, *cfg.segments) if c not in frame.columns]
    if missing:
        raise ValueError(f"window frame lacks columns {missing}")
    unknown_arms = set(frame["arm"].dropna().unique()) - {"primary", "candidate"}
    if unknown_arms:
        raise ValueError(f"unknown arms {sorted(map(str, unknown_arms))}: expected primary / candidate")
    p, c = frame[frame["arm"] == "primary"], frame[frame["arm"] == "candidate"]
    slices = [(column, value) for column in cfg.segments for value in _segment_values(frame, column, cfg)]
    share = 2.0 if slices else 1.0
    global_cfg = cfg.model_copy(update={"alpha": cfg.alpha / share / GLOBAL_CHECKS})
    checks = [latency_check(p["latency_ms"], c["latency_ms"], global_cfg, ALL, 0.95),
              latency_check(p["latency_ms"], c["latency_ms"], global_cfg, ALL, 0.99),
              *_slice_checks(p, c, global_cfg, ALL)]
    if slices:
        seg_cfg = cfg.model_copy(update={"alpha": cfg.alpha / share / (len(slices) * SEGMENT_CHECKS)})
        for column, value in slices:
            in_p, in_c = p[p[column] == value], c[c[column] == value]
            checks.extend(_slice_checks(in_p, in_c, seg_cfg, f"{column}={value}"))

    failed = [ch for ch in checks if ch.verdict == FAIL]
    gating = [ch for ch in checks if ch.segment == ALL and ch.name in _GATING]
    if failed:
        return Judgement(FAIL, checks, [_explain(ch) for ch in failed])
    if all(ch.verdict == PASS for ch in gating):
        return Judgement(PASS, checks, [])
    return Judgement(INCONCLUSIVE, checks, [_explain(ch) for ch in gating if ch.verdict != PASS])


# ---------------------------------------------------------------------------------------------- shadow


@dataclass(frozen=True)
class PairedComparison:
    """A shadow against the primary on the same requests: how far their answers diverge and, on the requests
    whose outcome is known, whether the shadow's errors are smaller (Wilcoxon signed-rank)."""

    n: int
    mean_abs_divergence: float
    p95_divergence: float
    share_diverging: float
    divergence_unit: float
    n_outcomes: int
    mae_primary: float | None
    mae_shadow: float | None
    mean_error_difference: float | None
    statistic: float | None
    p_value: float | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def paired_check(primary_pred: Any, shadow_pred: Any, primary_abs_err: Any = None, shadow_abs_err: Any = None,
                 cfg: AnalysisConfig | None = None, *, divergence_unit: float = 1.0) -> PairedComparison:
    """Compare a shadow with the primary request by request. Divergence figures on the pairs with both
    predictions; with outcome errors (same requests, pairs with a NaN dropped) a two-sided Wilcoxon test on
    ``shadow_abs_err - primary_abs_err``; verdict "candidate better" / "candidate worse" (p < alpha, in the
    direction of the signed ranks), "no significant difference", or "not enough outcomes" (fewer than
    ``min_requests`` pairs)."""
    cfg = cfg or AnalysisConfig()
    a, b = np.asarray(primary_pred, dtype=float).ravel(), np.asarray(shadow_pred, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired predictions differ in length: {a.size} vs {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    div = np.abs(b[ok] - a[ok])
    n = int(div.size)
    mean_div = float(div.mean()) if n else math.nan
    p95_div = float(np.quantile(div, 0.95)) if n else math.nan
    share = float((div > divergence_unit).mean()) if n else math.nan
    no_outcomes = PairedComparison(n, mean_div, p95_div, share, divergence_unit, 0, None, None, None, None, None,
                                   "not enough outcomes")
    if primary_abs_err is None or shadow_abs_err is None:
        return no_outcomes
    ea, eb = np.asarray(primary_abs_err, dtype=float).ravel(), np.asarray(shadow_abs_err, dtype=float).ravel()
    if ea.shape != eb.shape:
        raise ValueError(f"paired errors differ in length: {ea.size} vs {eb.size}")
    known = np.isfinite(ea) & np.isfinite(eb)
    ea, eb = ea[known], eb[known]
    m = int(ea.size)
    mae_a = float(ea.mean()) if m else None
    mae_b = float(eb.mean()) if m else None
    diff = eb - ea
    mean_diff = float(diff.mean()) if m else None
    if m < cfg.min_requests:
        return PairedComparison(n, mean_div, p95_div, share, divergence_unit, m, mae_a, mae_b, mean_diff, None,
                                None, "not enough outcomes")
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        stat, p, direction = 0.0, 1.0, 0.0
    else:
        res = stats.wilcoxon(diff, alternative="two-sided")
        stat, p = float(res.statistic), float(res.pvalue)
        ranks = stats.rankdata(np.abs(nonzero))
        direction = float(ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum())
    if p < cfg.alpha and direction < 0:
        verdict = "candidate better"
    elif p < cfg.alpha and direction > 0:
        verdict = "candidate worse"
    else:
        verdict = "no significant difference"
    return PairedComparison(n, mean_div, p95_div, share, divergence_unit, m, mae_a, mae_b, mean_diff, stat, p,
                            verdict)


# ---------------------------------------------------------------------------------------------- A/B


def srm_check(counts: Mapping[str, int], expected_weights: Mapping[str, float], alpha: float = 0.001) -> Check:
    """Sample ratio mismatch: chi-square goodness of fit of the arms' request counts to the designed split.
    A mismatch means the assignment is broken (a bot filter, a crash in one arm) and the comparison is
    invalid, whatever it says; hence the strict default alpha, as it is checked on every experiment."""
    arms = list(expected_weights)
    if set(counts) != set(arms) or len(arms) < 2:
        raise ValueError(f"counts arms {sorted(counts)} must match the >= 2 designed arms {sorted(arms)}")
    w = np.array([float(expected_weights[a]) for a in arms])
    if (w <= 0).any():
        raise ValueError("expected weights must be > 0")
    obs = np.array([int(counts[a]) for a in arms], dtype=float)
    if (obs < 0).any():
        raise ValueError("counts must be >= 0")
    total = float(obs.sum())
    share_exp = w / w.sum()
    share_obs = obs / total if total else np.full(len(arms), math.nan)
    extra = {**{f"expected_share:{a}": float(s) for a, s in zip(arms, share_exp, strict=True)},
             **{f"observed_share:{a}": float(s) for a, s in zip(arms, share_obs, strict=True)}}
    n0, n1 = int(obs[0]), int(obs[1])
    expected = total * share_exp
    if total == 0 or (expected < 5).any():
        return Check("sample_ratio", ALL, INCONCLUSIVE, math.nan, None, float(share_exp[0]), float(share_obs[0]),
                     n0, n1, f"too few requests to test the sample ratio ({int(total)})", extra)
    res = stats.chisquare(obs, expected)
    chi2, p = float(res.statistic), float(res.pvalue)
    shares = ", ".join(f"{a} {s:.2%} (expected {e:.2%})" for a, s, e in zip(arms, share_obs, share_exp, strict=True))
    if p < alpha:
        verdict, reason = FAIL, f"sample ratio mismatch: {shares} (chi-square {_p(p)} < {_fmt(alpha)})"
    else:
        verdict, reason = PASS, f"sample ratio as designed: {shares} (chi-square {_p(p)})"
    return Check("sample_ratio", ALL, verdict, chi2, p, float(share_exp[0]), float(share_obs[0]), n0, n1, reason,
                 extra)


def required_sample_size(std: float, min_detectable_effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Requests per arm for a two-sided two-sample z-test at ``alpha`` to detect a difference of means of
    ``min_detectable_effect`` with probability ``power``: ``2 (z_{1-alpha/2} + z_power)^2 std^2 / mde^2``."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must be in (0, 1)")
    if std < 0 or not math.isfinite(std) or min_detectable_effect == 0 or not math.isfinite(min_detectable_effect):
        raise ValueError("std must be finite >= 0 and min_detectable_effect finite non-zero")
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(2, math.ceil(2.0 * (z * std / abs(min_detectable_effect)) ** 2))


def _power(se: float, effect: float, alpha: float) -> float:
    """Power of the two-sided z-test with standard error ``se`` against a true difference ``effect``."""
    if se <= 0:
        return 1.0
    z = stats.norm.ppf(1 - alpha / 2)
    d = abs(effect) / se
    return float(stats.norm.cdf(d - z) + stats.norm.cdf(-d - z))


def _bootstrap_ci(control: np.ndarray, treatment: np.ndarray, alpha: float) -> tuple[float, float]:
    """Percentile bootstrap CI of the difference of means, fixed seed, resampled in chunks to bound memory."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    diffs = np.empty(BOOTSTRAP_RESAMPLES)
    chunk = max(1, min(BOOTSTRAP_RESAMPLES, 2_000_000 // max(control.size, treatment.size)))
    for start in range(0, BOOTSTRAP_RESAMPLES, chunk):
        k = min(chunk, BOOTSTRAP_RESAMPLES - start)
        mc = control[rng.integers(0, control.size, (k, control.size))].mean(axis=1)
        mt = treatment[rng.integers(0, treatment.size, (k, treatment.size))].mean(axis=1)
        diffs[start:start + k] = mt - mc
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


@dataclass(frozen=True)
class ABResult:
    """An A/B comparison of the arms' MAE (treatment - control: negative is better) and what it allows."""

    n_control: int
    n_treatment: int
    mae_control: float
    mae_treatment: float
    mae_control_ci: tuple[float, float]
    mae_treatment_ci: tuple[float, float]
    difference: float
    ci: tuple[float, float]
    bootstrap_ci: tuple[float, float]
    p_value: float
    alpha: float
    power_target: float
    min_detectable_effect: float
    std: float
    required_n_per_arm: int
    achieved_power: float
    srm: Check | None
    decision: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["srm"] = self.srm.to_dict() if self.srm is not None else None
        return _json_safe(d)


def ab_compare(control_abs_err: Any, treatment_abs_err: Any, *, alpha: float = 0.05, power: float = 0.8,
               min_detectable_effect: float | None = None, counts: Mapping[str, int] | None = None,
               expected_weights: Mapping[str, float] | None = None) -> ABResult:
    """Compare the arms' absolute errors (NaN dropped) as a fixed-horizon experiment.

    The difference of MAEs (treatment - control) gets a (1 - alpha) Welch interval (normal approximation on
    the per-request errors) and, for comparison, a percentile bootstrap one; the p-value is Welch's t-test.
    The power analysis takes ``min_detectable_effect`` (default: 5% of the control MAE) and the pooled
    standard deviation of the errors. Decision, first that applies: "invalid: sample ratio mismatch" (when
    ``counts`` are given and fail :func:`srm_check` against ``expected_weights``, default equal); "treatment
    wins" (CI below 0); "control wins" (CI above 0); "no detectable difference" (each arm has the required
    n); "underpowered: need N per arm". The intervals are fixed-horizon: read them at the planned n, not
    after every day (for that, see :func:`rate_check`)."""
    ctrl, treat = _clean(control_abs_err), _clean(treatment_abs_err)
    if min(ctrl.size, treat.size) < 2:
        raise ValueError(f"need >= 2 known errors per arm (control {ctrl.size}, treatment {treat.size})")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must be in (0, 1)")
    n_c, n_t = int(ctrl.size), int(treat.size)
    mae_c, mae_t = float(ctrl.mean()), float(treat.mean())
    var_c, var_t = float(ctrl.var(ddof=1)), float(treat.var(ddof=1))
    z = float(stats.norm.ppf(1 - alpha / 2))
    se = math.sqrt(var_c / n_c + var_t / n_t)
    diff = mae_t - mae_c
    ci = (diff - z * se, diff + z * se)
    if se > 0:
        p = float(stats.ttest_ind(treat, ctrl, equal_var=False).pvalue)
    else:
        p = 1.0 if diff == 0 else 0.0
    boot = _bootstrap_ci(ctrl, treat, alpha)
    mde = float(min_detectable_effect) if min_detectable_effect is not None else 0.05 * mae_c
    std = math.sqrt((var_c + var_t) / 2)
    if mde == 0:
        raise ValueError("min_detectable_effect is 0 (a control MAE of 0 needs an explicit one)")
    required = required_sample_size(std, mde, alpha, power)
    achieved = _power(se, mde, alpha)
    srm = None
    if counts is not None:
        weights = expected_weights if expected_weights is not None else dict.fromkeys(counts, 1.0)
        srm = srm_check(counts, weights)
    if srm is not None and srm.verdict == FAIL:
        decision = "invalid: sample ratio mismatch"
    elif ci[1] < 0:
        decision = "treatment wins"
    elif ci[0] > 0:
        decision = "control wins"
    elif min(n_c, n_t) >= required:
        decision = "no detectable difference"
    else:
        decision = f"underpowered: need {required} per arm"

    def arm_ci(m: float, v: float, n: int) -> tuple[float, float]:
        return m - z * math.sqrt(v / n), m + z * math.sqrt(v / n)

    return ABResult(n_c, n_t, mae_c, mae_t, arm_ci(mae_c, var_c, n_c), arm_ci(mae_t, var_t, n_t), diff, ci, boot,
                    p, alpha, power, mde, std, required, achieved, srm, decision)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:46rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.3rem .7rem;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.decision{font-size:1.2rem;font-weight:600;padding:.6rem 1rem;border-radius:.3rem;background:#eef}
.win{background:#e3f6e3}.lose{background:#fbe4e4}.warn{background:#fff4d6}
.muted{color:#666;font-size:.9rem}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _ci_svg(result: ABResult, width: int = 560, height: int = 70) -> str:
    """The difference and its CI as a bar on an axis around 0 (with the +-MDE marks)."""
    lo, hi = result.ci
    mde = abs(result.min_detectable_effect)
    span = max(abs(lo), abs(hi), mde, abs(result.bootstrap_ci[0]), abs(result.bootstrap_ci[1]), 1e-12) * 1.2
    pad = 20

    def x(v: float) -> float:
        return pad + (v + span) / (2 * span) * (width - 2 * pad)

    colour = "#2a8a2a" if hi < 0 else "#c03030" if lo > 0 else "#777"
    y = height / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(f"difference {result.difference:.4g}, CI [{lo:.4g}, {hi:.4g}]")}">',
        f'<line x1="{pad}" y1="{y}" x2="{width - pad}" y2="{y}" stroke="#bbb"/>',
        f'<line x1="{x(0):.1f}" y1="8" x2="{x(0):.1f}" y2="{height - 8}" stroke="#222"/>',
        f'<text x="{x(0):.1f}" y="{height - 1}" font-size="10" text-anchor="middle">0</text>',
    ]
    for m in (-mde, mde):
        parts.append(f'<line x1="{x(m):.1f}" y1="14" x2="{x(m):.1f}" y2="{height - 14}" stroke="#999" '
                     f'stroke-dasharray="3,3"/>')
    parts += [
        f'<rect x="{x(lo):.1f}" y="{y - 7}" width="{max(x(hi) - x(lo), 1):.1f}" height="14" fill="{colour}" '
        f'fill-opacity="0.35" stroke="{colour}"/>',
        f'<circle cx="{x(result.difference):.1f}" cy="{y}" r="4" fill="{colour}"/>',
        f'<text x="{x(lo):.1f}" y="{y - 11}" font-size="10" text-anchor="middle">{_esc(f"{lo:.3g}")}</text>',
        f'<text x="{x(hi):.1f}" y="{y - 11}" font-size="10" text-anchor="middle">{_esc(f"{hi:.3g}")}</text>',
        "</svg>",
    ]
    return "".join(parts)


def _rows(cells: Iterable[Iterable[Any]]) -> str:
    """Table rows, the first cell of each left-aligned (a label)."""
    return "".join("<tr>" + "".join(f'<td class="l">{_esc(v)}</td>' if i == 0 else f"<td>{_esc(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in cells)


def ab_report_html(result: ABResult, title: str, context: Mapping[str, str] | None = None) -> str:
    """A self-contained HTML page of an A/B result (inline CSS, no scripts, no external assets), every
    interpolated string escaped."""
    pct = int(round((1 - result.alpha) * 100))
    decision_class = ("win" if result.decision == "treatment wins" else
                      "lose" if result.decision in ("control wins", "invalid: sample ratio mismatch") else "warn")
    ctx = ""
    if context:
        ctx = "<table>" + _rows((k, v) for k, v in context.items()) + "</table>"
    arms = _rows([
        ("control", result.n_control, f"{result.mae_control:.4g}",
         f"[{result.mae_control_ci[0]:.4g}, {result.mae_control_ci[1]:.4g}]"),
        ("treatment", result.n_treatment, f"{result.mae_treatment:.4g}",
         f"[{result.mae_treatment_ci[0]:.4g}, {result.mae_treatment_ci[1]:.4g}]"),
    ])
    diff = _rows([
        ("difference (treatment - control)", f"{result.difference:.4g}"),
        (f"{pct}% CI (Welch)", f"[{result.ci[0]:.4g}, {result.ci[1]:.4g}]"),
        (f"{pct}% CI (bootstrap, {BOOTSTRAP_RESAMPLES} resamples)",
         f"[{result.bootstrap_ci[0]:.4g}, {result.bootstrap_ci[1]:.4g}]"),
        ("p-value (Welch t-test)", _fmt_p(result.p_value)),
    ])
    if result.srm is None:
        srm = "<p class=\"muted\">No assignment counts given: sample ratio not checked.</p>"
    else:
        srm = (f"<p><strong>{_esc(result.srm.verdict)}</strong>: {_esc(result.srm.reason)}</p>")
    power = _rows([
        ("minimum detectable effect", f"{result.min_detectable_effect:.4g}"),
        ("error standard deviation (pooled)", f"{result.std:.4g}"),
        (f"required n per arm (alpha {result.alpha:g}, power {result.power_target:g})", result.required_n_per_arm),
        ("achieved power at the current n", f"{result.achieved_power:.1%}"),
    ])
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>{ctx}"
        f"<p class=\"decision {decision_class}\">{_esc(result.decision)}</p>"
        "<h2>Arms</h2><table><tr><th class=\"l\">arm</th><th>n</th><th>MAE</th>"
        f"<th>{pct}% CI</th></tr>{arms}</table>"
        f"<h2>Difference</h2>{_ci_svg(result)}"
        f"<p class=\"muted\">Bar: the {pct}% Welch interval of the MAE difference; dot: the estimate; dashed: "
        "&plusmn; the minimum detectable effect. Left of 0 is better for the treatment.</p>"
        f"<table>{diff}</table>"
        f"<h2>Sample ratio</h2>{srm}"
        f"<h2>Power</h2><table>{power}</table>"
        "</body></html>\n"
    )
