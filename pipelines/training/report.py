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


def _by(values: np.ndarray, err: np.ndarray) -> tuple[list[Any], list[float]]:
    keys = sorted(set(values.tolist()))
    return keys, [float(np.mean(np.abs(err[values == k]))) for k in keys]


def write_report(path: Path, *, usecase: str, model_name: str, run_id: str, metrics: dict[str, float],
                 champion: dict[str, float] | None, segments: list[dict[str, Any]], actual: np.ndarray,
                 predicted: np.ndarray, intervals: dict[float, tuple[np.ndarray, np.ndarray]], hours: np.ndarray,
                 months: np.ndarray, importance: dict[str, float], history: dict[str, list[float]],
                 lineage: dict[str, Any], baselines: list[str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    err = predicted - actual
    rng = np.random.default_rng(0)
    sample = rng.choice(actual.size, size=min(5000, actual.size), replace=False)
    charts = []

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(actual[sample], predicted[sample], s=3, alpha=0.3)
    lim = [float(np.quantile(actual, 0.001)), float(np.quantile(actual, 0.999))]
    ax.plot(lim, lim, color="black", linewidth=1)
    ax.set(xlim=lim, ylim=lim, xlabel="actual", ylabel="predicted", title="Predicted vs actual (holdout)")
    charts.append(_png(fig))

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, values, title in ((axes[0], hours, "MAE by hour"), (axes[1], months, "MAE by month")):
        keys, maes = _by(np.asarray(values), err)
        ax.bar([str(k) for k in keys], maes)
        ax.set(title=title, ylabel="MAE")
        ax.tick_params(axis="x", labelsize=7)
    charts.append(_png(fig))

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(np.clip(err, -120, 120), bins=80)
    ax.set(title="Residuals (predicted - actual, clipped at +-120)", xlabel="minutes")
    charts.append(_png(fig))

    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
    if top:
        fig, ax = plt.subplots(figsize=(5, 0.25 * len(top) + 1))
        ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
        ax.set(title="Feature importance (gain)")
        charts.append(_png(fig))

    if history.get("mae"):
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(history["mae"])
        ax.set(title="Validation MAE by boosting round", xlabel="round")
        charts.append(_png(fig))

    rows = [("model", metrics), *[(f"baseline: {b}", {k.removeprefix(f"baseline_{b}_"): v for k, v in metrics.items()
                                                     if k.startswith(f"baseline_{b}_")}) for b in baselines]]
    if champion:
        rows.append((f"champion (version {int(champion.get('version', 0))})", champion))
    cols = ["mae", "rmse", "median_ae", "p90_ae", "bias", "coverage_80", "coverage_90"]
    table = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{_fmt(m.get(c))}</td>" for c in cols)
                    + "</tr>" for name, m in rows)
    cover = "".join(f"<tr><td>{level:.0%}</td><td>{_fmt(float(np.mean((actual >= lo) & (actual <= hi))))}</td>"
                    f"<td>{_fmt(float(np.mean(hi - lo)))}</td></tr>" for level, (lo, hi) in intervals.items())
    seg_rows = "".join(
        f"<tr><td>{html.escape(r['segment'])}</td><td>{html.escape(r['value'])}</td>"
        f"<td>{html.escape(r['predictor'])}</td><td>{int(r['rows'])}</td><td>{_fmt(r['mae'])}</td>"
        f"<td>{_fmt(r['rmse'])}</td><td>{_fmt(r['p90_ae'])}</td></tr>" for r in segments)
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(model_name)} training report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{text-align:left}}img{{margin:.5em}}
details{{margin:1em 0}}</style></head><body>
<h1>{html.escape(model_name)} &mdash; training run {html.escape(run_id)}</h1>
<p>Use case <b>{html.escape(usecase)}</b>. Holdout: {int(metrics.get('rows_holdout', 0)):,} rows;
train {int(metrics.get('rows_train', 0)):,}; validation {int(metrics.get('rows_validation', 0)):,}.</p>
<h2>Holdout metrics vs baselines and champion</h2>
<table><tr><th></th>{''.join(f'<th>{c}</th>' for c in cols)}</tr>{table}</table>
<h2>Prediction intervals (split conformal, calibrated on validation)</h2>
<table><tr><th>nominal</th><th>empirical coverage</th><th>mean width</th></tr>{cover}</table>
<h2>Charts</h2>{''.join(charts)}
<details><summary>Per-segment metrics ({len(segments)} rows)</summary>
<table><tr><th>segment</th><th>value</th><th>predictor</th><th>rows</th><th>mae</th><th>rmse</th><th>p90_ae</th></tr>
{seg_rows}</table></details>
<h2>Lineage</h2><pre>{html.escape(json.dumps(lineage, indent=1, default=str))}</pre>
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path
