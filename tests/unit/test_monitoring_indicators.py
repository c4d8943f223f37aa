"""Daily indicators from profile rows (pipelines/monitoring/indicators.py), on small hand-built profiles.

Profile rows are built from raw samples the way the Spark profiles summarise them (counts, sums, extremes,
the inverted-CDF quantile grid at drift_stats.RANKS, category counts), so each expected value is computed
here from the sample itself, or from the distributions' closed forms with tolerances derived from the grid's
rank step and the sample sizes.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.monitoring import drift_stats
from pipelines.monitoring.indicators import DRIFT_STATISTICS, INDEX, QUANTILE_STATS, compute_indicators

MIN_ROWS = 30
REF_STATS = {"psi_ref_1d", "ks_ref_1d", "wasserstein_ref_1d", "psi_ref_7d", "ks_ref_7d", "wasserstein_ref_7d",
             "js_ref_1d", "js_ref_7d", "unseen_share"}


def numeric(values, *, nulls: int = 0, column: str = "x", segment: str = "all", segment_value: str = "all",
            source: str = "served") -> dict:
    v = np.asarray(values, dtype=float)
    return {"source": source, "segment": segment, "segment_value": segment_value, "column": column,
            "kind": "numeric", "rows": len(v) + nulls, "nulls": nulls, "n": len(v), "sum": v.sum(),
            "sum_sq": (v * v).sum(), "min": v.min() if len(v) else np.nan, "max": v.max() if len(v) else np.nan,
            "freqs": None, "quantiles": drift_stats.quantiles_from_sample(v) if len(v) else None,
            "distinct": len(np.unique(v))}


def categorical(counts, *, nulls: int = 0, column: str = "c", segment: str = "all", segment_value: str = "all",
                source: str = "served") -> dict:
    total = sum(c for _, c in (counts.items() if isinstance(counts, dict) else counts))
    return {"source": source, "segment": segment, "segment_value": segment_value, "column": column,
            "kind": "categorical", "rows": total + nulls, "nulls": nulls, "n": total, "sum": np.nan,
            "sum_sq": np.nan, "min": np.nan, "max": np.nan, "freqs": counts, "quantiles": None,
            "distinct": len(counts)}


def frame(*rows: dict) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def run(day, week=None, previous=None, reference=None, min_rows=MIN_ROWS) -> pd.DataFrame:
    as_frame = [x if x is None or isinstance(x, pd.DataFrame) else frame(*x) for x in (day, week, previous,
                                                                                        reference)]
    return compute_indicators(*as_frame, min_rows=min_rows)


def stats(out: pd.DataFrame, column: str | None = None, segment_value: str | None = None) -> dict[str, float]:
    sel = out
    if column is not None:
        sel = sel[sel["column"] == column]
    if segment_value is not None:
        sel = sel[sel["segment_value"] == segment_value]
    assert not sel.duplicated("statistic").any()
    return dict(zip(sel["statistic"], sel["value"], strict=True))


def phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20240601)
    return {"ref": rng.normal(0.0, 1.0, 4000), "same": rng.normal(0.0, 1.0, 2000),
            "shifted": rng.normal(1.0, 1.0, 2000)}


def test_the_output_is_long_rows_keyed_like_the_profiles(samples):
    out = run([numeric(samples["same"]), categorical({"a": 40, "b": 10})])
    assert list(out.columns) == [*INDEX, "statistic", "value", "n_rows"]
    assert not out.duplicated([*INDEX, "statistic"]).any()
    assert out["value"].notna().all()


def test_null_rate_is_nulls_over_rows(samples):
    out = run([numeric(samples["same"][:90], nulls=10), categorical({"a": 60, "b": 15}, nulls=25)])
    x, c = stats(out, "x"), stats(out, "c")
    assert x["rows"] == 100 and x["null_rate"] == pytest.approx(0.1)
    assert c["rows"] == 100 and c["null_rate"] == pytest.approx(0.25)
    assert set(out["n_rows"][out["statistic"] == "null_rate"]) == {100}


def test_moments_extremes_and_quantiles_come_from_the_profile(samples):
    v = samples["same"][:500] * 3.0 + 10.0
    x = stats(run([numeric(v, nulls=7)]), "x")
    assert x["mean"] == pytest.approx(v.mean(), rel=1e-9)
    assert x["std"] == pytest.approx(v.std(ddof=1), rel=1e-9)  # the sample standard deviation
    assert (x["min"], x["max"]) == (v.min(), v.max())
    for name, rank in QUANTILE_STATS.items():
        assert x[name] == pytest.approx(np.quantile(v, rank, method="inverted_cdf")), name
    assert x["distinct"] == len(np.unique(v))


def test_below_min_rows_only_rows_and_null_rate(samples):
    # 29 values (and 20 nulls: 49 rows >= min_rows; the gate is on the values), everything else on hand.
    small = numeric(samples["same"][:MIN_ROWS - 1], nulls=20)
    small_week = numeric(samples["same"][:MIN_ROWS - 1], nulls=200)
    out = run([small], week=[small_week], previous=[numeric(samples["same"])],
              reference=[numeric(samples["ref"])])
    assert set(stats(out, "x")) == {"rows", "null_rate"}
    # A week with enough values still gets its own (7d) distances, judged on the week: nothing of the day's.
    out = run([small], week=[numeric(samples["same"])], previous=[numeric(samples["same"])],
              reference=[numeric(samples["ref"])])
    assert set(stats(out, "x")) == {"rows", "null_rate", "psi_ref_7d", "ks_ref_7d", "wasserstein_ref_7d"}
    # At min_rows values the column gets its moments, quantiles and drift statistics.
    enough = numeric(samples["same"][:MIN_ROWS], nulls=20)
    out = run([enough], week=[numeric(samples["same"])], previous=[numeric(samples["same"])],
              reference=[numeric(samples["ref"])])
    got = set(stats(out, "x"))
    assert {"mean", "std", "min", "max", "distinct", *QUANTILE_STATS} <= got
    assert {"psi_ref_1d", "ks_ref_1d", "wasserstein_ref_1d", "psi_trail", "psi_ref_7d"} <= got


def test_an_identical_distribution_has_zero_drift(samples):
    x = stats(run([numeric(samples["ref"])], reference=[numeric(samples["ref"])]), "x")
    for name in ("psi_ref_1d", "ks_ref_1d", "wasserstein_ref_1d"):
        assert x[name] == pytest.approx(0.0, abs=1e-12), name


def test_a_shifted_distribution_drifts_and_a_fresh_sample_of_the_same_one_does_not(samples):
    ref = [numeric(samples["ref"])]
    same = stats(run([numeric(samples["same"])], reference=ref), "x")
    shifted = stats(run([numeric(samples["shifted"])], reference=ref), "x")
    # Same distribution, n = 2000 vs 4000: KS within 1.95 * sqrt(1/2000 + 1/4000) ~ 0.053 (p = 0.001) plus
    # two rank steps of the grids; PSI's expectation is ~ (bins - 1) * (1/n + 1/m) ~ 0.007.
    assert same["ks_ref_1d"] < 0.053 + 2 * drift_stats.RANK_STEP
    assert same["psi_ref_1d"] < 0.05
    assert same["wasserstein_ref_1d"] < 0.1
    # N(1, 1) against N(0, 1): KS = 2 * Phi(0.5) - 1 ~ 0.383; W1 = 1 (one reference sd); PSI over the
    # reference deciles from the closed form.
    ks_true = 2 * phi(0.5) - 1
    assert shifted["ks_ref_1d"] == pytest.approx(ks_true, abs=0.053 + 2 * drift_stats.RANK_STEP)
    assert shifted["wasserstein_ref_1d"] == pytest.approx(1.0, abs=0.1)
    edges = [-math.inf, *[_normal_quantile(k / 10) for k in range(1, 10)], math.inf]
    cur = [phi(b - 1.0) - phi(a - 1.0) for a, b in zip(edges, edges[1:], strict=False)]
    psi_true = sum((c - 0.1) * math.log(c / 0.1) for c in cur)
    assert shifted["psi_ref_1d"] == pytest.approx(psi_true, rel=0.2)
    for name in ("psi_ref_1d", "ks_ref_1d", "wasserstein_ref_1d"):
        assert shifted[name] > 5 * same[name], name


def _normal_quantile(p: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if phi(mid) < p else (lo, mid)
    return (lo + hi) / 2


def test_the_week_is_compared_with_the_reference_and_the_day_with_the_previous_window(samples):
    day = [numeric(samples["ref"])]
    week = [numeric(samples["shifted"], nulls=100)]
    previous = [numeric(samples["shifted"])]
    out = run(day, week=week, previous=previous, reference=[numeric(samples["ref"])])
    x = stats(out, "x")
    assert x["ks_ref_1d"] == pytest.approx(0.0, abs=1e-12)
    expected_7d = drift_stats.ks(drift_stats.quantiles_from_sample(samples["ref"]),
                                 drift_stats.quantiles_from_sample(samples["shifted"]))[0]
    assert x["ks_ref_7d"] == pytest.approx(expected_7d)
    assert x["ks_trail"] == pytest.approx(expected_7d)  # day (= ref) against previous (= shifted)
    assert x["ks_ref_7d"] > 0.3
    # The 7d figures are judged on the week's rows, the others on the day's.
    n_rows = out.set_index("statistic")["n_rows"]
    for name in ("psi_ref_7d", "ks_ref_7d", "wasserstein_ref_7d"):
        assert n_rows[name] == len(samples["shifted"]) + 100, name
    for name in ("psi_ref_1d", "ks_trail", "mean"):
        assert n_rows[name] == len(samples["ref"]), name


def test_a_week_with_too_few_values_has_no_7d_statistics(samples):
    out = run([numeric(samples["same"])], week=[numeric(samples["same"][:MIN_ROWS - 1], nulls=500)],
              reference=[numeric(samples["ref"])])
    got = set(stats(out, "x"))
    assert "ks_ref_1d" in got
    assert not {"psi_ref_7d", "ks_ref_7d", "wasserstein_ref_7d"} & got


def test_reference_rows_are_matched_by_key_not_by_position(samples):
    rng = np.random.default_rng(11)
    day = [numeric(samples["same"], segment="origin", segment_value="JFK"),
           numeric(samples["shifted"], segment="origin", segment_value="LGA"),
           numeric(rng.normal(0, 1, 100), segment="origin", segment_value="EWR")]
    # The reference in another order, with an extra key the day lacks and without EWR.
    reference = [numeric(samples["shifted"], segment="origin", segment_value="LGA"),
                 numeric(samples["ref"], segment="origin", segment_value="SFO"),
                 numeric(samples["ref"], segment="origin", segment_value="JFK")]
    out = run(day, reference=reference)
    ref_q = drift_stats.quantiles_from_sample(samples["ref"])
    assert stats(out, segment_value="JFK")["ks_ref_1d"] == pytest.approx(
        drift_stats.ks(ref_q, drift_stats.quantiles_from_sample(samples["same"]))[0])
    assert stats(out, segment_value="LGA")["ks_ref_1d"] == pytest.approx(0.0, abs=1e-12)
    assert not REF_STATS & set(stats(out, segment_value="EWR"))
    assert "SFO" not in set(out["segment_value"])


def js_distance(p: dict[str, float], q: dict[str, float]) -> float:
    """Jensen-Shannon distance (base 2) from its definition."""
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0.0) for k in keys]) / sum(p.values())
    b = np.array([q.get(k, 0.0) for k in keys]) / sum(q.values())
    m = (a + b) / 2

    def kl(x):
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return math.sqrt((kl(a) + kl(b)) / 2)


def test_categorical_unseen_and_top_share_and_js():
    ref = {"JFK": 500, "LGA": 300, "EWR": 200}
    day = {"JFK": 40, "LGA": 30, "SFO": 20, "BOS": 10}
    c = stats(run([categorical(day)], reference=[categorical(ref)]), "c")
    assert c["unseen_share"] == pytest.approx(0.3)  # SFO + BOS: 30 of 100
    assert c["top_share"] == pytest.approx(0.4)
    assert c["distinct"] == 4
    assert c["js_ref_1d"] == pytest.approx(js_distance(ref, day))
    assert 0 < c["js_ref_1d"] <= 1


def test_identical_or_proportional_category_frequencies_have_zero_js_and_nothing_unseen():
    ref = {"JFK": 500, "LGA": 300, "EWR": 200}
    for day in (ref, {"JFK": 50, "LGA": 30, "EWR": 20}):
        c = stats(run([categorical(day)], reference=[categorical(ref)]), "c")
        assert c["js_ref_1d"] == pytest.approx(0.0, abs=1e-7)
        assert c["unseen_share"] == 0.0
    # A category the day lacks is no unseen value, but it is a drift.
    c = stats(run([categorical({"JFK": 50, "LGA": 50})], reference=[categorical(ref)]), "c")
    assert c["unseen_share"] == 0.0 and c["js_ref_1d"] > 0.1


def test_freqs_may_be_value_count_pairs():
    ref = {"JFK": 500, "LGA": 300, "EWR": 200}
    day = {"JFK": 40, "LGA": 30, "SFO": 30}
    as_dict = stats(run([categorical(day)], reference=[categorical(ref)]), "c")
    as_pairs = stats(run([categorical(list(day.items()))], reference=[categorical(list(ref.items()))]), "c")
    assert as_pairs == pytest.approx(as_dict)


def test_a_small_categorical_day_has_no_js():
    ref = {"JFK": 500, "LGA": 500}
    c = stats(run([categorical({"JFK": 20, "SFO": 9})], previous=[categorical(ref)],
                  reference=[categorical(ref)]), "c")
    assert not {"js_ref_1d", "js_trail"} & set(c)
    assert c["rows"] == 29


def test_categorical_week_and_previous_windows(samples):
    ref = {"JFK": 500, "LGA": 500}
    week = {"JFK": 300, "LGA": 50}
    previous = {"JFK": 100, "LGA": 300}
    c = stats(run([categorical(ref)], week=[categorical(week)], previous=[categorical(previous)],
                  reference=[categorical(ref)]), "c")
    assert c["js_ref_1d"] == pytest.approx(0.0, abs=1e-7)
    assert c["js_ref_7d"] == pytest.approx(js_distance(ref, week))
    assert c["js_trail"] == pytest.approx(js_distance(previous, ref))


@pytest.mark.parametrize("reference", [None, "empty"])
def test_without_a_reference_no_reference_statistics_but_trail_ones(samples, reference):
    ref_frame = None if reference is None else pd.DataFrame(columns=list(numeric(samples["ref"])))
    day = frame(numeric(samples["same"]), categorical({"JFK": 60, "LGA": 40}))
    previous = frame(numeric(samples["shifted"]), categorical({"JFK": 20, "LGA": 80}))
    week = frame(numeric(samples["same"]), categorical({"JFK": 300, "LGA": 200}))
    out = compute_indicators(day, week, previous, ref_frame, min_rows=MIN_ROWS)
    got = set(out["statistic"])
    assert not REF_STATS & got
    assert {"psi_trail", "ks_trail", "wasserstein_trail", "js_trail"} <= got
    assert {"rows", "null_rate", "mean", "std", "top_share"} <= got
    assert stats(out, "x")["ks_trail"] > 0.3


def test_without_previous_or_week_no_trail_or_7d_statistics(samples):
    out = run([numeric(samples["same"]), categorical({"JFK": 60, "LGA": 40})],
              reference=[numeric(samples["ref"]), categorical({"JFK": 50, "LGA": 50})])
    got = set(out["statistic"])
    assert {"psi_ref_1d", "js_ref_1d"} <= got
    assert not {s for s in DRIFT_STATISTICS if s.endswith(("_trail", "_7d"))} & got


def test_the_categorical_7d_distance_is_judged_on_the_weeks_rows():
    ref = {"JFK": 500, "LGA": 500}
    out = run([categorical({"JFK": 30, "LGA": 20})], week=[categorical({"JFK": 200, "LGA": 150})],
              reference=[categorical(ref)])
    n_rows = out.set_index("statistic")["n_rows"]
    assert n_rows["js_ref_1d"] == 50
    assert n_rows["js_ref_7d"] == 350


def test_a_null_is_not_an_unseen_category():
    """Nulls are judged by the null rate; a null-only change leaves the unseen share at 0."""
    out = run([categorical({"JFK": 80, "LGA": 10, "(null)": 10}, nulls=10)],
              reference=[categorical({"JFK": 50, "LGA": 50})])
    got = stats(out)
    assert got["unseen_share"] == 0.0 and got["null_rate"] > 0
    out = run([categorical({"JFK": 80, "EWR": 10, "(null)": 10}, nulls=10)],
              reference=[categorical({"JFK": 50, "LGA": 50})])
    assert stats(out)["unseen_share"] > 0
