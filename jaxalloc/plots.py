"""Figures (matplotlib is optional: ``pip install jaxalloc[plots]``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class PlotError(ValueError):
    """matplotlib missing or the figure cannot be written; the message says which."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'jaxalloc[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_system_time_histogram(result, report: dict[str, Any], path, title: str = "") -> None:
    """Histogram of the simulated system times T of `result` (a
    :class:`~jaxalloc.simulate.SimulationResult` of one operating point), written to `path`.

    Log-spaced bins. With stored times (exact quantiles) the overall density is
    drawn as bars and each task type as a step line; otherwise the pooled
    log-spaced histogram of the simulation is drawn. The Pollaczek–Khinchine
    mean and the simulated mean, p50, p95 and p99 (from `report`, see
    :func:`~jaxalloc.simulate.simulation_report`) are marked. Raises
    :class:`PlotError` if matplotlib is missing or `path` cannot be written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    try:
        names = report["tasks"]
        if result.system_times.shape[-1]:
            q, w = result.queries, result.warmup
            times = np.asarray(result.system_times)[:, w:q].ravel()
            kinds = np.asarray(result.types)[:, w:q].ravel()
            pos = times[times > 0]
            lo, hi = pos.min(), pos.max()
            edges = np.geomspace(lo, hi * (1 + 1e-9), 81) if hi > lo else np.array([lo * 0.9, lo * 1.1])
            ax.hist(times, bins=edges, color="0.75", label=f"all ({times.size:,} queries)")
            for k, name in enumerate(names):
                tk = times[kinds == k]
                if tk.size:
                    ax.hist(tk, bins=edges, histtype="step", lw=1.2, label=f"{name} ({tk.size:,})")
        else:
            counts = np.asarray(result.histogram).sum(0)
            edges = np.asarray(result.bin_edges)
            nz = np.nonzero(counts)[0]
            if nz.size:
                counts, edges = counts[nz[0]: nz[-1] + 1], edges[nz[0]: nz[-1] + 2]
            ax.stairs(counts, edges, fill=True, color="0.75", label=f"all ({int(counts.sum()):,} queries, histogram)")
        ax.set_xscale("log")
        marks = [("theory_mean_system_time", "P-K mean", "k", "-"), ("mean_system_time", "sim. mean", "C3", "--"),
                 ("p50", "p50", "C0", ":"), ("p95", "p95", "C1", ":"), ("p99", "p99", "C2", ":")]
        for key, label, color, style in marks:
            v = report.get(key)
            if v is not None and math.isfinite(v) and v > 0:
                ax.axvline(v, color=color, ls=style, lw=1.5, label=f"{label} = {v:.3g} s")
        ax.set_xlabel("system time T = wait + service (s, log scale)")
        ax.set_ylabel("queries per bin")
        ax.set_title(title or "Simulated system times")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        try:
            fig.savefig(path, format="png")
        except OSError as err:
            raise PlotError(f"--plot: cannot write {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)


def _save(fig, plt, path) -> None:
    try:
        fig.tight_layout()
        fig.savefig(path, format="png")
    except OSError as err:
        raise PlotError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)


def plot_budget_curve(curve: dict, task: str, path, title: str = "", simulated: dict | None = None) -> None:
    """The paper's Fig. 4: J as one task's budget varies (others at ℓ*), with the
    integer lower bound J̄ of eq. 41 dashed, the optimum marked, and simulated
    points with 95% intervals if given. `curve` is
    :func:`jaxalloc.sensitivity.budget_curve`'s output, `simulated`
    :func:`jaxalloc.sensitivity.simulated_budget_points`'."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    if simulated is not None:
        ax.errorbar(simulated["budget"], simulated["objective"], yerr=simulated["halfwidth"], fmt="o", color="k",
                    ms=4, capsize=3, label="simulated (95% interval)", zorder=3)
    ax.plot(curve["budget"], curve["objective"], color="C0", lw=2, label="J(ℓ)")
    finite = np.isfinite(curve["lower_bound"])
    ax.plot(curve["budget"][finite], curve["lower_bound"][finite], "--", color="C3", lw=1.5, label="lower bound J̄ (eq. 41)")
    best = int(np.argmax(curve["objective"]))
    ax.axvline(curve["budget"][best], color="0.5", ls=":", label=f"best on grid: {curve['budget'][best]:.0f} tokens")
    ax.set_xlabel(f"{task} reasoning-token budget ℓ (tokens)")
    ax.set_ylabel("objective J (accuracy weight α × accuracy − seconds)")
    ax.set_title(title or f"J as the {task} budget varies")
    ax.legend()
    _save(fig, plt, path)


def plot_parameter_curve(curve: dict, param: str, names, path, title: str = "") -> None:
    """ℓ*(θ) (top) and dℓ*/dθ by implicit differentiation (bottom), one colour per task."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=110, sharex=True)
    for k, name in enumerate(names):
        top.plot(curve["value"], curve["budgets"][:, k], color=f"C{k % 10}", label=name)
        bottom.plot(curve["value"], curve["derivative"][:, k], color=f"C{k % 10}")
    top.set_ylabel("optimal budget ℓ* (tokens)")
    bottom.set_ylabel(f"dℓ*/d{param} (tokens per unit)")
    bottom.set_xlabel(param)
    top.set_title(title or f"Optimal budgets along {param}")
    top.legend(fontsize=8)
    _save(fig, plt, path)


# ------------------------------------------------------------- calibration (issue 6)


def _wilson(successes, trials, z: float = 1.959963984540054):
    """Wilson score interval of a binomial proportion, as (lower, upper) arrays."""
    n = np.maximum(trials, 1e-300)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def plot_calibration(cal, path, title: str = "") -> None:
    """The paper's Fig. 2 for your own measurements, and the service-time fit beside it.

    Left: measured accuracy per budget (markers, 95% Wilson intervals) and the fitted
    p(ℓ) = A(1 − e^{−bℓ}) + D (lines), one colour per task. Right: mean service time
    per budget (markers; with per-item rows, 95% intervals of the mean) and the fitted
    t(ℓ) = t0 + cℓ. Budgets on a symmetric-log axis (linear below the smallest positive
    budget), so that ℓ = 0 shows. `cal` is a :class:`~jaxalloc.calibrate.fit.Calibration`;
    `path` a file name or a binary file object (PNG).
    """
    plt = _pyplot()
    fig, (acc_ax, lat_ax) = plt.subplots(1, 2, figsize=(12, 5.6), dpi=110)
    budgets = np.concatenate([t.table.budgets for t in cal.tasks])
    low = float(budgets[budgets > 0].min())
    grid = np.unique(np.concatenate([np.linspace(0, low, 16), np.geomspace(low, budgets.max() * 1.05, 200)]))
    for k, t in enumerate(cal.tasks):
        color = f"C{k % 10}"
        tab, a = t.table, t.accuracy
        lo, hi = _wilson(tab.successes, tab.trials)
        acc = tab.successes / tab.trials
        yerr = np.maximum([acc - lo, hi - acc], 0.0)  # rounding at p = 0 or 1
        acc_ax.errorbar(tab.budgets, acc, yerr=yerr, fmt="o", ms=4, capsize=2, color=color)
        fitted = float(a.A) * -np.expm1(-float(a.b) * grid) + float(a.D)
        acc_ax.plot(grid, fitted, color=color, lw=1.6, label=f"{t.name}: A={float(a.A):.3f}, b={float(a.b):.2e}, D={float(a.D):.3f}")
        if t.latency is None:
            continue
        levels, inverse = np.unique(tab.service_budgets, return_inverse=True)
        if tab.service_counts is None:
            count = np.bincount(inverse).astype(float)
            means = np.bincount(inverse, weights=tab.service_times) / count
            spread = np.bincount(inverse, weights=(tab.service_times - means[inverse]) ** 2) / np.maximum(count - 1, 1)
            lat_ax.errorbar(levels, means, yerr=1.96 * np.sqrt(spread / count), fmt="o", ms=4, capsize=2, color=color)
        else:
            lat_ax.plot(tab.service_budgets, tab.service_times, "o", ms=4, color=color)
        lat = t.latency
        lat_ax.plot(grid, lat.t0 + lat.c * grid, color=color, lw=1.6, label=f"{t.name}: t0={lat.t0:.3g} s, c={lat.c:.3g} s/token")
    for ax in (acc_ax, lat_ax):
        ax.set_xscale("symlog", linthresh=low)
        ax.set_xlabel("thinking budget ℓ (tokens)")
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_title(r"accuracy: measured (95% Wilson) and $p(\ell) = A(1 - e^{-b\ell}) + D$", fontsize=10)
    legend = dict(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    acc_ax.legend(**legend)
    lat_ax.set_ylabel("service time (s)")
    lat_ax.set_title(r"service time: measured mean and $t(\ell) = t_0 + c\ell$", fontsize=10)
    if lat_ax.lines:
        positive = [float(t.latency.t0) for t in cal.tasks if t.latency is not None and t.latency.t0 > 0]
        lat_ax.set_yscale("symlog", linthresh=min(positive, default=0.01))
        lat_ax.legend(**legend)
    else:
        lat_ax.text(0.5, 0.5, "no service times in the file", ha="center", va="center", transform=lat_ax.transAxes)
    if title:
        fig.suptitle(title)
    _save(fig, plt, path)
