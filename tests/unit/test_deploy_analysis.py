"""Progressive-delivery statistics (pipelines/deploy/analysis.py) on seeded synthetic traffic."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy import stats

from pipelines.deploy.analysis import (
    FAIL,
    GLOBAL_CHECKS,
    INCONCLUSIVE,
    PASS,
    AnalysisConfig,
    Check,
    ab_compare,
    ab_report_html,
    error_check,
    judge_window,
    latency_check,
    paired_check,
    rate_check,
    required_sample_size,
    shift_check,
    srm_check,
    tail_exceedance_test,
)

CFG = AnalysisConfig()
ORIGINS = np.array(["EWR", "JFK", "LGA"])


def _latency(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Request latencies around 5 ms, heavy right tail."""
    return rng.lognormal(np.log(5.0), 0.35, n) + shift


def _arm(rng: np.random.Generator, arm: str, n: int, *, latency_shift: float = 0.0, error_rate: float = 0.002,
         fallback_rate: float = 0.005, pred_bias: float = 0.0, outcomes: bool = True) -> pd.DataFrame:
    """One arm's logged answers: delay predictions (minutes) with per-origin residuals, 90% intervals."""
    origin = rng.choice(ORIGINS, size=n)
    actual = rng.normal(20, 40, n)
    residual = rng.normal(0, 15, n)
    prediction = actual + residual + pred_bias
    abs_error = np.abs(prediction - actual)
    covered = (abs_error <= 1.645 * 15).astype(float)
    if not outcomes:
        abs_error = np.full(n, np.nan)
        covered = np.full(n, np.nan)
    return pd.DataFrame({
        "arm": arm, "origin": origin, "latency_ms": _latency(rng, n, latency_shift),
        "error": rng.uniform(size=n) < error_rate, "fallback": rng.uniform(size=n) < fallback_rate,
        "prediction": prediction, "abs_error": abs_error, "covered": covered,
    })


def _window(n: int = 2000, seed: int = 0, *, outcomes: bool = True, **candidate: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.concat([_arm(rng, "primary", n, outcomes=outcomes), _arm(rng, "candidate", n, outcomes=outcomes,
                                                                      **candidate)], ignore_index=True)


def _json_ok(payload: dict) -> None:
    json.dumps(payload, allow_nan=False)


# ---------------------------------------------------------------------------------------------- config


def test_config_validates_ranges() -> None:
    with pytest.raises(ValidationError):
        AnalysisConfig(alpha=0.6)
    with pytest.raises(ValidationError):
        AnalysisConfig(alpha=0)
    with pytest.raises(ValidationError):
        AnalysisConfig(error_rate_tolerance=-0.1)
    with pytest.raises(ValidationError):
        AnalysisConfig(latency_tolerance=0.9)
    with pytest.raises(ValidationError):
        AnalysisConfig(unknown_field=1)
    assert AnalysisConfig(segments=["origin"]).segments == ["origin"]


# ---------------------------------------------------------------------------------------------- latency


def test_latency_identical_distributions_pass_across_seeds() -> None:
    verdicts, significant = [], 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        check = latency_check(_latency(rng, 500), _latency(rng, 500), CFG)
        verdicts.append(check.verdict)
        significant += check.p_value < CFG.alpha
    assert verdicts.count(FAIL) / 100 < 0.03
    assert verdicts.count(PASS) >= 97
    # the tail test itself holds its level (about alpha, certainly not 3 alpha)
    assert significant / 100 < 3 * CFG.alpha + 0.01


def test_latency_regression_fails_at_200_requests() -> None:
    rng = np.random.default_rng(1)
    check = latency_check(_latency(rng, 200), _latency(rng, 200, shift=20.0), CFG)
    assert check.verdict == FAIL
    assert check.name == "latency_p95"
    assert check.candidate > check.primary * CFG.latency_tolerance + CFG.latency_slack_ms
    assert check.p_value < 1e-6
    assert "ms" in check.reason and "always-valid" in check.reason
    assert check.extra["candidate_above_threshold"] >= 0.9 * 200
    assert latency_check(_latency(rng, 200), _latency(rng, 200, shift=20.0), CFG, quantile=0.99).name == "latency_p99"


def test_latency_small_but_significant_slowdown_is_tolerated() -> None:
    rng = np.random.default_rng(2)
    primary, candidate = _latency(rng, 5000), _latency(rng, 5000, shift=0.5)
    assert stats.mannwhitneyu(primary, candidate, alternative="less").pvalue < CFG.alpha  # significantly slower...
    assert latency_check(primary, candidate, CFG).verdict == PASS  # ...but within 25% + 2 ms


def test_tail_exceedance_test_is_exact_and_always_valid() -> None:
    from scipy import integrate

    k, n, share = 30, 1000, 0.01
    integrand = lambda q: (q / share) ** k * ((1 - q) / (1 - share)) ** (n - k) / (1 - share)  # noqa: E731
    expected = integrate.quad(integrand, share, 1, points=[0.03], limit=200)[0]
    assert tail_exceedance_test(k, n, share)[0] == pytest.approx(expected, rel=1e-6)
    assert tail_exceedance_test(0, 0, share) == (1.0, 1.0)
    with pytest.raises(ValueError):
        tail_exceedance_test(5, 4, share)
    with pytest.raises(ValueError):
        tail_exceedance_test(1, 4, 1.0)
    # At the boundary of H0 (exactly `share` of the answers slower than the bound), looked at every 25
    # answers up to 3,000: it ever rejects at alpha = 0.05 in at most 5% of the runs.
    rng = np.random.default_rng(7)
    ever = 0
    for _ in range(200):
        hits = np.cumsum(rng.uniform(size=3000) < share)
        ever += any(tail_exceedance_test(int(hits[i - 1]), i, share)[1] < 0.05 for i in range(25, 3001, 25))
    assert ever / 200 <= 0.05


def _looks(primary: np.ndarray, candidate: np.ndarray, cfg: AnalysisConfig, quantile: float,
           looks: int = 30) -> list[str]:
    """The verdicts of a baking step judged ``looks`` times on its growing window."""
    out = []
    for i in range(1, looks + 1):
        m, k = len(primary) * i // looks, len(candidate) * i // looks
        out.append(latency_check(primary[:m], candidate[:k], cfg, quantile=quantile).verdict)
    return out


# What judge_window gives each global check when segments are judged too (half of alpha, over its checks).
GLOBAL_CFG = CFG.model_copy(update={"alpha": CFG.alpha / 2 / GLOBAL_CHECKS})


def test_latency_a_noisy_tail_on_a_small_window_keeps_baking_instead_of_failing() -> None:
    """What rolled back a good canary on a loaded machine: the candidate's bulk 0.45 ms slower (significant for
    a location test on thousands of answers) and its p99, from ~500 answers, a little above the bound. The
    share of answers above the bound is not significantly more than 1%, so the step keeps baking, at every
    one of 30 looks, in every seed."""
    cfg = GLOBAL_CFG
    for seed in range(20):
        rng = np.random.default_rng(seed)
        primary = rng.lognormal(np.log(4.0), 0.45, 2000)
        bound = float(np.quantile(primary, 0.99)) * cfg.latency_tolerance + cfg.latency_slack_ms
        candidate = rng.lognormal(np.log(4.45), 0.45, 515)
        slow = rng.choice(515, size=9, replace=False)
        candidate[slow] = bound + rng.uniform(0.5, 4.0, 9)  # 1.7% of the answers past the bound
        rng.shuffle(candidate)
        final = latency_check(primary, candidate, cfg, quantile=0.99)
        assert final.candidate > bound and stats.mannwhitneyu(primary, candidate, alternative="less"
                                                                       ).pvalue < cfg.alpha
        assert FAIL not in _looks(primary, candidate, cfg, 0.99), seed


def test_latency_a_regression_only_in_the_tail_fails() -> None:
    """5% of the candidate's answers 30 ms slower, the bulk unchanged: its p99 fails on 1,000 answers."""
    cfg = GLOBAL_CFG
    rng = np.random.default_rng(11)
    primary, candidate = _latency(rng, 4000), _latency(rng, 1000)
    candidate[rng.choice(1000, size=50, replace=False)] += 30.0
    assert np.median(candidate) == pytest.approx(np.median(primary), rel=0.05)
    check = latency_check(primary, candidate, cfg, quantile=0.99)
    assert check.verdict == FAIL, check.reason
    assert check.extra["candidate_above_threshold"] >= 40
    assert FAIL in _looks(primary, candidate, cfg, 0.99)


def test_latency_too_few_requests_inconclusive() -> None:
    rng = np.random.default_rng(3)
    check = latency_check(_latency(rng, 50), _latency(rng, 50, shift=20.0), CFG)
    assert check.verdict == INCONCLUSIVE
    assert "too few" in check.reason


# ---------------------------------------------------------------------------------------------- rates


def test_rate_zero_vs_five_percent_fails() -> None:
    check = rate_check("error_rate", 0, 2000, 100, 2000, CFG.error_rate_tolerance, CFG)
    assert check.verdict == FAIL
    assert check.p_value < CFG.alpha
    assert check.candidate == pytest.approx(0.05) and check.primary == 0.0


def test_rate_equal_low_rates_pass_and_few_requests_inconclusive() -> None:
    assert rate_check("error_rate", 4, 2000, 5, 2000, CFG.error_rate_tolerance, CFG).verdict == PASS
    assert rate_check("error_rate", 0, 50, 0, 50, CFG.error_rate_tolerance, CFG).verdict == INCONCLUSIVE
    # equal but high rates on a small window: not enough evidence either way yet
    assert rate_check("error_rate", 25, 500, 25, 500, CFG.error_rate_tolerance, CFG).verdict == INCONCLUSIVE


def test_rate_sequential_test_survives_peeking() -> None:
    """Equal rates at the boundary of H0 (tolerance 0), ten looks per experiment: the always-valid test fails
    under 3 alpha of the experiments, where a fixed-horizon z-test looked at as often does not hold alpha."""
    rng = np.random.default_rng(7)
    looks = np.arange(300, 3001, 300)
    sequential = naive = detected = 0
    z_crit = stats.norm.ppf(1 - CFG.alpha)
    for _ in range(200):
        p_hits = np.cumsum(rng.uniform(size=looks[-1]) < 0.05)[looks - 1]
        c_hits = np.cumsum(rng.uniform(size=looks[-1]) < 0.05)[looks - 1]
        bad_hits = np.cumsum(rng.uniform(size=looks[-1]) < 0.10)[looks - 1]
        seq = [rate_check("error_rate", int(a), int(n), int(b), int(n), 0.0, CFG).verdict for a, b, n in
               zip(p_hits, c_hits, looks, strict=True)]
        sequential += FAIL in seq
        pa, pb = p_hits / looks, c_hits / looks
        pooled = (p_hits + c_hits) / (2 * looks)
        z = (pb - pa) / np.sqrt(np.maximum(pooled * (1 - pooled) * 2 / looks, 1e-12))
        naive += bool((z > z_crit).any())
        detected += rate_check("error_rate", int(p_hits[-1]), int(looks[-1]), int(bad_hits[-1]), int(looks[-1]), 0.0,
                               CFG).verdict == FAIL
    assert sequential / 200 < 3 * CFG.alpha
    assert naive / 200 > CFG.alpha and naive > sequential
    assert detected / 200 > 0.8  # and it still has power: 5% -> 10% found within 3000 requests


# ---------------------------------------------------------------------------------------------- predictions


def test_prediction_shift_fails_on_bias_and_passes_on_same() -> None:
    rng = np.random.default_rng(4)
    base = rng.normal(20, 40, 1000)
    shifted = shift_check(base, rng.normal(20, 40, 1000) + 60, CFG)
    assert shifted.verdict == FAIL and shifted.name == "prediction_shift"
    assert shifted.statistic > CFG.psi_threshold and shifted.extra["ks_d"] > CFG.ks_threshold
    same = shift_check(base, rng.normal(20, 40, 1000), CFG)
    assert same.verdict == PASS and same.statistic < 0.05
    assert shift_check(base[:50], base[50:100], CFG).verdict == INCONCLUSIVE


def test_error_check_verdicts() -> None:
    rng = np.random.default_rng(5)
    prim = np.abs(rng.normal(0, 15, 800))
    worse = error_check(prim, np.abs(rng.normal(10, 15, 800)), CFG)
    assert worse.verdict == FAIL and worse.name == "online_mae"
    same = error_check(prim, np.abs(rng.normal(0, 15, 800)), CFG)
    assert same.verdict == PASS
    with_nan = np.where(rng.uniform(size=800) < 0.95, np.nan, prim)
    unknown = error_check(with_nan, with_nan, CFG)
    assert unknown.verdict == INCONCLUSIVE and "outcomes not known yet" in unknown.reason


# ---------------------------------------------------------------------------------------------- window


def test_judge_window_good_candidate_passes() -> None:
    cfg = AnalysisConfig(segments=["origin"])
    judgement = judge_window(_window(seed=10), cfg)
    assert judgement.verdict == PASS, judgement.reasons
    names = {(c.name, c.segment) for c in judgement.checks}
    for name in ("latency_p95", "latency_p99", "error_rate", "fallback_rate", "prediction_shift", "online_mae",
                 "coverage"):
        assert (name, "all") in names
    for origin in ORIGINS:
        assert ("online_mae", f"origin={origin}") in names
        assert ("latency_p95", f"origin={origin}") not in names
    _json_ok(judgement.to_dict())


def test_judge_window_outcomes_unknown_still_passes() -> None:
    judgement = judge_window(_window(seed=11, outcomes=False), AnalysisConfig(segments=["origin"]))
    assert judgement.verdict == PASS, judgement.reasons
    for name in ("online_mae", "coverage"):
        check = judgement.check(name)
        assert check.verdict == INCONCLUSIVE
        assert "outcomes not known yet (n=0" in check.reason
    _json_ok(judgement.to_dict())


def test_judge_window_failures() -> None:
    slow = judge_window(_window(seed=12, latency_shift=20.0), CFG)
    assert slow.verdict == FAIL and slow.check("latency_p95").verdict == FAIL
    assert any("latency" in r for r in slow.reasons)
    broken = judge_window(_window(seed=13, error_rate=0.05), CFG)
    assert broken.verdict == FAIL and broken.check("error_rate").verdict == FAIL
    biased = judge_window(_window(seed=14, pred_bias=60.0), CFG)
    assert biased.verdict == FAIL and biased.check("prediction_shift").verdict == FAIL
    assert biased.check("online_mae").verdict == FAIL


def test_judge_window_too_few_requests_inconclusive() -> None:
    judgement = judge_window(_window(n=60, seed=15), CFG)
    assert judgement.verdict == INCONCLUSIVE
    assert judgement.reasons and all("too few" in r for r in judgement.reasons)


def test_segment_regression_is_not_averaged_away() -> None:
    """The candidate is wrong by +45 in EWR only (a third of the rows). EWR's errors are small and the other
    airports' large, so the global MAE moves by less than the global tolerance: only the segment sees it."""
    rng = np.random.default_rng(16)
    n = 3000
    origin = np.repeat(ORIGINS, n // 3)
    sd = np.where(origin == "EWR", 5.0, 350.0)
    actual = rng.normal(20, 40, n)
    residual = rng.normal(0, sd)  # the same traffic for both arms: only the EWR bug differs

    def arm(name: str, bias: np.ndarray) -> pd.DataFrame:
        prediction = actual + residual + bias
        abs_error = np.abs(prediction - actual)
        return pd.DataFrame({"arm": name, "origin": origin, "latency_ms": _latency(rng, n),
                             "error": False, "fallback": False, "prediction": prediction, "abs_error": abs_error,
                             "covered": (abs_error <= 1.645 * sd).astype(float)})

    frame = pd.concat([arm("primary", np.zeros(n)), arm("candidate", np.where(origin == "EWR", 45.0, 0.0))],
                      ignore_index=True)
    cfg = AnalysisConfig(segments=["origin"])
    judgement = judge_window(frame, cfg)

    mae = frame.groupby("arm")["abs_error"].mean()
    assert mae["candidate"] / mae["primary"] < 1 + cfg.mae_tolerance
    assert mae["candidate"] <= mae["primary"] * (1 + cfg.mae_tolerance) + cfg.mae_slack
    assert judgement.check("online_mae").verdict != FAIL
    ewr = judgement.check("online_mae", "origin=EWR")
    assert ewr.verdict == FAIL
    assert ewr.candidate > 8 * ewr.primary
    assert judgement.check("online_mae", "origin=JFK").verdict == PASS
    assert judgement.verdict == FAIL
    assert any(r.startswith("online_mae [origin=EWR]: ") for r in judgement.reasons)


def test_segments_bonferroni_and_max_segments() -> None:
    rng = np.random.default_rng(17)
    frame = _window(n=3000, seed=17)
    frame["route"] = rng.integers(0, 40, len(frame)).astype(str)
    frame.loc[frame["route"] == "0", "route"] = "rare"  # keep one value under min_segment_requests per arm
    frame.loc[(frame["route"] == "rare").to_numpy() & (rng.uniform(size=len(frame)) < 0.7), "route"] = "1"
    cfg = AnalysisConfig(segments=["route"], max_segments=10)
    judgement = judge_window(frame, cfg)
    segments = {c.segment for c in judgement.checks if c.segment != "all"}
    assert len(segments) == 10
    assert "route=rare" not in segments
    assert judgement.verdict == PASS, judgement.reasons


def test_judge_window_rejects_bad_frames() -> None:
    frame = _window(n=200, seed=18)
    with pytest.raises(ValueError, match="lacks columns"):
        judge_window(frame.drop(columns=["covered"]), CFG)
    with pytest.raises(ValueError, match="unknown arms"):
        judge_window(frame.assign(arm="blue"), CFG)


def test_check_to_dict_has_no_nan() -> None:
    check = Check("x", "all", INCONCLUSIVE, float("nan"), None, float("nan"), float("inf"), 0, 0, "r",
                  {"a": float("nan"), "b": np.float64(1.5)})
    d = check.to_dict()
    _json_ok(d)
    assert d["statistic"] is None and d["candidate"] is None and d["extra"] == {"a": None, "b": 1.5}


# ---------------------------------------------------------------------------------------------- shadow


def test_paired_check_detects_better_shadow() -> None:
    rng = np.random.default_rng(20)
    n = 1500
    actual = rng.normal(20, 40, n)
    primary = actual + rng.normal(0, 15, n)
    shadow = actual + rng.normal(0, 12, n)
    err_p, err_s = np.abs(primary - actual), np.abs(shadow - actual)
    err_p[rng.uniform(size=n) < 0.3] = np.nan
    result = paired_check(primary, shadow, err_p, err_s, CFG)
    assert result.verdict == "candidate better"
    assert result.n == n and result.n_outcomes < n
    assert result.mae_shadow < result.mae_primary
    assert result.share_diverging > 0.9 and result.p95_divergence > result.mean_abs_divergence
    worse = paired_check(shadow, primary, err_s, err_p, CFG)
    assert worse.verdict == "candidate worse"
    same = paired_check(primary, primary + rng.normal(0, 0.1, n), err_p, err_p, CFG)
    assert same.verdict == "no significant difference"
    assert paired_check(primary, shadow).verdict == "not enough outcomes"
    assert paired_check(primary[:50], shadow[:50], err_p[:50], err_s[:50], CFG).verdict == "not enough outcomes"
    _json_ok(result.to_dict())


# ---------------------------------------------------------------------------------------------- A/B


def test_srm_check() -> None:
    design = {"control": 0.5, "treatment": 0.5}
    assert srm_check({"control": 5500, "treatment": 4500}, design).verdict == FAIL
    fine = srm_check({"control": 5030, "treatment": 4970}, design)
    assert fine.verdict == PASS and fine.p_value > 0.1
    _json_ok(fine.to_dict())
    with pytest.raises(ValueError):
        srm_check({"control": 10}, design)


def test_required_sample_size_matches_formula_and_simulation() -> None:
    assert required_sample_size(1.0, 0.5) == 63  # 2 (1.96 + 0.84)^2 / 0.25 = 62.8
    assert required_sample_size(1.0, 0.25) == 252
    rng = np.random.default_rng(21)
    rejections = sum(stats.ttest_ind(rng.normal(0, 1, 63), rng.normal(0.5, 1, 63)).pvalue < 0.05
                     for _ in range(400))
    assert 0.72 < rejections / 400 < 0.88


def _errors(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    return np.abs(rng.normal(0, sd, n))


def test_ab_compare_decisions() -> None:
    rng = np.random.default_rng(22)
    better = ab_compare(_errors(rng, 2000, 20), _errors(rng, 2000, 15))
    assert better.decision == "treatment wins"
    assert better.ci[1] < 0 and better.p_value < 0.05
    lo, hi = better.ci
    assert abs(better.bootstrap_ci[0] - lo) < 0.2 * (hi - lo) and abs(better.bootstrap_ci[1] - hi) < 0.2 * (hi - lo)

    worse = ab_compare(_errors(rng, 2000, 15), _errors(rng, 2000, 20))
    assert worse.decision == "control wins"

    equal = ab_compare(_errors(rng, 3000, 20), _errors(rng, 3000, 20), min_detectable_effect=2.0)
    assert equal.required_n_per_arm <= 3000
    assert equal.ci[0] < 0 < equal.ci[1]
    assert equal.decision == "no detectable difference"
    assert equal.achieved_power > 0.8

    small = ab_compare(_errors(rng, 200, 20), _errors(rng, 200, 20))
    assert small.min_detectable_effect == pytest.approx(0.05 * small.mae_control)
    assert small.required_n_per_arm > 200
    assert small.decision == f"underpowered: need {small.required_n_per_arm} per arm"
    assert small.achieved_power < 0.8

    srm = ab_compare(_errors(rng, 2000, 20), _errors(rng, 2000, 15), counts={"control": 5500, "treatment": 4500},
                     expected_weights={"control": 0.5, "treatment": 0.5})
    assert srm.decision == "invalid: sample ratio mismatch"
    assert srm.srm is not None and srm.srm.verdict == FAIL
    for result in (better, equal, small, srm):
        _json_ok(result.to_dict())


def test_ab_report_html_escapes_and_is_self_contained() -> None:
    rng = np.random.default_rng(23)
    result = ab_compare(_errors(rng, 500, 20), _errors(rng, 500, 18), counts={"control": 500, "treatment": 500},
                        expected_weights={"control": 1, "treatment": 1})
    page = ab_report_html(result, "<script>alert('x')</script> & co", {"model": "<b>delay</b>", "<k>": "v"})
    assert "<script" not in page
    assert "&lt;script&gt;" in page and "&amp; co" in page
    assert "&lt;b&gt;delay&lt;/b&gt;" in page and "&lt;k&gt;" in page
    assert "<svg" in page and "<style>" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert result.decision in page
