"""The console's charts as Plotly figures (JSON for plotly.js, which the plotly package ships and the console
serves itself: no network at run time). Each builder takes a read model from :mod:`pipelines.console.data`."""

from __future__ import annotations

from typing import Any

SEVERITY_SCALE = [[0.0, "#f4f6f8"], [0.33, "#ffe08a"], [0.66, "#f59e0b"], [1.0, "#c62828"]]
_LAYOUT = {"margin": {"l": 60, "r": 20, "t": 40, "b": 50}, "height": 340, "template": "plotly_white",
           "legend": {"orientation": "h", "y": -0.2}}


def _fig(traces: list[Any], title: str, **layout: Any) -> str:
    import plotly.graph_objects as go

    figure = go.Figure(traces)
    figure.update_layout(title=title, **{**_LAYOUT, **layout})
    return figure.to_json()


def metric_history(models: dict[str, Any]) -> str | None:
    """The holdout value of each metric the rules judge, per registered version (oldest left)."""
    import plotly.graph_objects as go

    versions = list(reversed(models["versions"]))
    metrics = models["rule_metrics"] or sorted({m for v in versions for m in v["metrics"]})[:6]
    if not versions or not metrics:
        return None
    x = [f"v{v['version']}" for v in versions]
    traces = [go.Scatter(x=x, y=[v["metrics"].get(m) for v in versions], mode="lines+markers", name=m,
                         line={"dash": "dot"} if m.startswith("baseline_") else {}) for m in metrics]
    return _fig(traces, "Holdout metrics per version (dotted: baselines)", xaxis_title="version")


def online_series(frame: Any, columns: list[str], title: str) -> str | None:
    """Daily online figures per serving version (one line per version and figure)."""
    import plotly.graph_objects as go

    if frame is None or frame.empty:
        return None
    traces = []
    for version, part in frame.groupby("model_version"):
        for column in columns:
            if column in part:
                traces.append(go.Scatter(x=part["prediction_day"], y=part[column], mode="lines+markers",
                                         name=f"{column} v{version}"))
    return _fig(traces, title, xaxis_title="prediction day")


def drift_heatmap(heat: dict[str, Any]) -> str | None:
    """Feature x day, colour = the worst finding's severity, hover = the finding count."""
    import plotly.graph_objects as go

    if not heat["columns"]:
        return None
    trace = go.Heatmap(z=heat["severity"], x=heat["days"], y=heat["columns"], customdata=heat["counts"],
                       zmin=0, zmax=3, colorscale=SEVERITY_SCALE,
                       colorbar={"tickvals": [0, 1, 2, 3], "ticktext": ["none", "low", "medium", "high"]},
                       hovertemplate="%{y}<br>%{x}: severity %{z}, %{customdata} finding(s)<extra></extra>")
    return _fig([trace], "Drift and quality findings: worst severity per column and day",
                height=max(320, 22 * len(heat["columns"]) + 120), margin={"l": 260, "r": 20, "t": 40, "b": 60},
                xaxis={"type": "category"})


def indicator_series(frame: Any, column: str) -> str | None:
    import plotly.graph_objects as go

    if frame is None or frame.empty:
        return None
    traces = [go.Scatter(x=part["day"], y=part["value"], mode="lines+markers", name=statistic)
              for statistic, part in frame.groupby("statistic")]
    return _fig(traces, f"Indicators of {column} (whole population)", xaxis_title="day")


def rollout_steps(rollout: dict[str, Any]) -> str | None:
    """A rollout's traffic weight per step, coloured by its verdict."""
    import plotly.graph_objects as go

    steps = [s for s in rollout.get("steps", []) if "weight" in s or s["step"] in ("rollback", "promote")]
    if not steps:
        return None
    colours = {"pass": "#2e7d32", "fail": "#c62828", "inconclusive": "#f59e0b"}
    x = [f"{i + 1}. {s['step']}" for i, s in enumerate(steps)]
    y = [100 * float(s.get("weight", 0.0 if s["step"] == "rollback" else 1.0)) for s in steps]
    trace = go.Bar(x=x, y=y, marker={"color": [colours.get(s["verdict"], "#607d8b") for s in steps]},
                   text=[s["verdict"] for s in steps], textposition="auto",
                   hovertext=[s.get("reason", "")[:200] for s in steps], hoverinfo="text")
    return _fig([trace], f"Rollout {rollout['rollout_id']}: candidate traffic % per step", yaxis_range=[0, 100])
