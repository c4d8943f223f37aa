"""Model spec validation, overrides from Airflow params, calibration and metrics (no services needed)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.config import load_settings
from pipelines.featurestore.spec import load_feature_set
from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle
from pipelines.training.evaluate import coverage, error_metrics, segment_metrics
from pipelines.training.preflight import metric_names, overrides_from_params, promotion_rules
from pipelines.training.spec import load_model_spec
from pipelines.training.trainer import sample_trials
from pipelines.usecases import SpecError, get_usecase


@pytest.fixture(scope="module")
def flights():
    settings = load_settings("test")
    usecase = get_usecase("flights_eta", settings.usecases_path)
    return usecase, load_feature_set(usecase)


def spec_of(flights, overrides=None):
    usecase, features = flights
    return load_model_spec(usecase, overrides, features.feature_names, features.key_columns)


def test_flights_spec_loads_with_a_time_split(flights):
    spec = spec_of(flights)
    w = spec.window
    assert (w.start.isoformat(), w.validation_start.isoformat(), w.holdout_start.isoformat(), w.end.isoformat()) == (
        "2013-01-01T00:00:00+00:00", "2013-10-15T00:00:00+00:00", "2013-12-01T00:00:00+00:00",
        "2014-01-01T00:00:00+00:00")
    assert spec.algorithm == "xgboost" and spec.hyperparameters["max_depth"] == 8


@pytest.mark.parametrize("overrides, message", [
    ({"algorithm": "lightgbm"}, "algorithm: Input should be 'xgboost' or 'xgboost_spark'"),
    ({"hyperparameters": {"max_depth": 99}}, "hyperparameters.max_depth: 99 is outside [1, 16]"),
    ({"hyperparameters": {"max_depth": 4.5}}, "hyperparameters.max_depth: expected an integer"),
    ({"hyperparameters": {"learning_rate": "fast"}}, "hyperparameters.learning_rate: expected a number"),
    ({"hyperparameters": {"n_trees": 5}}, "hyperparameters.n_trees: unknown hyperparameter"),
    ({"data": {"start": "2013-06-01", "end": "2013-06-01"}}, "empty window"),
    ({"data": {"start": "2013-06-01", "end": "2013-07-01"}}, "leave no training days"),
    ({"calibration": {"levels": [0.8, 1.5]}}, "interval level 1.5 is not in (0, 1)"),
    ({"calibration": {"segment_by": "no_such_feature"}}, "calibration.segment_by: 'no_such_feature' is not a feature"),
    ({"evaluation": {"baselines": {"x": "nope"}}}, "evaluation.baselines: 'nope' is not a feature"),
    ({"evaluation": {"segments": {"x": "nope"}}}, "evaluation.segments.x: 'nope' is neither a feature"),
    ({"search": {"trials": 3, "space": {"max_depth": [10, 4]}}}, "low 10.0 > high 4.0"),
    ({"colour": "red"}, "colour: unknown key (not allowed)"),
])
def test_bad_training_config_names_the_key(flights, overrides, message):
    with pytest.raises(SpecError) as err:
        spec_of(flights, overrides)
    assert message in str(err.value)
    assert "model.yaml" in str(err.value)


def test_overrides_from_airflow_params():
    assert overrides_from_params({"usecase": "u", "start": None, "end": "", "hyperparameters": {},
                                  "algorithm": None, "trials": None}) == {}
    assert overrides_from_params({"start": "2013-03-01", "end": "2013-09-01", "hyperparameters": '{"max_depth": 4}',
                                  "algorithm": "xgboost_spark", "trials": 3}) == {
        "data": {"start": "2013-03-01", "end": "2013-09-01"}, "hyperparameters": {"max_depth": 4},
        "algorithm": "xgboost_spark", "search": {"trials": 3}}
    with pytest.raises(SpecError, match="not a JSON object"):
        overrides_from_params({"hyperparameters": "{max_depth: 4"})


def test_flights_rules_parse_against_the_metrics_training_logs(flights):
    usecase, _ = flights
    spec = spec_of(flights)
    names = metric_names(spec)
    assert {"mae", "coverage_80", "coverage_90", "baseline_departure_delay_mae", "baseline_route_mean_mae"} <= names
    rules = promotion_rules(usecase, spec)
    assert [r.target_stage for r in rules] == ["staging", "production"]


def test_search_trials_are_seeded_and_within_the_space(flights):
    spec = spec_of(flights, {"search": {"trials": 5}})
    trials = sample_trials(spec)
    assert trials == sample_trials(spec) and len(trials) == 5
    for t in trials:
        assert 4 <= t["max_depth"] <= 10 and 0.03 <= t["learning_rate"] <= 0.3 and 1 <= t["min_child_weight"] <= 50
    assert len({t["max_depth"] for t in trials}) > 1


def test_conformal_intervals_cover_what_they_claim_on_exchangeable_data():
    rng = np.random.default_rng(1)
    scale = np.where(rng.random(40000) < 0.5, 1.0, 5.0)  # two segments with different spreads
    residuals = rng.normal(size=40000) * scale
    segments = (scale > 1).astype(float)
    cal = Calibration.fit(residuals[:20000], [0.8, 0.9], segments[:20000], "seg", 100)
    assert set(cal.segment_offsets) == {"0", "1"}
    zeros = np.zeros(20000)
    for level in (0.8, 0.9):
        lo, hi = cal.interval(zeros, level, segments[20000:])
        assert abs(coverage(residuals[20000:], lo, hi) - level) < 0.015
        # Per segment too (a global interval would over-cover one and under-cover the other).
        for s in (0.0, 1.0):
            m = segments[20000:] == s
            assert abs(coverage(residuals[20000:][m], lo[m], hi[m]) - level) < 0.025


def test_small_segments_fall_back_to_the_global_offsets():
    cal = Calibration.fit(np.arange(1000.0), [0.8], np.r_[np.zeros(990), np.ones(10)], "seg", 300)
    assert set(cal.segment_offsets) == {"0"}
    lo, hi = cal.interval(np.zeros(1), 0.8, np.array([1.0]))
    assert (lo[0], hi[0]) == cal.offsets["0.8"]


def test_error_metrics_and_segments():
    m = error_metrics(np.array([0.0, 0.0, 0.0, 0.0]), np.array([1.0, -1.0, 3.0, -3.0]))
    assert m["mae"] == 2.0 and m["rmse"] == pytest.approx(np.sqrt(5)) and m["median_ae"] == 2.0 and m["bias"] == 0
    frame = {"y": np.zeros(100), "seg": np.r_[np.zeros(60), np.ones(40)]}
    rows = segment_metrics(frame, {"s": "seg"}, "y", {"model": np.ones(100)}, min_rows=50)
    assert [(r["value"], r["rows"]) for r in rows] == [("0.0", 60.0)]
    with pytest.raises(ValueError, match="empty"):
        error_metrics(np.array([]), np.array([]))


def test_bundle_round_trip(tmp_path):
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32)
    y = x[:, 0] * 2 + rng.normal(size=500)
    booster = xgboost.train({"tree_method": "hist"}, xgboost.DMatrix(x, y), 10)
    cal = Calibration.fit(y - booster.inplace_predict(x), [0.8, 0.9])
    bundle = ModelBundle("u", "m", "y", ["a", "b", "c"], {"a": 0.0, "b": 0.0, "c": 0.0}, cal,
                         {"a": (-3.0, 3.0)}, LinearFallback.fit({"a": x[:, 0]}, ["a"], y), "h" * 16)
    bundle.save(tmp_path / "b", booster=booster)
    loaded = ModelBundle.load(tmp_path / "b", version="7")
    assert loaded.version == "7" and loaded.feature_names == ["a", "b", "c"]
    np.testing.assert_array_equal(loaded.predict(x), booster.inplace_predict(x).astype(np.float64))
    assert loaded.out_of_range({"a": 5.0}) == ["a"] and loaded.out_of_range({"a": 0.0}) == []
    assert loaded.fallback.coefficients["a"] == pytest.approx(2.0, abs=0.2)


def test_offset_feature_is_added_to_the_raw_sum_of_trees(tmp_path):
    """Trained with the offset as base margin and base_score 0: raw output + offset == margin prediction."""
    import xgboost

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2)).astype(np.float32)
    x[:, 1] *= 100  # the offset feature, far outside anything the trees could reproduce
    y = x[:, 1] + 3 * x[:, 0] + rng.normal(size=2000)
    booster = xgboost.train({"tree_method": "hist", "base_score": 0.0},
                            xgboost.DMatrix(x, y, base_margin=x[:, 1]), 30)
    bundle = ModelBundle("u", "m", "y", ["a", "off"], {"a": 0.0, "off": 0.0}, Calibration.fit(np.ones(10), [0.8]),
                         {}, LinearFallback(0.0, {}), "h" * 16, offset_feature="off")
    bundle.save(tmp_path / "b", booster=booster)
    loaded = ModelBundle.load(tmp_path / "b")
    with_margin = booster.inplace_predict(x, base_margin=x[:, 1])
    np.testing.assert_allclose(loaded.predict(x), with_margin, rtol=1e-6, atol=1e-4)
    assert np.mean(np.abs(loaded.predict(x) - y)) < 2.0  # extrapolates with the offset; trees alone could not
