"""Figures of `jaxalloc simulate --plot`, `sensitivity`, `sweep`, `calibrate fit --plot`
and `reproduce` (matplotlib, a core dependency).

Every axis label and every "symbol = value" in a legend comes from :data:`QUANTITIES`
(field name → words, symbol and unit) through :func:`axis_label` and :func:`value_label`,
so a quantity reads the same, with its unit, in every figure. Log axes go through
:func:`_log_scale`, whose tick labels never crowd.
"""

from __future__ import annotations

import itertools
import math
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np


class PlotError(ValueError):
    """matplotlib missing or the figure cannot be written; the message says which."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlotError("figures need matplotlib, a dependency of jaxalloc: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------- labels and units


@dataclass(frozen=True)
class Quantity:
    """How a quantity is written on an axis (`words symbol (unit)`) and after a value in a
    legend (`symbol = value` + `value_unit`; "" for a dimensionless fraction)."""

    words: str
    symbol: str
    unit: str
    value_unit: str


#: Field name (a :class:`~jaxalloc.model.Problem` field, a sweep column, or a quantity the
#: figures draw) → how it is labelled. J = α·accuracy − E[T] is in seconds, so α is in
#: seconds per unit of accuracy (accuracy being a fraction, 1 = every answer correct).
QUANTITIES: dict[str, Quantity] = {
    # the operating point and the task parameters (sweep axes, sensitivity parameters)
    "arrival_rate": Quantity("arrival rate", "λ", "queries/s", " queries/s"),
    "alpha": Quantity("accuracy weight", "α", "s per unit accuracy", " s per unit accuracy"),
    "max_tokens": Quantity("token cap", "ℓ_max", "tokens", " tokens"),
    "prob": Quantity("share of queries", "π", "fraction", ""),
    "A": Quantity("accuracy gain", "A", "fraction correct", ""),
    "b": Quantity("accuracy rate", "b", "1/token", "/token"),
    "D": Quantity("accuracy at ℓ = 0", "D", "fraction correct", ""),
    "t0": Quantity("service time at ℓ = 0", "t0", "s", " s"),
    "c": Quantity("service time per token", "c", "s/token", " s/token"),
    # server parameters (sweep axes, sensitivity parameters; docs/servers.md)
    "servers": Quantity("servers", "c", "count", ""),
    "max_batch": Quantity("largest batch", "B", "requests", " requests"),
    "batch_slowdown": Quantity("batch slowdown per extra request", "β", "dimensionless", ""),
    "admission": Quantity("admission time per query", "h", "s", " s"),
    # results (sweep columns)
    "budget": Quantity("optimal budget", "ℓ*", "tokens", " tokens"),
    "integer_budget": Quantity("integer budget", "ℓ_int", "tokens", " tokens"),
    "objective": Quantity("objective", "J", "s", " s"),
    "accuracy": Quantity("mean accuracy", "Σ π_k p_k(ℓ*_k)", "fraction correct", ""),
    "mean_system_time": Quantity("mean system time", "E[T]", "s", " s"),
    "utilization": Quantity("utilisation", "ρ = λE[S]", "fraction of time busy", ""),
    # what the other figures draw
    "thinking_budget": Quantity("reasoning-token budget", "ℓ", "tokens", " tokens"),
    "task_accuracy": Quantity("accuracy", "p_k(ℓ)", "fraction correct", ""),
    "service_time": Quantity("service time", "t(ℓ)", "s", " s"),
    "system_time": Quantity("system time", "T = wait + service", "s", " s"),
    "system_time_quantile": Quantity("quantile of the system time", "T_q", "s", " s"),
    "queries_per_bin": Quantity("queries per bin", "", "count", ""),
    "gain": Quantity("gain in objective", "ΔJ", "s", " s"),
    "loss": Quantity("loss in objective", "ΔJ", "s", " s"),
}

_TASK_COLUMNS = ("integer_budget_", "budget_")  # sweep columns that end in a task name


def _split(field: str, task: str | None) -> tuple[Quantity, str | None]:
    """The quantity of `field` and its task: `b:GSM8K`, `budget_GSM8K` or `b` with `task`."""
    name, _, key = field.partition(":")
    if not key:
        for prefix in _TASK_COLUMNS:
            if field.startswith(prefix):
                name, key = prefix[:-1], field[len(prefix):]
                break
    if name not in QUANTITIES:
        raise KeyError(f"no label for {field!r}: add it to jaxalloc.plots.QUANTITIES")
    return QUANTITIES[name], task if task is not None else (key or None)


def axis_label(field: str, task: str | None = None, *, short: bool = False, note: str = "") -> str:
    """The axis label of `field`, unit in parentheses: `arrival rate λ (queries/s)`;
    `short`: `λ (queries/s)`; a per-task field (`b:GSM8K`, or `b` with `task`):
    `b (1/token), GSM8K`; `note` goes after the unit: `(s, log scale)`."""
    q, task = _split(field, task)
    name = q.symbol if short or not q.words else (f"{q.words} {q.symbol}" if q.symbol else q.words)
    text = f"{name} ({q.unit}{', ' + note if note else ''})"
    return f"{text}, {task}" if task else text


def value_label(field: str, value: float, task: str | None = None, fmt: str = ".4g") -> str:
    """`symbol = value unit` for a legend: `λ = 0.1085 queries/s`, `b = 0.001/token, GSM8K`."""
    q, task = _split(field, task)
    text = f"{q.symbol} = {value:{fmt}}{q.value_unit}"
    return f"{text}, {task}" if task else text


def _per(field: str) -> str:
    """`tokens per <unit of field>`, for a derivative with respect to `field`."""
    unit = QUANTITIES[field].unit
    if unit == "dimensionless":
        return "tokens"
    return f"tokens per ({unit})" if ("/" in unit or " " in unit) else f"tokens per {unit}"


# ---------------------------------------------------------------- log axes whose labels never crowd


def _number(x: float, sci: bool) -> str:
    """A tick value: plain (0.05, 20, 5000), or with `sci` m×10ⁿ."""
    if not sci:
        return f"{x:g}"
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = x / 10.0**exponent
    if abs(mantissa - 1) < 1e-6:
        return rf"$\mathdefault{{10^{{{exponent}}}}}$"
    return rf"$\mathdefault{{{mantissa:.3g}\times10^{{{exponent}}}}}$"


def _label_width(x: float, sci: bool) -> float:
    """Estimated width of :func:`_number`'s label, in ems (a superscript counts 0.7)."""
    if not sci:
        return 0.65 * len(f"{x:g}")
    exponent = math.floor(math.log10(x) + 1e-9)
    mantissa = x / 10.0**exponent
    head = 2 if abs(mantissa - 1) < 1e-6 else len(f"{mantissa:.3g}") + 3  # "10", or "m×10"
    return 0.65 * (head + 0.7 * len(str(exponent)))


def _log_tick_formatter(minor: bool):
    """Tick labels of a log axis (base 10). Powers of ten are labelled (the locator
    thins them to fit); other ticks only while fewer than two powers of ten are in
    view, and then the densest of 2, 3, 4, 5, 6, 8 / 2, 5 / 3 times a power whose
    labels fit side by side (estimated from the font size and the axis length).
    Plain numbers (0.05, 20) where the axis stays within [10⁻³, 10⁵), else m×10ⁿ
    on the whole axis. (Matplotlib's default labels 2, 3, 4 and 6 times a power in
    scientific notation over up to a decade and a half, and those labels run into
    each other.)"""
    from matplotlib.ticker import Formatter

    class LogTickLabels(Formatter):
        def __call__(self, x, pos=None):
            lo, hi = sorted(self.axis.get_view_interval())
            if not (x > 0 and math.isfinite(x) and lo > 0):
                return ""
            sci = lo < 1e-3 or hi >= 1e5
            if not minor:
                return _number(x, sci)
            mantissa = x / 10.0 ** math.floor(math.log10(x) + 1e-9)
            keep = self._mantissas(lo, hi, sci)
            return _number(x, sci) if any(abs(mantissa - m) < 1e-6 for m in keep) else ""

        def _mantissas(self, lo: float, hi: float, sci: bool) -> tuple[int, ...]:
            l0, l1 = math.log10(lo), math.log10(hi)
            if math.floor(l1 + 1e-9) - math.ceil(l0 - 1e-9) + 1 >= 2 or l1 <= l0:
                return ()  # two powers of ten or more: they alone are labelled
            axes = self.axis.axes
            across = self.axis.axis_name == "x"
            pixels = (axes.bbox.width if across else axes.bbox.height) / (l1 - l0)  # per decade
            em = self.axis.get_major_ticks(1)[0].label1.get_fontsize() * axes.figure.dpi / 72
            for subs in ((2, 3, 4, 5, 6, 8), (2, 5), (3,)):
                values = [m * 10.0**e for e in range(math.floor(l0), math.ceil(l1) + 1) for m in (1, *subs)]
                values = sorted(v for v in values if lo <= v <= hi)
                gaps = np.diff(np.log10(values)) * pixels
                if across:
                    need = [em * (0.5 * (_label_width(a, sci) + _label_width(b, sci)) + 0.6)
                            for a, b in itertools.pairwise(values)]
                else:
                    need = [1.6 * em] * len(gaps)
                if all(g >= n for g, n in zip(gaps, need)):
                    return subs
            return ()

    return LogTickLabels()


def _log_scale(ax, which: str) -> None:
    """Put axis `which` ("x" or "y") of `ax` on a log scale with :func:`_log_tick_formatter`
    labels, once the data are drawn. Data spanning less than half a decade stay on a
    linear axis: a log axis would put no tick at all between its powers of ten."""
    lo, hi = ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly
    if 0 < lo <= hi < math.inf and hi < lo * 10**0.5:
        return
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(_log_tick_formatter(minor=False))
    axis.set_minor_formatter(_log_tick_formatter(minor=True))


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
                    ax.hist(tk, bins=edges, histtype="step", lw=1.2, label=f"{name} ({tk.size:,} queries)")
        else:
            counts = np.asarray(result.histogram).sum(0)
            edges = np.asarray(result.bin_edges)
            nz = np.nonzero(counts)[0]
            if nz.size:
                counts, edges = counts[nz[0]: nz[-1] + 1], edges[nz[0]: nz[-1] + 2]
            ax.stairs(counts, edges, fill=True, color="0.75", label=f"all ({int(counts.sum()):,} queries, histogram)")
        _log_scale(ax, "x")
        marks = [("theory_mean_system_time", "P-K mean", "k", "-"), ("mean_system_time", "sim. mean", "C3", "--"),
                 ("p50", "p50", "C0", ":"), ("p95", "p95", "C1", ":"), ("p99", "p99", "C2", ":")]
        unit = QUANTITIES["system_time"].value_unit
        for key, label, color, style in marks:
            v = report.get(key)
            if v is not None and math.isfinite(v) and v > 0:
                ax.axvline(v, color=color, ls=style, lw=1.5, label=f"{label} = {v:.3g}{unit}")
        ax.set_xlabel(axis_label("system_time", note="log scale"))
        ax.set_ylabel(axis_label("queries_per_bin"))
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


def plot_budget_curve(curve: dict, task: str, path, title: str = "", simulated: dict | None = None,
                      color: str | None = None) -> None:
    """The paper's Fig. 4: J as one task's budget varies (others at ℓ*), with the
    integer lower bound J̄ of eq. 41 dashed, the optimum marked, and simulated
    points with 95% intervals if given. `curve` is
    :func:`jaxalloc.sensitivity.budget_curve`'s output, `simulated`
    :func:`jaxalloc.sensitivity.simulated_budget_points`'. With `color`, J and J̄
    are drawn in that colour (solid and dashed) instead of blue and red."""
    plt = _pyplot()
    if "quantiles" in curve:
        fig, (ax, below) = plt.subplots(2, 1, figsize=(7, 7.5), dpi=110, sharex=True, height_ratios=(3, 2))
        _quantile_panel(below, curve["budget"], curve)
        below.set_xlabel(axis_label("thinking_budget", task))
    else:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        ax.set_xlabel(axis_label("thinking_budget", task))
    if simulated is not None:
        ax.errorbar(simulated["budget"], simulated["objective"], yerr=simulated["halfwidth"], fmt="o", color="k",
                    ms=4, capsize=3, label="simulated J (95% interval)", zorder=3)
    ax.plot(curve["budget"], curve["objective"], color=color or "C0", lw=2, label="J(ℓ)")
    finite = np.isfinite(curve["lower_bound"])
    ax.plot(curve["budget"][finite], curve["lower_bound"][finite], "--", color=color or "C3", lw=1.5, label="lower bound J̄ (eq. 41)")
    best = int(np.argmax(curve["objective"]))
    ax.axvline(curve["budget"][best], color="0.5", ls=":",
               label=f"best on grid: {value_label('thinking_budget', curve['budget'][best], fmt='.0f')}")
    ax.set_ylabel(axis_label("objective", note="α · accuracy − E[T]"))
    ax.set_title(title or f"J as the {task} budget varies")
    ax.legend()
    _save(fig, plt, path)


def plot_parameter_curve(curve: dict, param: str, names, path, title: str = "") -> None:
    """ℓ*(θ) (top) and dℓ*/dθ by implicit differentiation (below), one colour per task; with
    `curve["quantiles"]`, a third panel: those quantiles of the system time at ℓ*(θ)."""
    plt = _pyplot()
    if "quantiles" in curve:
        fig, (top, bottom, below) = plt.subplots(3, 1, figsize=(7, 9), dpi=110, sharex=True)
        _quantile_panel(below, curve["value"], curve)
        below.set_xlabel(axis_label(param))
    else:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), dpi=110, sharex=True)
        bottom.set_xlabel(axis_label(param))
    for k, name in enumerate(names):
        top.plot(curve["value"], curve["budgets"][:, k], color=f"C{k % 10}", label=name)
        bottom.plot(curve["value"], curve["derivative"][:, k], color=f"C{k % 10}")
    top.set_ylabel(axis_label("budget"))
    if not np.isfinite(np.asarray(curve["derivative"], float)).any():  # an integer parameter (servers, max_batch)
        bottom.text(0.5, 0.5, f"{QUANTITIES[param].words} takes whole numbers: no derivative", ha="center",
                    va="center", transform=bottom.transAxes)
    bottom.set_ylabel(f"dℓ*/d{QUANTITIES[param].symbol} ({_per(param)})")
    top.set_title(title or f"Optimal budgets along {QUANTITIES[param].words} {QUANTITIES[param].symbol}")
    top.legend(fontsize=8)
    _save(fig, plt, path)


def _quantile_panel(ax, x, curve: dict) -> None:
    """The quantiles of the system time in `curve` (`quantiles`, len × levels, at `levels`) against x,
    one line per level; unstable points (+inf) left out."""
    from .quantiles import level_name

    values = np.asarray(curve["quantiles"], float)
    for i, q in enumerate(np.asarray(curve["levels"], float)):
        y = np.where(np.isfinite(values[:, i]), values[:, i], np.nan)
        ax.plot(x, y, color=f"C{i % 10}", lw=1.8, label=f"{level_name(q)} of T (exact)")
    ax.set_ylabel(axis_label("system_time_quantile"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


# ---------------------------------------------------------------- sweeps


def _is_geometric(values) -> bool:
    v = np.asarray(values, float)
    return v.size > 2 and v[0] > 0 and np.allclose(np.diff(np.log(v)), np.log(v[1] / v[0]), rtol=1e-6)


def _thin(n: int, most: int) -> np.ndarray:
    """Indices of at most `most` evenly spread points out of n (ends kept)."""
    return np.unique(np.linspace(0, n - 1, min(n, most)).round().astype(int))


def _axis_task(plan, axis) -> str | None:
    """The task name of a per-task sweep axis (as the profile spells it), else None."""
    return None if axis.task is None else plan.problem.names[axis.task]


def plot_sweep_heatmaps(result, path, title: str = "", max_cells: int = 400) -> str:
    """Heat maps of each task's optimal budget ℓ*_k and of J(ℓ*) over a 2-axis
    sweep (a line plot per quantity for a 1-axis sweep); unstable points are
    left blank (grey). Grids larger than `max_cells` per side are thinned.

    **Returns:** `path`.
    """
    plt = _pyplot()
    plan = result.plan
    if len(plan.axes) > 2:
        raise PlotError(f"heat maps need a sweep of 1 or 2 axes, this one has {len(plan.axes)}")
    names = list(plan.problem.names)
    status = result.grid("status")
    unstable = np.asarray(status == "unstable_queue") if status.dtype == object else np.zeros(status.shape, bool)
    panels = [(f"budget_{t}", t) for t in names] + [("objective", "objective J(ℓ*)")]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.1 * rows), squeeze=False)
    labels = [axis_label(a.field, _axis_task(plan, a), short=True) for a in plan.axes]
    for ax, (column, panel) in zip(axs.flat, panels):
        data = np.where(unstable, np.nan, result.grid(column).astype(float))
        data = np.where(np.isfinite(data), data, np.nan)
        quantity = column.split("_")[0] if column.startswith("budget_") else column
        if len(plan.axes) == 1:
            x = plan.axes[0].values
            ax.plot(x, data)
            ax.set_xlabel(labels[0])
            ax.set_ylabel(axis_label(quantity, short=True))
            ax.set_title(panel, fontsize=9)
            if _is_geometric(x):
                _log_scale(ax, "x")
            continue
        i, j = _thin(data.shape[0], max_cells), _thin(data.shape[1], max_cells)
        y, x = plan.axes[0].values[i], plan.axes[1].values[j]
        ax.set_facecolor("0.85")
        shown = data[np.ix_(i, j)]
        finite = shown[np.isfinite(shown)]
        flat = finite.size and finite.min() == finite.max()  # say so, rather than a colour scale around it
        limits = {"vmin": finite.min(), "vmax": finite.min() + 1} if flat else {}
        mesh = ax.pcolormesh(x, y, shown, shading="nearest", cmap="viridis", **limits)
        if flat:
            ax.text(0.5, 0.5, f"{value_label(quantity, finite.min(), fmt='.4g')}\neverywhere", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9, color="w")
        bar = fig.colorbar(mesh, ax=ax)
        bar.set_label(axis_label(quantity, short=True), fontsize=8)
        ax.set_xlabel(labels[1])
        ax.set_ylabel(labels[0])
        ax.set_title(panel, fontsize=9)
        if _is_geometric(x):
            _log_scale(ax, "x")
        if _is_geometric(y):
            _log_scale(ax, "y")
    for ax in list(axs.flat)[len(panels):]:
        ax.set_visible(False)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}optimal budget ℓ* of each task and objective J over the sweep (grey: unstable at ℓ = 0)",
                 fontsize=10)
    _save(fig, plt, path)
    return str(path)


def plot_sweep_frontier(result, path, title: str = "", lines: int = 6) -> str | None:
    """Accuracy against mean system time E[T] along the α axis of a sweep, one
    line per value of the other axis (at most `lines` of them): the frontier
    the accuracy weight α traces. Returns None when the sweep has no α axis.
    """
    plan = result.plan
    names = [a.name for a in plan.axes]
    if "alpha" not in names or len(names) > 2:
        return None
    plt = _pyplot()
    k = names.index("alpha")
    acc = np.moveaxis(result.grid("accuracy").astype(float), k, -1)
    delay = np.moveaxis(result.grid("mean_system_time").astype(float), k, -1)
    acc, delay = acc.reshape(-1, acc.shape[-1]), delay.reshape(-1, delay.shape[-1])
    other = plan.axes[1 - k] if len(names) == 2 else None
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    cmap = plt.get_cmap("viridis")
    picks = _thin(acc.shape[0], lines)
    for n, r in enumerate(picks):
        ok = np.isfinite(delay[r]) & np.isfinite(acc[r])
        if not ok.any():
            continue
        label = value_label(other.field, other.values[r], _axis_task(plan, other)) if other is not None else None
        ax.plot(delay[r][ok], acc[r][ok], "-", color=cmap(n / max(1, len(picks) - 1)), label=label)
    ax.set_xlabel(axis_label("mean_system_time", note="log scale"))
    ax.set_ylabel(axis_label("accuracy"))
    _log_scale(ax, "x")
    ax.grid(alpha=0.3)
    if other is not None:
        ax.legend(fontsize=8)
    alpha = plan.axes[k].values
    span = f"α from {alpha.min():.3g} to {alpha.max():.3g}{QUANTITIES['alpha'].value_unit}"
    ax.set_title(f"{title + ': ' if title else ''}accuracy against delay as α varies ({span})", fontsize=10)
    _save(fig, plt, path)
    return str(path)


# ---------------------------------------------------------------- calibration


def _wilson(successes, trials, z: float = 1.959963984540054):
    """Wilson score interval of a binomial proportion, as (lower, upper) arrays."""
    n = np.maximum(trials, 1e-300)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _curve_label(name: str, A: float, b: float, D: float, fmt_b: str = ".3g") -> str:
    """A legend entry for a task's accuracy curve: `GSM8K: A = 0.723, b = 0.0032/token, D = 0.277`."""
    return f"{name}: {value_label('A', A, fmt='.3f')}, {value_label('b', b, fmt=fmt_b)}, {value_label('D', D, fmt='.3f')}"


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
        acc_ax.plot(grid, fitted, color=color, lw=1.6, label=_curve_label(t.name, float(a.A), float(a.b), float(a.D), ".2e"))
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
        lat_ax.plot(grid, lat.t0 + lat.c * grid, color=color, lw=1.6,
                    label=f"{t.name}: {value_label('t0', lat.t0, fmt='.3g')}, {value_label('c', lat.c, fmt='.3g')}")
    for ax in (acc_ax, lat_ax):
        ax.set_xscale("symlog", linthresh=low)
        ax.set_xlabel(axis_label("thinking_budget", note=f"linear below {low:g}, log above"))
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel(axis_label("task_accuracy"))
    acc_ax.set_ylim(-0.02, 1.02)
    acc_ax.set_title(r"accuracy: measured (95% Wilson) and $p(\ell) = A(1 - e^{-b\ell}) + D$", fontsize=10)
    legend = {"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, -0.13), "ncol": 2}
    acc_ax.legend(**legend)
    lat_ax.set_ylabel(axis_label("service_time"))
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


# ---------------------------------------------------------------- reproduction (`jaxalloc reproduce`)


def task_color(k: int) -> str:
    """Task k's colour in every figure: matplotlib's default cycle, as the other figures use."""
    return f"C{k % 10}"


def plot_accuracy_curves(problem, budgets, path, markers=None, marker_label: str = "", title: str = "") -> None:
    """The paper's Fig. 2 from a profile: p_k(ℓ) = A_k (1 − e^{−b_k ℓ}) + D_k for
    every task (eq. 2, lines), with the optimal budget ℓ*_k marked on each curve.

    **Arguments:**

    - `problem`: a :class:`~jaxalloc.model.Problem`; `budgets`: ℓ*, shape (N,).
    - `markers`: optional measured accuracies, a list of (task index, budgets,
      successes, trials), drawn as open squares with 95% Wilson intervals and
      labelled `marker_label` in the legend.

    Budgets on a symmetric-log axis (linear below 1 token, so ℓ = 0 shows) up to ℓ_max.
    """
    plt = _pyplot()
    A, b, D = (np.asarray(getattr(problem, f), float) for f in ("A", "b", "D"))
    ell = np.asarray(budgets, float)
    top = float(problem.max_tokens)
    grid = np.unique(np.concatenate([np.linspace(0.0, 1.0, 11), np.geomspace(1.0, top, 400)]))
    curve = lambda k, x: A[k] * -np.expm1(-b[k] * x) + D[k]
    fig, ax = plt.subplots(figsize=(8.5, 6.2), dpi=110)
    for k, name in enumerate(problem.names):
        color = task_color(k)
        ax.plot(grid, curve(k, grid), color=color, lw=1.8, label=_curve_label(name, A[k], b[k], D[k]))
        ax.plot([ell[k]], [curve(k, ell[k])], "o", color=color, mec="k", ms=7, zorder=3)
    for k, x, successes, trials in markers or ():
        lo, hi = _wilson(np.asarray(successes, float), np.asarray(trials, float))
        acc = np.asarray(successes, float) / np.maximum(trials, 1e-300)
        ax.errorbar(x, acc, yerr=np.maximum([acc - lo, hi - acc], 0.0), fmt="s", mfc="none", ms=5, capsize=2,
                    color=task_color(k), zorder=2)
    if markers:
        ax.errorbar([], [], yerr=[], fmt="s", mfc="none", color="0.3", label=marker_label or "measured (95% Wilson)")
    point = f"{value_label('arrival_rate', float(problem.arrival_rate), fmt='g')}, {value_label('alpha', float(problem.alpha), fmt='g')}"
    ax.plot([], [], "o", color="0.6", mec="k", label=f"optimal budget ℓ*_k at {point}")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(0.0, top)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(axis_label("thinking_budget", note="linear below 1, log above"))
    ax.set_ylabel(axis_label("task_accuracy"))
    ax.grid(alpha=0.3)
    ax.set_title(title or r"Fitted accuracy $p_k(\ell) = A_k(1 - e^{-b_k \ell}) + D_k$ (eq. 2)", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    _save(fig, plt, path)


def _policy_name(label: str) -> str:
    """A policy's name as a tick label: the unit after a budget (`uniform ℓ = 100 tokens`),
    wrapped to fit under its bar."""
    label = re.sub(r"(ℓ\S* = \d+(?:\.\d+)?)(?! ?tokens)", r"\1 tokens", label)
    return textwrap.fill(label, 12)


def plot_policies(policies, names, path, title: str = "") -> None:
    """The paper's Fig. 3: J under each allocation policy (bars, value on top;
    simulated J with its 95% interval as black markers where given) and, on the
    right, the budget each policy gives each task (grouped bars, task colours).

    `policies`: a list of dicts with `label`, `budgets` (N,), `objective`, and
    optionally `simulated` and `halfwidth` (the simulated J and its 95% half-width).
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.4), dpi=110, gridspec_kw={"width_ratios": [1, 1.25]})
    x = np.arange(len(policies))
    values = np.array([p["objective"] for p in policies], float)
    shades = ["0.45" if "optim" in p["label"] else "0.75" for p in policies]
    left.bar(x, values, color=shades, edgecolor="k", width=0.65)
    tall = 0.3 * np.nanmax(np.abs(values))
    for i, v in enumerate(values):  # inside the bar, or above it when the bar is short
        inside = abs(v) >= tall
        left.text(x[i] - 0.12, v / 2 if inside else max(v, 0.0), f" {value_label('objective', v)}", rotation=90,
                  ha="center", va="center" if inside else "bottom", fontsize=8,
                  color="w" if inside and shades[i] == "0.45" else "k")
    sim = [(i, p["simulated"], p["halfwidth"]) for i, p in enumerate(policies) if p.get("simulated") is not None]
    if sim:
        i, v, h = map(np.asarray, zip(*sim))
        left.errorbar(i + 0.15, v, yerr=h, fmt="o", color="k", ms=4, capsize=3, label="simulated J (95% interval)")
        left.legend(fontsize=8, loc="upper left")
    labels = [_policy_name(p["label"]) for p in policies]
    left.set_xticks(x, labels, fontsize=7)
    left.set_xlabel("allocation policy")
    left.set_ylabel(axis_label("objective", note="α · accuracy − E[T]"))
    left.set_title("objective J(ℓ) per policy (eq. 7)", fontsize=10)
    left.grid(axis="y", alpha=0.3)
    budgets = np.array([p["budgets"] for p in policies], float)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        right.bar(x + (k - (len(names) - 1) / 2) * width, budgets[:, k], width, color=task_color(k), label=name)
    for i in np.nonzero(~np.any(budgets > 0, axis=1))[0]:
        right.text(x[i], 0.0, "0 for\nevery task", ha="center", va="bottom", fontsize=8)
    right.set_xticks(x, labels, fontsize=7)
    right.set_xlabel("allocation policy")
    right.set_ylabel(axis_label("thinking_budget"))
    right.set_title("budget given to each task", fontsize=10)
    right.legend(fontsize=8, ncol=2)
    right.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, plt, path)


def plot_load_budgets(load: dict, names, path, mark: float | None = None, title: str = "") -> None:
    """ℓ*_k against the arrival rate λ, a line per task, with the best uniform
    budget (dashed) and the utilisation ρ = λE[S] at ℓ* (right axis, dotted).
    `load` is the `load` part of :func:`jaxalloc.reproduce.reproduce`'s summary."""
    plt = _pyplot()
    lam = np.asarray(load["arrival_rate"], float)
    budgets = np.asarray(load["budgets"], float)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for k, name in enumerate(names):
        zero = not np.any(budgets[:, k] > 0)
        ax.plot(lam, budgets[:, k], color=task_color(k), lw=1.8, label=f"ℓ* {name}" + (" (0 at every λ)" if zero else ""))
    ax.plot(lam, load["uniform_budget"], "k--", lw=1.4, label="best uniform budget (same ℓ for all tasks)")
    if mark is not None:
        ax.axvline(mark, color="0.6", ls="-.", lw=1, label=f"paper's operating point {value_label('arrival_rate', mark, fmt='g')}")
    _log_scale(ax, "x")
    ax.set_xlabel(axis_label("arrival_rate", note="log scale"))
    ax.set_ylabel(axis_label("budget"))
    ax.grid(alpha=0.3)
    rho_ax = ax.twinx()
    rho_ax.plot(lam, load["utilization"], color="0.3", ls=":", lw=2)
    rho_ax.set_ylim(0.0, 1.0)
    rho_ax.set_ylabel(axis_label("utilization", note="at ℓ*, dotted"))
    ax.set_title(title or "Optimal budgets as the load grows to saturation", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, plt, path)


def plot_load_gain(load: dict, path, mark: float | None = None, title: str = "") -> None:
    """Top: the gain in J of the optimal integer allocation over the best uniform
    integer budget, against λ. Bottom (log scale): the integer-rounding loss
    J(ℓ*) − J(ℓ_int) and its bound J(ℓ*) − J̄ (eq. 41, where its assumption holds)."""
    plt = _pyplot()
    lam = np.asarray(load["arrival_rate"], float)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), dpi=110, sharex=True)
    top.plot(lam, load["gain"], "k-", lw=1.8, label="J(optimal integer ℓ) − J(best uniform integer ℓ)")
    top.set_ylabel(axis_label("gain"))
    top.grid(alpha=0.3)
    loss, gap = np.asarray(load["integer_loss"], float), np.asarray(load["bound_gap"], float)
    shown = loss > 0
    bottom.plot(lam[shown], loss[shown], "k-", marker=".", lw=1.4, label="rounding loss J(ℓ*) − J(ℓ_int), eq. 39")
    valid = np.isfinite(gap) & (gap > 0)
    bottom.plot(lam[valid], gap[valid], "k--", lw=1.4, label="bound J(ℓ*) − J̄(ℓ*), eq. 41")
    _log_scale(bottom, "y")
    _log_scale(bottom, "x")
    bottom.set_xlabel(axis_label("arrival_rate", note="log scale"))
    bottom.set_ylabel(axis_label("loss", note="log scale"))
    bottom.grid(alpha=0.3, which="both")
    for ax in (top, bottom):
        if mark is not None:
            ax.axvline(mark, color="0.6", ls="-.", lw=1, label=f"paper's {value_label('arrival_rate', mark, fmt='g')}")
        ax.legend(fontsize=8)
    top.set_title(title or "Beyond the paper: gain over uniform budgets and the cost of integer budgets", fontsize=10)
    _save(fig, plt, path)


def plot_server_load(servers: dict, names, path, mark: float | None = None, title: str = "") -> None:
    """Fig. 7 of `jaxalloc reproduce`: top, ℓ*_k against λ for each server
    (solid: one FIFO server, the paper's; dashed: continuous batching); bottom,
    J(ℓ*) for each. Points where a server is unstable or its solve did not
    converge are left out. `servers` is the `servers` part of
    :func:`jaxalloc.reproduce.reproduce`'s summary (:func:`~jaxalloc.reproduce.server_study`)."""
    plt = _pyplot()
    lam = np.asarray(servers["arrival_rate"], float)
    keys = [k for k in servers if k != "arrival_rate"]
    styles = ["-", "--", ":", "-."]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7.5), dpi=110, sharex=True)
    for i, key in enumerate(keys):
        s = servers[key]
        budgets = np.array([[np.nan] * len(names) if row is None else row for row in s["budgets"]], float)
        label = _server_label(s["server"])
        for k, name in enumerate(names):
            top.plot(lam, budgets[:, k], color=task_color(k), ls=styles[i % 4], lw=1.6,
                     label=f"ℓ* {name}" if i == 0 else None)
        obj = np.array([np.nan if v is None else v for v in s["objective"]], float)
        bottom.plot(lam, obj, color="k", ls=styles[i % 4], lw=1.8, label=f"J(ℓ*), {label}")
        sat = s["saturation_rate"]
        for ax in (top, bottom):
            ax.axvline(sat, color="0.4", ls=styles[i % 4], lw=0.8)
        top.plot([], [], color="0.3", ls=styles[i % 4], label=f"{label}; saturates at λ = {sat:.3g}/s")
    for ax in (top, bottom):
        if mark is not None:
            ax.axvline(mark, color="0.6", ls="-.", lw=1)
        _log_scale(ax, "x")
        ax.grid(alpha=0.3)
    if mark is not None:
        bottom.plot([], [], color="0.6", ls="-.", lw=1, label=f"paper's {value_label('arrival_rate', mark, fmt='g')}")
    top.set_ylabel(axis_label("budget"))
    bottom.set_ylabel(axis_label("objective"))
    bottom.set_xlabel(axis_label("arrival_rate", note="log scale"))
    top.legend(fontsize=7, loc="upper right", ncol=2)
    bottom.legend(fontsize=8, loc="lower left")
    top.set_title(title or "Beyond the paper: optimal budgets and J against λ, one FIFO server and continuous batching",
                  fontsize=10)
    _save(fig, plt, path)


def plot_quantile_frontier(frontier: dict, path, mark: float | None = None, title: str = "") -> None:
    """Fig. 8 of `jaxalloc reproduce`: mean accuracy at ℓ*(α) against the 99th percentile of the
    system time (solid) and against the mean E[T] (dashed, for comparison), as α varies; the point of
    α = `mark` circled on both. `frontier` is :func:`jaxalloc.reproduce.quantile_frontier`'s output."""
    plt = _pyplot()
    alpha = np.asarray(frontier["alpha"], float)
    acc = np.asarray(frontier["accuracy"], float)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for key, style, label in (("p99", "-", "p99 of the system time (exact)"),
                              ("mean_system_time", "--", "mean system time E[T]")):
        x = np.array([np.nan if v is None else v for v in frontier[key]], float)
        ax.plot(x, acc, style, color="k", marker="." if key == "p99" else None, lw=1.6, label=f"accuracy against {label}")
        if mark is not None:
            at = int(np.argmin(np.abs(alpha - mark)))
            ax.plot(x[at], acc[at], "o", mfc="none", mec="C3", ms=9,
                    label=f"paper's {value_label('alpha', alpha[at], fmt='g')}" if key == "p99" else None)
    _log_scale(ax, "x")
    ax.set_xlabel(axis_label("system_time", note="p99 solid, mean E[T] dashed; log scale"))
    ax.set_ylabel(axis_label("accuracy"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or f"Beyond the paper: accuracy against latency at ℓ*(α), α from {alpha.min():g} to "
                          f"{alpha.max():g} (log-spaced)", fontsize=10)
    _save(fig, plt, path)


def _server_label(desc: dict) -> str:
    if desc["kind"] == "fifo":
        return "one FIFO server (paper)" if desc.get("servers", 1) == 1 else f"{desc['servers']} FIFO servers"
    if desc["kind"] == "batching":
        admission = f", h = {1e3 * desc['admission']:g} ms" if desc.get("admission") else ""
        return f"batching B = {desc['max_batch']}, β = {desc['batch_slowdown']:g}{admission}"
    return desc["kind"]
