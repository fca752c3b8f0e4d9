"""The figure of ``jaxalloc loadtest --plot``: measured and predicted mean system time against λ."""

from __future__ import annotations

import math

import numpy as np

from ..plots import _pyplot, _save, axis_label
from .predict import predictions


def prediction_curves(problem, budgets, rate_max: float, points: int = 120) -> dict:
    """Predicted overall E[T] for λ on (0, `rate_max`]: ``{"rate", "server", "fifo"}`` arrays (NaN where unstable,
    so that a line stops at its model's capacity)."""
    rates = np.linspace(rate_max / points, rate_max, points)
    curves = {"rate": rates, "server": np.empty(points), "fifo": np.empty(points)}
    for i, lam in enumerate(rates):
        pred = predictions(problem, budgets, float(lam))
        for key in ("server", "fifo"):
            v = pred[key]["overall"]
            curves[key][i] = v if math.isfinite(v) else np.nan
    return curves


def plot_loadtest(result, problem, path, title: str = "") -> None:
    """Measured mean system time per rate (with p50–p95 bars) and both models' predictions against λ.

    **Arguments:** `result` (:class:`~jaxalloc.loadtest.run.LoadtestResult`); `problem`
    (the profile, with the server of `result`); `path` (PNG); `title`.
    Raises :class:`~jaxalloc.plots.PlotError` if the file cannot be written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    rates = np.asarray([s["rate"] for s in result.summary])
    finite = rates[np.isfinite(rates)]
    top = 1.15 * float(finite.max()) if finite.size else 1.0
    curves = prediction_curves(problem, result.budgets, top)
    from ..report import describe_server

    server = describe_server(result.server).split(" (")[0]
    ax.plot(curves["rate"], curves["server"], color="C0", lw=2, label=f"predicted: profile's server ({server})")
    ax.plot(curves["rate"], curves["fifo"], "--", color="C3", lw=1.5, label="predicted: one FIFO server (M/G/1)")
    measured = [(s["rate"], s["overall"]) for s in result.summary if s["overall"]["mean_s"] is not None]
    if measured:
        x = np.asarray([r for r, _ in measured])
        y = np.asarray([e["mean_s"] for _, e in measured])
        lo = np.asarray([e["p50_s"] for _, e in measured])
        hi = np.asarray([e["p95_s"] for _, e in measured])
        ax.plot(x, y, "o", color="k", ms=5, label="measured mean", zorder=3)
        ax.vlines(x, np.minimum(lo, y), np.maximum(hi, y), color="0.5", lw=1, label="measured p50–p95", zorder=2)
    # room for the measurements and the predictions at the measured rates (the curves rise to +inf)
    tops = [v for s in result.summary for v in (s["overall"]["predicted_s"], s["overall"]["predicted_fifo_s"],
                                                s["overall"]["p95_s"]) if v is not None and math.isfinite(v)]
    if tops:
        ax.set_ylim(0, 1.3 * max(tops))
    ax.set_xlim(0, top)
    ax.set_xlabel(axis_label("arrival_rate"))
    ax.set_ylabel(axis_label("mean_system_time"))
    ax.set_title(title or "Load test: measured and predicted mean system time")
    ax.legend(fontsize=8)
    _save(fig, plt, path)
