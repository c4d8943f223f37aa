"""Learned thresholds on indicator series (pipelines/monitoring/anomaly.py).

Every expected value follows from the method in the module docstring (median baseline, ``1.4826 * MAD``
scale floored at ``max(min_scale_rel * |baseline|, abs_floor, min_scale_abs)``, z thresholds per severity),
computed here from the constructed history, never read off a run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipelines.monitoring.anomaly import (
    MAD_TO_SIGMA,
    AnomalyConfig,
    combine,
    fixed_severity,
    score,
    severity_name,
)

NONE, LOW, MEDIUM, HIGH = 0, 1, 2, 3
MONDAY, TUESDAY = 0, 1


def weekdays_before(current_weekday: int, days: int) -> np.ndarray:
    """The weekdays of the ``days`` columns (oldest -> newest) that end the day before ``current_weekday``."""
    return np.array([(current_weekday - (days - j)) % 7 for j in range(days)])


def alternating(days: int, centre: float = 100.0, spread: float = 1.0) -> np.ndarray:
    """centre -/+ spread on alternate days: median ``centre``, every absolute deviation ``spread`` (MAD)."""
    return centre + spread * np.where(np.arange(days) % 2 == 0, -1.0, 1.0)


def score_one(history, current, current_weekday=MONDAY, **kwargs):
    hist = np.asarray(history, dtype=float)[None, :]
    return score(hist, np.array([current], dtype=float), weekdays_before(current_weekday, hist.shape[1]),
                 current_weekday, **kwargs)


# A config whose relative floor is off, so the scale is exactly 1.4826 * MAD on the histories below.
SHARP = AnomalyConfig(min_scale_rel=0.0)
# The same without weekday baselines (4 weeks of history never hold 5 same-weekday points).
SHARP_OVERALL = AnomalyConfig(min_scale_rel=0.0, seasonal_min_weeks=5)


def test_baseline_and_scale_are_the_median_and_the_normal_consistent_mad():
    s = score_one(alternating(28), 100.0, config=SHARP)
    assert s.baseline[0] == pytest.approx(100.0)
    assert s.scale[0] == pytest.approx(MAD_TO_SIGMA * 1.0)
    assert s.n_history[0] == 28


def test_severity_follows_the_z_thresholds():
    cfg = AnomalyConfig(min_scale_rel=0.0, z_low=3.0, z_medium=5.0, z_high=8.0)
    sigma = MAD_TO_SIGMA * 1.0
    expected = {0.0: NONE, 2.9: NONE, 3.1: LOW, 4.9: LOW, 5.1: MEDIUM, 7.9: MEDIUM, 8.1: HIGH, 50.0: HIGH}
    for z, severity in expected.items():
        s = score_one(alternating(28), 100.0 + z * sigma, config=cfg)
        assert s.z[0] == pytest.approx(z), z
        assert s.severity[0] == severity, z


def test_a_stable_history_flags_a_value_far_outside_and_not_one_inside():
    rng = np.random.default_rng(7)
    history = rng.normal(1000.0, 10.0, size=28)
    # Scale: at least 5% of the baseline (50), so 1000 + 1000 is z ~ 20: high; 1000 + 10 is z ~ 0.2: none.
    far = score_one(history, 2000.0)
    inside = score_one(history, 1010.0)
    assert far.severity[0] == HIGH and severity_name(far.severity[0]) == "high"
    assert inside.severity[0] == NONE


def test_below_min_history_no_learned_alert_whatever_the_value():
    cfg = AnomalyConfig(min_history=7)
    short = np.full(10, np.nan)
    short[-6:] = alternating(6)  # 6 non-null points < min_history
    s = score_one(short, 1e6, config=cfg)
    assert s.n_history[0] == 6
    assert s.severity[0] == NONE
    assert np.isfinite(s.z[0]) and s.z[0] > cfg.z_high  # the z is there; only the alert is withheld
    # One more point reaches min_history: the same value is now high.
    enough = np.full(10, np.nan)
    enough[-7:] = alternating(7)
    assert score_one(enough, 1e6, config=cfg).severity[0] == HIGH


def test_no_history_and_no_current_value_give_no_alert_and_no_warning():
    hist = np.array([np.full(28, np.nan), alternating(28)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = score(hist, np.array([5.0, np.nan]), weekdays_before(MONDAY, 28), MONDAY)
    assert np.isnan(s.baseline[0]) and np.isnan(s.scale[0]) and np.isnan(s.z[0])
    assert s.n_history[0] == 0
    assert list(s.severity) == [NONE, NONE]


def weekly(weekdays: np.ndarray, monday: float = 200.0, other: float = 100.0) -> np.ndarray:
    """High every Monday, ``other`` -/+ 1 on the other days."""
    noise = np.where(np.arange(len(weekdays)) % 2 == 0, -1.0, 1.0)
    return np.where(weekdays == MONDAY, monday, other + noise)


@pytest.mark.parametrize("days", [21, 28])  # 3 and 4 Mondays: >= seasonal_min_weeks
def test_weekly_seasonality_a_high_monday_is_normal_a_high_tuesday_is_not(days):
    cfg = AnomalyConfig(seasonal_min_weeks=3)
    mon_days, tue_days = weekdays_before(MONDAY, days), weekdays_before(TUESDAY, days)
    monday = score(weekly(mon_days)[None, :], np.array([200.0]), mon_days, MONDAY, cfg)
    assert monday.seasonal[0] and monday.baseline[0] == pytest.approx(200.0)
    assert monday.severity[0] == NONE
    tuesday = score(weekly(tue_days)[None, :], np.array([200.0]), tue_days, TUESDAY, cfg)
    assert tuesday.seasonal[0] and abs(tuesday.baseline[0] - 100.0) <= 1.0
    assert tuesday.severity[0] == HIGH  # (200 - ~100) / max(1.48 MAD, 5% of ~100) ~ 20
    # A Monday at the other days' level breaks the Monday pattern: (100 - 200) / (5% of 200) = -10.
    low_monday = score(weekly(mon_days)[None, :], np.array([100.0]), mon_days, MONDAY, cfg)
    assert low_monday.severity[0] == HIGH


def test_too_few_same_weekday_points_fall_back_to_the_overall_baseline():
    cfg = AnomalyConfig(seasonal_min_weeks=3)
    days = weekdays_before(MONDAY, 14)  # two Mondays only
    s = score(weekly(days)[None, :], np.array([200.0]), days, MONDAY, cfg)
    assert not s.seasonal[0]
    assert abs(s.baseline[0] - 100.0) <= 1.0
    assert s.severity[0] == HIGH


def test_direction_up_ignores_drops_and_down_ignores_rises():
    history = alternating(28)
    drop, rise = 10.0, 1000.0
    assert score_one(history, drop, direction="both").severity[0] == HIGH
    assert score_one(history, drop, direction="up").severity[0] == NONE
    assert score_one(history, drop, direction="down").severity[0] == HIGH
    assert score_one(history, rise, direction="up").severity[0] == HIGH
    assert score_one(history, rise, direction="down").severity[0] == NONE
    # z stays signed whatever the direction.
    assert score_one(history, drop, direction="up").z[0] < 0


def test_one_outlier_in_the_history_does_not_inflate_the_baseline_or_the_scale():
    clean = alternating(28)
    dirty = clean.copy()
    dirty[10] = 1e5  # one broken day
    # dirty: thirteen 99s, fourteen 101s and 1e5 -> median 101; deviations fourteen 0s, thirteen 2s and one
    # huge -> MAD (0 + 2) / 2 = 1, the clean history's MAD.
    for history, median in ((clean, 100.0), (dirty, 101.0)):
        s = score_one(history, 120.0, config=SHARP_OVERALL)
        assert not s.seasonal[0]
        assert s.baseline[0] == pytest.approx(median)
        # The MAD's sigma (1.48), or the lower tail's spread (2 / 1.2816 = 1.56 for the dirty history, whose
        # median moved to 101): the scale of the 99 / 101 days, not of the broken one.
        assert MAD_TO_SIGMA <= s.scale[0] <= 2 / 1.2816 + 1e-9
        assert s.severity[0] == HIGH  # z >= (120 - 101) / 1.56 ~ 12.2
        assert score_one(history, 100.0, config=SHARP_OVERALL).severity[0] == NONE
    # A mean / standard deviation baseline would have a sigma ~ 1e5 / sqrt(28) and miss 120 entirely.
    assert dirty.std() > 1000


def test_abs_floor_stops_alerts_on_a_flat_zero_history_with_a_tiny_change():
    flat = np.zeros(28)
    # Without a floor, a flat history flags any change (the scale is the last-resort epsilon).
    assert score_one(flat, 0.001).severity[0] == HIGH
    # With a 0.005 floor: 0.001 is z = 0.2 (none), 0.10 is z = 20 (high).
    tiny = score_one(flat, 0.001, abs_floor=0.005)
    assert tiny.scale[0] == pytest.approx(0.005) and tiny.severity[0] == NONE
    assert score_one(flat, 0.10, abs_floor=0.005).severity[0] == HIGH


def test_abs_floor_per_indicator_and_nan_counts_as_zero():
    hist = np.zeros((3, 28))
    s = score(hist, np.full(3, 0.001), weekdays_before(MONDAY, 28), MONDAY,
              abs_floor=np.array([0.005, 0.0, np.nan]))
    assert list(s.severity) == [NONE, HIGH, HIGH]


def test_only_the_last_window_days_are_used():
    cfg = AnomalyConfig(window_days=28)
    history = np.concatenate([np.full(20, 1000.0), alternating(28)])  # an old regime, out of the window
    s = score_one(history, 100.0, config=cfg)
    assert s.n_history[0] == 28
    assert s.baseline[0] == pytest.approx(100.0)
    assert s.severity[0] == NONE


def test_rows_are_scored_independently():
    rng = np.random.default_rng(3)
    hist = np.vstack([alternating(28), np.zeros(28), rng.normal(50.0, 5.0, size=28), weekly(
        weekdays_before(TUESDAY, 28))])
    hist[2, :5] = np.nan
    current = np.array([150.0, 0.0, 49.0, 200.0])
    days = weekdays_before(TUESDAY, 28)
    together = score(hist, current, days, TUESDAY)
    for i in range(len(hist)):
        alone = score(hist[i:i + 1], current[i:i + 1], days, TUESDAY)
        assert alone.severity[0] == together.severity[i]
        np.testing.assert_allclose(alone.z, together.z[i:i + 1])
        np.testing.assert_allclose(alone.baseline, together.baseline[i:i + 1])


def test_invalid_arguments_are_refused():
    days = weekdays_before(MONDAY, 28)
    with pytest.raises(ValueError, match="direction"):
        score(np.zeros((1, 28)), np.zeros(1), days, MONDAY, direction="sideways")
    with pytest.raises(ValueError, match="current must have shape"):
        score(np.zeros((2, 28)), np.zeros(3), days, MONDAY)
    with pytest.raises(ValueError, match="history_weekdays"):
        score(np.zeros((1, 28)), np.zeros(1), days[:-1], MONDAY)
    with pytest.raises(ValueError, match="current_weekday"):
        score(np.zeros((1, 28)), np.zeros(1), days, 7)
    with pytest.raises(ValueError, match="z_low <= z_medium <= z_high"):
        AnomalyConfig(z_low=5.0, z_medium=4.0)


def test_fixed_severity_thresholds_are_inclusive_and_optional():
    values = np.array([0.0, 0.0999, 0.1, 0.2, 0.25, 0.9, np.nan])
    assert list(fixed_severity(values, medium=0.1, high=0.25)) == [0, 0, 2, 2, 3, 3, 0]
    assert list(fixed_severity(values, low=0.05, medium=0.1, high=0.25)) == [0, 1, 2, 2, 3, 3, 0]
    assert list(fixed_severity(values, high=0.25)) == [0, 0, 0, 0, 3, 3, 0]
    assert list(fixed_severity(values)) == [0] * len(values)
    # Equal thresholds are allowed; the higher level wins.
    assert list(fixed_severity(np.array([0.1]), medium=0.1, high=0.1)) == [3]
    with pytest.raises(ValueError, match="must not decrease"):
        fixed_severity(values, medium=0.3, high=0.2)
    with pytest.raises(ValueError, match="must not decrease"):
        fixed_severity(values, low=0.3, high=0.2)


def test_combine_is_the_elementwise_maximum_and_names_follow_the_codes():
    out = combine(np.array([0, 3, 1, 2]), np.array([2, 1, 1, 0]), np.int8(1))
    assert out.dtype == np.int8 and list(out) == [2, 3, 1, 2]
    assert list(severity_name(np.array([0, 1, 2, 3]))) == ["none", "low", "medium", "high"]
    assert severity_name(2) == "medium"
    with pytest.raises(ValueError):
        combine()
