"""Classification models: probability calibration, conformal prediction sets, the logistic fallback, the
metrics and the bundle's round trip, on a real XGBoost classifier trained here on synthetic data whose true
probabilities are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.models.bundle import Calibration, LinearFallback, ModelBundle
from pipelines.models.classification import (
    LogisticFallback,
    PredictionSets,
    ProbabilityCalibration,
    probabilities,
)
from pipelines.training.evaluate import classification_metrics, set_metrics
from pipelines.training.spec import ModelSpec

SPEC = {"name": "churn", "data": {"start": "2013-01-01", "end": "2014-01-01", "validation_days": 60,
                                  "holdout_days": 60}}


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Two features; P(y = 1) = sigmoid(2 x1 - x2): the labels are drawn from known probabilities."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(size=n)})
    truth = 1 / (1 + np.exp(-(2 * frame["x1"] - frame["x2"]).to_numpy()))
    return frame, (rng.random(n) < truth).astype(np.int64), truth


@pytest.fixture(scope="module")
def booster():
    import xgboost

    frame, y, _ = _data(6000, 1)
    return xgboost.train({"objective": "binary:logistic", "max_depth": 3, "eta": 0.1, "seed": 7},
                         xgboost.DMatrix(frame.to_numpy(np.float32), y), 80)


def _margins(booster, frame):
    return booster.inplace_predict(frame.to_numpy(np.float32), predict_type="margin")


@pytest.mark.parametrize("method", ["isotonic", "sigmoid", "none"])
def test_calibrated_probabilities_follow_the_observed_rates(booster, method):
    calib_x, calib_y, _ = _data(4000, 2)
    test_x, test_y, truth = _data(20000, 3)
    calibration = ProbabilityCalibration.fit(_margins(booster, calib_x), calib_y, method)
    proba = calibration.apply(_margins(booster, test_x))
    assert proba.shape == (20000, 2) and np.allclose(proba.sum(axis=1), 1.0)
    metrics = classification_metrics(test_y, proba)
    assert metrics["calibration_error"] < 0.03, metrics
    assert np.mean(np.abs(proba[:, 1] - truth)) < 0.06
    again = ProbabilityCalibration.from_dict(calibration.to_dict()).apply(_margins(booster, test_x))
    assert np.array_equal(again, proba)


def test_isotonic_repairs_a_miscalibrated_model(booster):
    """Margins scaled by 3 are overconfident; the calibration on validation brings the error back down."""
    calib_x, calib_y, _ = _data(4000, 2)
    test_x, test_y, _ = _data(20000, 3)
    raw = probabilities(3 * _margins(booster, test_x))
    fixed = ProbabilityCalibration.fit(3 * _margins(booster, calib_x), calib_y, "isotonic").apply(
        3 * _margins(booster, test_x))
    before, after = classification_metrics(test_y, raw), classification_metrics(test_y, fixed)
    assert before["calibration_error"] > 0.08 and after["calibration_error"] < 0.03, (before, after)
    assert after["log_loss"] < before["log_loss"]


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_prediction_sets_cover_the_true_class_at_their_level(booster, level):
    calib_x, calib_y, _ = _data(3000, 4)
    test_x, test_y, _ = _data(20000, 5)
    sets = PredictionSets.fit(probabilities(_margins(booster, calib_x)), calib_y, [level])
    members = sets.members(probabilities(_margins(booster, test_x)), level)
    covered, size = set_metrics(test_y, members)
    assert level - 0.02 <= covered <= level + 0.04, covered  # conformal: at least the level, not much above
    assert 1.0 <= size < 2.0 and members.any(axis=1).all()  # never empty, not always both classes
    assert PredictionSets.from_dict(sets.to_dict()).thresholds == sets.thresholds


def test_per_segment_sets_use_the_segment_thresholds_and_the_global_ones_elsewhere():
    rng = np.random.default_rng(0)
    proba = np.column_stack([p := rng.random(4000), 1 - p])
    labels = (rng.random(4000) < proba[:, 1]).astype(int)
    segments = np.where(np.arange(4000) < 3500, 1.0, 2.0)  # segment 2 has too few rows for its own
    sets = PredictionSets.fit(proba, labels, [0.9], segments, "bucket", min_segment_rows=1000)
    assert set(sets.segment_thresholds) == {"1"}
    glob = sets.members(proba[:5], 0.9)
    assert np.array_equal(sets.members(proba[:5], 0.9, np.full(5, 2.0)), glob)


def test_metrics_of_known_predictions():
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    m = classification_metrics(y, proba)
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["positive_rate"] == 0.5
    assert m["brier"] == pytest.approx(np.mean([0.01, 0.16, 0.09, 0.04]))
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.7, 0.8])))
    assert np.isnan(classification_metrics(np.array([1, 1]), proba[2:])["auc"])  # one class: no AUC


def test_the_logistic_fallback_learns_the_direction_of_each_feature():
    frame, y, truth = _data(8000, 6)
    fallback = LogisticFallback.fit(frame, ["x1", "x2"], y, 2)
    assert fallback.coefficients["x1"][0] > 1.5 and fallback.coefficients["x2"][0] < -0.5
    proba = probabilities(fallback.margins(frame.to_numpy(), ["x1", "x2"]))
    assert np.mean(np.abs(proba[:, 1] - truth)) < 0.05
    prior = LogisticFallback.fit(frame, [], y, 2)
    assert probabilities(prior.margins(frame.to_numpy()[:3], ["x1", "x2"]))[:, 1] == pytest.approx([y.mean()] * 3)


def test_a_classifier_bundle_round_trips_and_refuses_regression_calls(booster, tmp_path):
    calib_x, calib_y, _ = _data(3000, 7)
    probability = ProbabilityCalibration.fit(_margins(booster, calib_x), calib_y, "isotonic")
    sets = PredictionSets.fit(probabilities(_margins(booster, calib_x)), calib_y, [0.8, 0.9])
    bundle = ModelBundle("churn", "churn", "churned", ["x1", "x2"], {}, sets, {"x1": (-3, 3), "x2": (-3, 3)},
                         LogisticFallback.fit(calib_x, ["x1"], calib_y, 2), "hash", task="binary",
                         classes=["stays", "churns"], probability=probability)
    bundle.save(tmp_path / "bundle", booster=booster)
    loaded = ModelBundle.load(tmp_path / "bundle", version="3")
    matrix = loaded.matrix(calib_x.head(50))
    assert loaded.task == "binary" and loaded.classes == ["stays", "churns"]
    assert np.array_equal(loaded.predict_proba(matrix), bundle.predict_proba(matrix))
    assert np.array_equal(loaded.predict_proba(margins=loaded.margins(matrix)), loaded.predict_proba(matrix))
    assert set(loaded.prediction_sets(loaded.margins(matrix))) == {"0.8", "0.9"}
    assert isinstance(loaded.fallback, LogisticFallback)
    with pytest.raises(ValueError, match="binary classifier: use predict_proba"):
        loaded.predict(matrix)
    with pytest.raises(ValueError, match="use prediction_sets"):
        loaded.intervals(np.zeros(3))


def test_a_regression_bundle_is_unchanged(tmp_path, booster):
    bundle = ModelBundle("eta", "eta", "delay", ["x1", "x2"], {}, Calibration((0.9,), {"0.9": (-1.0, 1.0)}), {},
                         LinearFallback(0.0, {}), "hash")
    bundle.save(tmp_path / "b", booster=booster)
    loaded = ModelBundle.load(tmp_path / "b")
    assert loaded.task == "regression" and loaded.probability is None and isinstance(loaded.calibration, Calibration)
    with pytest.raises(ValueError, match="not a classifier"):
        loaded.predict_proba(np.zeros((1, 2), np.float32))


@pytest.mark.parametrize(("extra", "message"), [
    ({"objective": "binary:logistic", "offset_feature": "x1"}, "offset_feature: regression only"),
    ({"objective": "multi:softprob"}, "needs the names of its 3 or more classes"),
    ({"objective": "binary:logistic", "classes": ["a", "b", "c"]}, "a binary objective has 2 classes"),
    ({"classes": ["a", "b"]}, "classes: only for classification objectives"),
    ({"objective": "binary:logistic", "calibration": {"probability": "temperature"}}, "'temperature' is for multi"),
    ({"objective": "multi:softprob", "classes": ["a", "b", "c"], "calibration": {"probability": "isotonic"}},
     "'isotonic' is for binary"),
    ({"objective": "binary:logistic", "evaluation": {"baselines": {"prior": "x1"}}}, "a built-in baseline"),
])
def test_spec_errors_of_classification_objectives(extra, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate({**SPEC, **extra})


def test_a_binary_spec_defaults_to_isotonic_and_two_classes():
    spec = ModelSpec.model_validate({**SPEC, "objective": "binary:logistic"})
    assert (spec.task, spec.class_names, spec.probability_method) == ("binary", ["0", "1"], "isotonic")
    multi = ModelSpec.model_validate({**SPEC, "objective": "multi:softprob", "classes": ["a", "b", "c"]})
    assert (multi.task, multi.probability_method) == ("multiclass", "temperature")


def test_temperature_scaling_fixes_overconfident_multiclass_margins():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(6000, 3)) * 1.5
    labels = np.array([rng.choice(3, p=p) for p in probabilities(logits)])
    calibration = ProbabilityCalibration.fit(3 * logits[:3000], labels[:3000], "temperature")
    assert calibration.temperature == pytest.approx(3.0, rel=0.15)
    fixed = classification_metrics(labels[3000:], calibration.apply(3 * logits[3000:]))
    raw = classification_metrics(labels[3000:], probabilities(3 * logits[3000:]))
    assert fixed["log_loss"] < raw["log_loss"] and fixed["calibration_error"] < 0.03


def test_training_evaluates_a_binary_model_end_to_end(tmp_path):
    """train_single -> the classification evaluation of the training run (probabilities and sets calibrated on
    validation, the prior baseline, a rule baseline) -> the report."""
    from pipelines.training.pipeline import _evaluate_classification
    from pipelines.training.preflight import metric_names
    from pipelines.training.report import write_report
    from pipelines.training.trainer import train_single

    frame, y, _ = _data(9000, 9)
    frame = frame.assign(label=y, rule=(frame["x1"] > 0).astype(float), segment=(frame["x2"] > 0).astype(float),
                         event_time=pd.date_range("2013-01-01", periods=9000, freq="h", tz="UTC"))
    train, valid, holdout = frame.iloc[:6000], frame.iloc[6000:7500], frame.iloc[7500:]
    spec = ModelSpec.model_validate({**SPEC, "objective": "binary:logistic", "classes": ["no", "yes"],
                                     "hyperparameters": {"n_estimators": 200, "max_depth": 3,
                                                         "early_stopping_rounds": 20},
                                     "calibration": {"levels": [0.8, 0.9]}, "fallback_features": ["x1"],
                                     "evaluation": {"baselines": {"rule": "rule"}, "segments": {"seg": "segment"}}})
    model = train_single(spec, dict(spec.hyperparameters), train, valid, ["x1", "x2", "rule"], "label")
    evaluation = _evaluate_classification(spec, model, train, valid, holdout, ["x1", "x2", "rule"], "label",
                                          "event_time")
    m = evaluation.metrics
    assert m["auc"] > 0.8 and m["auc"] > m["baseline_rule_auc"] > m["baseline_prior_auc"] - 1e-9
    assert m["log_loss"] < m["baseline_prior_log_loss"] and m["log_loss"] < m["baseline_rule_log_loss"]
    assert 0.77 <= m["coverage_80"] <= 0.86 and 0.87 <= m["coverage_90"] <= 0.95, m
    assert set(m) <= metric_names(spec), set(m) - metric_names(spec)
    assert evaluation.probability.rows == 1500 and evaluation.calibration.rows == 1500
    assert evaluation.baselines == ["prior", "rule"] and isinstance(evaluation.fallback, LogisticFallback)
    from pipelines.training.evaluate import segment_metrics

    segments = segment_metrics(holdout, spec.evaluation.segments, "label", evaluation.predictors,
                               metrics=classification_metrics)
    report = write_report(tmp_path / "report.html", usecase="churn", model_name="churn", run_id="r1",
                          metrics={**m, "rows_holdout": 1500.0}, champion=None, segments=segments,
                          actual=holdout["label"].to_numpy(np.float64), predicted=evaluation.predicted, intervals={},
                          importance=model.booster.get_score(importance_type="gain"), history=model.history,
                          lineage={}, baselines=evaluation.baselines, task="binary", classes=["no", "yes"],
                          sets=evaluation.sets)
    text = report.read_text()
    assert "Prediction sets" in text and "baseline: prior" in text and text.count("<img") >= 4
    assert "log_loss by seg" not in text or "chart" in text


def test_labels_outside_the_classes_are_refused_by_name():
    from pipelines.training.trainer import check_labels

    spec = ModelSpec.model_validate({**SPEC, "objective": "binary:logistic"})
    check_labels(spec, np.array([0, 1, 1]), "label 'y'")
    with pytest.raises(ValueError, match=r"label 'y': a binary objective needs label values in \[0, 1\].*\[2\]"):
        check_labels(spec, np.array([0, 1, 2]), "label 'y'")
    with pytest.raises(ValueError, match="missing labels"):
        check_labels(spec, np.array([0.0, np.nan]), "label 'y'")


def test_batch_scoring_writes_a_classifier_s_probabilities_class_and_sets(booster, tmp_path):
    """The batch job's per-batch scoring (``predict_frame``, run in each Spark worker) on a classifier: the
    columns ``output_columns`` declares, equal to the bundle's own probabilities and sets."""
    from pipelines.batch.predict import output_columns, predict_frame

    calib_x, calib_y, _ = _data(3000, 10)
    probability = ProbabilityCalibration.fit(_margins(booster, calib_x), calib_y, "isotonic")
    sets = PredictionSets.fit(probabilities(_margins(booster, calib_x)), calib_y, [0.8, 0.9])
    bundle = ModelBundle("churn", "churn", "churned", ["x1", "x2"], {}, sets, {}, LogisticFallback((0.0,), {}),
                         "hash", task="binary", classes=["stays", "churns"], probability=probability)
    bundle.save(tmp_path / "bundle", booster=booster)
    rows, _, _ = _data(500, 11)
    out = predict_frame(rows[["x2", "x1"]], bundle)  # columns in any order
    assert [c for c, _ in output_columns(bundle)] == list(out.columns) == [
        "prediction", "predicted_class", "probability_stays", "probability_churns", "set_80", "set_90"]
    proba = bundle.predict_proba(bundle.matrix(rows))
    assert np.allclose(out["prediction"], proba[:, 1]) and np.allclose(out["probability_stays"], proba[:, 0])
    assert (out["predicted_class"] == np.where(proba[:, 1] > proba[:, 0], "churns", "stays")).all()
    assert set(out["set_90"]) <= {"stays", "churns", "stays|churns"} and (out["set_90"] == "stays|churns").any()
    assert all(c in s.split("|") for c, s in zip(out["predicted_class"], out["set_80"], strict=True))


def test_the_answered_class_is_in_every_prediction_set(booster, tmp_path):
    """Calibration can move the most probable class away from the raw scores' (the sets' scores): the class
    an answer gives is in each of its sets all the same."""
    calib_x, calib_y, _ = _data(3000, 10)
    margins = _margins(booster, calib_x)
    # Rows the raw model calls 'stays' but that mostly churn: calibrated, they become 'churns'.
    probability = ProbabilityCalibration.fit(margins, (margins > -2.0).astype(int), "isotonic")
    sets = PredictionSets.fit(probabilities(margins), calib_y, [0.8])
    bundle = ModelBundle("churn", "churn", "churned", ["x1", "x2"], {}, sets, {}, LogisticFallback((0.0,), {}),
                         "hash", task="binary", classes=["stays", "churns"], probability=probability)
    bundle.save(tmp_path / "bundle", booster=booster)
    rows, _, _ = _data(500, 11)
    m = bundle.margins(bundle.matrix(rows))
    answered = bundle.predict_proba(margins=m).argmax(axis=1)
    assert (answered != probabilities(m).argmax(axis=1)).sum() > 10  # the case arises
    members = bundle.prediction_sets(m)["0.8"]
    assert members[np.arange(len(rows)), answered].all()


def test_class_names_that_cannot_name_a_column_are_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="are not names of letters, digits and _"):
        ModelSpec.model_validate({**SPEC, "objective": "binary:logistic", "classes": ["on time", "late"]})


def test_isotonic_probabilities_stay_off_zero_and_one():
    """Validation rows whose lowest scores are all negatives (and highest all positives) give pure end steps;
    the map holds them at the Laplace estimate of their rows, so one later miss costs a bounded log loss."""
    rng = np.random.default_rng(3)
    margins = rng.normal(0, 2, 2000)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-margins))).astype(int)
    labels[margins < -3.0], labels[margins > 3.0] = 0, 1  # pure ends
    calibration = ProbabilityCalibration.fit(margins, labels, "isotonic")
    p = calibration.apply(np.array([-9.0, 0.0, 9.0]))[:, 1]
    # The pure end steps hold well over 100 rows each: 1 / (n + 2) below 1%, never 0.
    assert 0 < p[0] < 0.01 and 0.99 < p[2] < 1
    assert 1 / p[0] == pytest.approx(round(1 / p[0])) and 1 / (1 - p[2]) == pytest.approx(round(1 / (1 - p[2])))
    assert np.all(np.diff(calibration.apply(np.linspace(-9, 9, 200))[:, 1]) >= 0)  # still monotone
