"""Every figure: axes and legends carry units, and no two tick labels overlap.

Each plotting function of :mod:`jaxalloc.plots` draws a small figure from made-up
inputs (no solving: a sweep's result is a real plan over a hand-made table), the
figure is caught as it is saved, drawn with the Agg backend, and checked.
"""

import re
from types import SimpleNamespace

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.figure
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg

import jaxalloc as ja
from jaxalloc import plots
from jaxalloc.sweep import SweepResult, plan_sweep

NAMES = ("AIME", "GSM8K", "GPQA", "CRUXEval", "BBH", "ARC-Challenge")
UNIT = re.compile(r"\([^()]*\S[^()]*\)")  # "(s)", "(queries/s, log scale)"
# quantities that are fractions: "A = 0.5" needs no unit after the number
DIMENSIONLESS = {"A", "D", "π", "ρ", "p", "p_k(ℓ)"}
VALUE = re.compile(r"(\S+) = (-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?)(.*?)(?=,|;|\)|$)", re.MULTILINE)


@pytest.fixture
def figures(monkeypatch):
    """The figures saved while the test runs (each plotting function saves one)."""
    saved = []
    save = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        saved.append(fig)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved


def _drawn_ticks(axis):
    # the ticks matplotlib draws: inside the view, minor ticks under major ones removed
    return axis._update_ticks()


def _tick_labels(axis, renderer):
    out = []
    for tick in _drawn_ticks(axis):
        for label in (tick.label1, tick.label2):
            if label.get_visible() and label.get_text().strip():
                out.append((label.get_text(), label.get_window_extent(renderer)))
    return out


def _overlaps(a, b, gap=2.0):
    """Two label boxes closer than `gap` pixels in both directions (touching reads as one label)."""
    return (min(a.x1, b.x1) - max(a.x0, b.x0) > -gap) and (min(a.y1, b.y1) - max(a.y0, b.y0) > -gap)


def _numeric(text):
    """A number as a tick label writes it: 0.5, −2, $\\mathdefault{5\\times10^{-5}}$."""
    text = re.sub(r"\\mathdefault|[${}]", "", text).replace("−", "-").replace("\\times10^", "e").replace("10^", "1e")
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_figure(fig):
    """Assert units on every labelled axis and in every legend, and no overlapping tick labels."""
    canvas = FigureCanvasAgg(fig)  # pyplot has closed the figure: give it a canvas again
    canvas.draw()
    renderer = canvas.get_renderer()
    problems = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        is_colorbar = getattr(ax, "_colorbar", None) is not None
        for name, axis, label in (("x", ax.xaxis, ax.get_xlabel()), ("y", ax.yaxis, ax.get_ylabel())):
            if not axis.get_visible():
                continue  # the x axis of a twinx
            ticks = _tick_labels(axis, renderer)
            for i, (ta, ea) in enumerate(ticks):
                for tb, eb in ticks[i + 1:]:
                    if _overlaps(ea, eb):
                        problems.append(f"{ax.get_title()!r} {name} axis: tick labels {ta!r} and {tb!r} overlap")
            if not ticks:
                continue  # a shared or hidden axis: the label is on its neighbour
            if not label.strip():
                problems.append(f"{ax.get_title()!r} {name} axis{' (colorbar)' if is_colorbar else ''}: no label")
            elif all(_numeric(text) for text, _ in ticks) and not UNIT.search(label):
                problems.append(f"{ax.get_title()!r} {name} axis: label {label!r} has no unit in parentheses")
        legends = [ax.get_legend()] if ax.get_legend() is not None else []
        for legend in legends:
            for text in [legend.get_title().get_text()] + [t.get_text() for t in legend.get_texts()]:
                for symbol, number, rest in VALUE.findall(text):
                    if symbol.lstrip("(") not in DIMENSIONLESS and not rest.strip():
                        problems.append(f"legend entry {text!r}: {symbol} = {number} has no unit")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- inputs


def sweep_result(axes, columns):
    """A real SweepResult (plan of the paper profile over `axes`) over a made-up table."""
    plan = plan_sweep(ja.paper_profile(), axes)
    grids = np.meshgrid(*[a.values for a in plan.axes], indexing="ij")
    data = {a.name: g.ravel() for a, g in zip(plan.axes, grids)}
    data.update({k: np.broadcast_to(v, plan.shape).ravel() for k, v in columns(*grids).items()})
    return SweepResult(plan, None, pa.table(data), {}, 1.0, plan.size, True)


def frontier_columns(lam, alpha):
    """E[T] from 0.17 s to 5 s and accuracy rising with α: the report's sweep.frontier.png."""
    delay = 0.17 * (alpha / alpha.min()) * (1 + lam)
    cols = {"mean_system_time": delay, "accuracy": 0.26 + 0.05 * np.log1p(delay) / (1 + lam),
            "objective": alpha * 0.4 - delay, "status": np.full(lam.shape, "converged", dtype=object)}
    for k, name in enumerate(NAMES):
        cols[f"budget_{name}"] = np.maximum(0.0, 10 * k * alpha - 300 * lam * k)
    return cols


def budget_columns(*grids):
    """Budgets rising along both axes (none for AIME), the largest first-axis values unstable."""
    x, y = grids[0], grids[-1]
    cols = frontier_columns(x, y)
    for k, name in enumerate(NAMES):
        cols[f"budget_{name}"] = 50.0 * k * (1 + x / x.max()) * (1 + y / y.max())
    cols["status"] = np.where(x > x.max() * 0.9, "unstable_queue", "converged").astype(object)
    return cols


def draw_sweeps(tmp_path):
    frontier = sweep_result({"arrival_rate": "0.01:0.3:20", "alpha": "5:150:20"}, frontier_columns)
    plots.plot_sweep_frontier(frontier, tmp_path / "f.png", title="paper")
    plots.plot_sweep_heatmaps(frontier, tmp_path / "h.png", title="paper")
    per_task = sweep_result({"arrival_rate": "0.01:0.3:12:log", "b:GSM8K": "1e-4:1e-2:9:log"}, budget_columns)
    plots.plot_sweep_heatmaps(per_task, tmp_path / "b.png", title="paper")
    narrow = sweep_result({"alpha": "20:60:9:log", "arrival_rate": "0.05:0.3:7:log"}, budget_columns)
    plots.plot_sweep_heatmaps(narrow, tmp_path / "n.png")
    plots.plot_sweep_frontier(narrow, tmp_path / "nf.png")
    one = sweep_result({"max_tokens": "100:10000:8:log"}, budget_columns)
    plots.plot_sweep_heatmaps(one, tmp_path / "one.png")


def draw_simulation(tmp_path):
    rng = np.random.default_rng(0)
    times = rng.lognormal(0.0, 1.2, (2, 4000))
    report = {"tasks": list(NAMES[:3]), "theory_mean_system_time": 2.2, "mean_system_time": 2.18,
              "p50": 0.42, "p95": 5.9, "p99": 9.2}
    stored = SimpleNamespace(system_times=times, types=rng.integers(0, 3, times.shape), queries=4000, warmup=0)
    plots.plot_system_time_histogram(stored, report, tmp_path / "s.png", title="simulated")
    edges = np.geomspace(1e-3, 1e3, 61)
    pooled = SimpleNamespace(system_times=np.zeros((2, 0)), histogram=np.histogram(times[0], edges)[0][None],
                             bin_edges=edges)
    plots.plot_system_time_histogram(pooled, report, tmp_path / "p.png")


def draw_sensitivity(tmp_path):
    budget = np.linspace(0, 1000, 101)
    objective = 9.75 - 1e-5 * (budget - 341) ** 2
    curve = {"budget": budget, "objective": objective, "lower_bound": objective - 0.03}
    simulated = {"budget": budget[::10], "objective": objective[::10], "halfwidth": np.full(11, 0.07)}
    plots.plot_budget_curve(curve, "GSM8K", tmp_path / "c.png", simulated=simulated)
    for param, values in (("arrival_rate", np.linspace(0.02, 0.3, 29)), ("alpha", np.linspace(1, 100, 20)),
                          ("max_tokens", np.linspace(100, 4000, 20))):
        lines = np.outer(values, np.arange(1, 4))
        plots.plot_parameter_curve({"value": values, "budgets": lines, "derivative": -lines}, param, NAMES[:3],
                                   tmp_path / f"{param}.png")


def draw_calibration(tmp_path):
    tasks = []
    budgets = np.array([0, 32, 128, 512, 2048, 8192.0])
    for k, (A, b, D, t0, c) in enumerate([(0.7, 3e-3, 0.28, 0.15, 0.014), (0.4, 0.17, 0.49, 0.06, 0.012)]):
        p = A * -np.expm1(-b * budgets) + D
        service_budgets = np.repeat(budgets, 5)
        table = SimpleNamespace(budgets=budgets, successes=np.round(100 * p), trials=np.full(6, 100.0),
                                service_budgets=service_budgets, service_times=t0 + c * service_budgets + 0.01 * k,
                                service_counts=None)
        tasks.append(SimpleNamespace(name=NAMES[k], table=table, accuracy=SimpleNamespace(A=A, b=b, D=D),
                                     latency=SimpleNamespace(t0=t0, c=c)))
    plots.plot_calibration(SimpleNamespace(tasks=tasks), tmp_path / "cal.png", title="fit")


def draw_reproduction(tmp_path):
    paper = ja.paper_profile()
    star = np.array([0.0, 340.89, 0.0, 0.0, 346.24, 30.14])
    markers = [(1, [0, 64, 256, 1024], [28, 40, 60, 70], [100, 100, 100, 100])]
    plots.plot_accuracy_curves(paper, star, tmp_path / "fig2.png", markers=markers, marker_label="measured")
    policies = [{"label": f"uniform ℓ = {u}", "budgets": [float(u)] * 6, "objective": j, "simulated": j + 0.01,
                 "halfwidth": 0.07} for u, j in ((0, 5.83), (100, 8.24), (500, 1.79))]
    policies += [{"label": "optimal ℓ* (continuous)", "budgets": star.tolist(), "objective": 9.754203},
                 {"label": "optimal integer (eq. 39)", "budgets": star.round().tolist(), "objective": 9.754199},
                 {"label": "best uniform ℓ = 121 (not in paper)", "budgets": [121.0] * 6, "objective": 8.2525}]
    plots.plot_policies(policies, NAMES, tmp_path / "fig3.png")
    lam = np.geomspace(0.01, 1.0, 30)
    load = {"arrival_rate": lam, "budgets": np.outer(1 / lam, np.arange(6)), "uniform_budget": 50 / lam,
            "utilization": lam * 0.9, "gain": 1.5 / (1 + lam), "integer_loss": 1e-5 * lam,
            "bound_gap": 0.03 * np.ones_like(lam)}
    plots.plot_load_budgets(load, NAMES, tmp_path / "fig5.png", mark=0.1)
    plots.plot_load_gain(load, tmp_path / "fig6.png", mark=0.1)


DRAWINGS = [draw_sweeps, draw_simulation, draw_sensitivity, draw_calibration, draw_reproduction]


@pytest.mark.parametrize("draw", DRAWINGS, ids=[d.__name__[5:] for d in DRAWINGS])
def test_every_figure_has_units_and_readable_ticks(draw, figures, tmp_path):
    draw(tmp_path)
    assert figures, "no figure was saved"
    for fig in figures:
        check_figure(fig)
    for path in tmp_path.iterdir():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_frontier_legend_and_log_axis(figures, tmp_path):
    """The issue's figure: `arrival_rate = 0.1085` legends, and 2×10⁻¹3×10⁻¹4×10⁻¹ minor labels
    running into each other on an axis from 0.17 to 6.6 s."""
    result = sweep_result({"arrival_rate": "0.01:0.3:20", "alpha": "5:150:20"}, frontier_columns)
    plots.plot_sweep_frontier(result, tmp_path / "f.png")
    (fig,) = figures
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "λ = 0.01 queries/s" and all(t.endswith(" queries/s") for t in legend)
    assert ax.get_xlabel().startswith("mean system time E[T] (s")
    minor = [t.label1.get_text() for t in _drawn_ticks(ax.xaxis) if t.label1.get_text()]
    assert "×" not in "".join(minor) and {"0.2", "0.5", "1", "2"} <= set(minor)


def test_one_table_of_labels():
    """Labels and units come from plots.QUANTITIES, per-task fields included."""
    assert plots.axis_label("arrival_rate") == "arrival rate λ (queries/s)"
    assert plots.axis_label("arrival_rate", short=True) == "λ (queries/s)"
    assert plots.axis_label("alpha", short=True) == "α (s per unit accuracy)"
    assert plots.axis_label("b:GSM8K", short=True) == "b (1/token), GSM8K"
    assert plots.axis_label("b", "GSM8K", short=True) == "b (1/token), GSM8K"
    assert plots.axis_label("budget_BBH", short=True) == "ℓ* (tokens), BBH"
    assert plots.axis_label("mean_system_time", note="log scale") == "mean system time E[T] (s, log scale)"
    assert plots.value_label("arrival_rate", 0.1085) == "λ = 0.1085 queries/s"
    assert plots.value_label("b:GSM8K", 0.001) == "b = 0.001/token, GSM8K"
    assert plots.value_label("prob", 0.25) == "π = 0.25"
    sweep_fields = ("arrival_rate", "alpha", "max_tokens", "prob", "A", "b", "D", "t0", "c", "objective",
                    "accuracy", "mean_system_time", "utilization", "budget_AIME", "integer_budget_AIME")
    for field in sweep_fields:
        assert UNIT.search(plots.axis_label(field)), field
    with pytest.raises(KeyError, match="QUANTITIES"):
        plots.axis_label("speed")


@pytest.mark.parametrize("lo, hi", [(0.15, 5.5), (0.2, 0.6), (0.01, 0.3), (1e-4, 1e-2), (3e-5, 4e-4), (10, 90000),
                                    (0.21, 0.23)])
def test_log_axis_labels_never_overlap(lo, hi, figures, tmp_path):
    """Log axes of any span on a narrow panel (the sweep's heat maps are 3.8 inches wide);
    a span under half a decade stays linear (a log axis would show no tick there)."""
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(2.6, 2.6))
    ax.plot([lo, hi], [lo, hi])
    plots._log_scale(ax, "x")
    plots._log_scale(ax, "y")
    ax.set_xlabel("x (s)")
    ax.set_ylabel("y (s)")
    plots._save(fig, plt, tmp_path / "log.png")
    check_figure(figures[0])
    labels = [t.label1.get_text() for t in _drawn_ticks(figures[0].axes[0].xaxis) if t.label1.get_text()]
    assert labels, "an axis with no tick label"
