"""The training results dashboard: one self-contained HTML file per run (charts inlined as PNG)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report"]


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:,.3f}"
    return html.escape(str(value))


MAX_SEGMENT_CHARTS = 4
MAX_SEGMENT_VALUES = 30


def _segment_charts(segments: list[dict[str, Any]], metric: str) -> list[str]:
    """One bar chart per evaluation segment (the spec's, up to four): the model's ``metric`` per value (the
    values with most rows, up to 30)."""
    import matplotlib.pyplot as plt

    charts = []
    names = list(dict.fromkeys(r["segment"] for r in segments))[:MAX_SEGMENT_CHARTS]
    for name in names:
        rows = [r for r in segments if r["segment"] == name and r["predictor"] == "model"]
        rows = sorted(sorted(rows, key=lambda r: -r["rows"])[:MAX_SEGMENT_VALUES], key=lambda r: r["value"])
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(min(9, 2 + 0.3 * len(rows)), 3.2))
        ax.bar([r["value"] for r in rows], [r[metric] for r in rows])
        ax.set(title=f"{metric} by {name} (holdout)", ylabel=metric)
        ax.tick_params(axis="x", labelsize=7, rotation=90 if len(rows) > 12 else 0)
        charts.append(_png(fig))
    return charts


def write_report(path: Path, *, usecase: str, model_name: str, run_id: str, metrics: dict[str, float],
                 champion: dict[str, float] | None, segments: list[dict[str, Any]], actual: np.ndarray,
                 predicted: np.ndarray, intervals: dict[float, tuple[np.ndarray, np.ndarray]],
                 importance: dict[str, float], history: dict[str, list[float]], lineage: dict[str, Any],
                 baselines: list[str], task: str = "regression", classes: list[str] | None = None,
                 sets: dict[float, np.ndarray] | None = None) -> Path:
    """The report of a regression run (``predicted``: predictions, ``intervals``) or of a classification run
    (``predicted``: ``(n, K)`` calibrated probabilities, ``sets``: prediction-set members per level)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classifier = task != "regression"
    charts = []
    if classifier:
        charts += _classification_charts(actual.astype(np.int64), predicted, classes or [])
    else:
        err = predicted - actual
        rng = np.random.default_rng(0)
        sample = rng.choice(actual.size, size=min(5000, actual.size), replace=False)
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(actual[sample], predicted[sample], s=3, alpha=0.3)
        lim = [float(np.quantile(actual, 0.001)), float(np.quantile(actual, 0.999))]
        ax.plot(lim, lim, color="black", linewidth=1)
        ax.set(xlim=lim, ylim=lim, xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
        charts.append(_png(fig))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        clip = float(np.quantile(np.abs(err), 0.99)) or 1.0
        ax.hist(np.clip(err, -clip, clip), bins=80)
        ax.set(title=f"Residuals (predicted - actual, clipped at +-{clip:g})", xlabel="error")
        charts.append(_png(fig))
    charts += _segment_charts(segments, "log_loss" if classifier else "mae")

    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
    if top:
        fig, ax = plt.subplots(figsize=(5, 0.25 * len(top) + 1))
        ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
        ax.set(title="Feature importance (gain)")
        charts.append(_png(fig))

    curve = "mlogloss" if task == "multiclass" else "logloss" if classifier else "mae"
    if history.get(curve):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(history[curve])
        ax.set(title=f"Validation {curve} by boosting round", xlabel="round")
        charts.append(_png(fig))

    rows = [("model", metrics), *[(f"baseline: {b}", {k.removeprefix(f"baseline_{b}_"): v for k, v in metrics.items()
                                                     if k.startswith(f"baseline_{b}_")}) for b in baselines]]
    if champion:
        rows.append((f"champion (version {int(champion.get('version', 0))})", champion))
    levels = sorted(sets or intervals)
    if classifier:
        cols = ["auc", "log_loss", "brier", "calibration_error", "accuracy",
                *[f"coverage_{round(lv * 100)}" for lv in levels]]
    else:
        cols = ["mae", "rmse", "median_ae", "p90_ae", "bias", *[f"coverage_{round(lv * 100)}" for lv in levels]]
    table = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols)
                    + "</tr>" for name, m in rows)
    if classifier:
        y = actual.astype(np.int64)
        cover = "".join(f"<tr><td>{level:.0%}</td><td>{_fmt(float(np.mean(m[np.arange(y.size), y])))}</td>"
                        f"<td>{_fmt(float(np.mean(m.sum(axis=1))))}</td></tr>" for level, m in (sets or {}).items())
        uncertainty = ("Prediction sets (split conformal on calibrated probabilities, fitted on the later half of "
                       "validation)", "mean set size")
    else:
        cover = "".join(f"<tr><td>{level:.0%}</td><td>{_fmt(float(np.mean((actual >= lo) & (actual <= hi))))}</td>"
                        f"<td>{_fmt(float(np.mean(hi - lo)))}</td></tr>" for level, (lo, hi) in intervals.items())
        uncertainty = ("Prediction intervals (split conformal, calibrated on validation)", "mean width")
    metric_cols = cols[:5]
    seg_rows = "".join(
        f"<tr><td>{html.escape(r['segment'])}</td><td>{html.escape(r['value'])}</td>"
        f"<td>{html.escape(r['predictor'])}</td><td>{int(r['rows'])}</td>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in metric_cols) + "</tr>" for r in segments)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(model_name)} training report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{text-align:left}}img{{margin:.5em}}
details{{margin:1em 0}}</style></head><body>
<h1>{html.escape(model_name)} &mdash; training run {html.escape(run_id)}</h1>
<p>Use case <b>{html.escape(usecase)}</b> ({html.escape(task)}{
        ': classes ' + html.escape(', '.join(classes or [])) if classifier else ''}).
Holdout: {int(metrics.get('rows_holdout', 0)):,} rows;
train {int(metrics.get('rows_train', 0)):,}; validation {int(metrics.get('rows_validation', 0)):,}.</p>
<h2>Holdout metrics vs baselines and champion</h2>
<table><tr><th></th>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{table}</table>
<h2>{uncertainty[0]}</h2>
<table><tr><th>nominal</th><th>empirical coverage</th><th>{uncertainty[1]}</th></tr>{cover}</table>
<h2>Charts</h2>{''.join(charts)}
<details><summary>Per-segment metrics ({len(segments)} rows)</summary>
<table><tr><th>segment</th><th>value</th><th>predictor</th><th>rows</th>{''.join(f'<th>{c}</th>' for c in metric_cols)}</tr>
{seg_rows}</table></details>
<h2>Lineage</h2><pre>{html.escape(json.dumps(lineage, indent=1, default=str))}</pre>
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def _classification_charts(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> list[str]:
    """A reliability diagram (the positive class's probability for binary models, the top class's otherwise)
    and the distribution of that probability per true class."""
    import matplotlib.pyplot as plt

    binary = proba.shape[1] == 2
    score = proba[:, 1] if binary else proba.max(axis=1)
    hit = (y == 1) if binary else (proba.argmax(axis=1) == y)
    bins = np.minimum((score * 10).astype(np.int64), 9)
    filled = [b for b in range(10) if (bins == b).any()]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], color="black", linewidth=1)
    ax.plot([float(score[bins == b].mean()) for b in filled], [float(hit[bins == b].mean()) for b in filled],
            marker="o")
    what = f"P({classes[1] if classes else 'positive'})" if binary else "top-class probability"
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"predicted {what}", ylabel="observed rate",
           title="Reliability (holdout)")
    charts = [_png(fig)]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in range(proba.shape[1]):
        if (y == k).any():
            ax.hist(score[y == k], bins=40, range=(0, 1), alpha=0.5,
                    label=classes[k] if k < len(classes) else str(k))
    ax.legend()
    ax.set(title=f"Predicted {what} by true class (holdout)", xlabel=what)
    charts.append(_png(fig))
    return charts
