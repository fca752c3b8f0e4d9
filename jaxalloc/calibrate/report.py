"""A calibration as plain data (`jaxalloc calibrate fit --json`) and as tables for people."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..model import Problem
from ..report import json_number as _num
from .fit import Calibration, FitFlag, flag_labels


def _pair(ci) -> list[float | None]:
    return [_num(ci[0]), _num(ci[1])]


def calibration_report(cal: Calibration, problem: Problem | None = None, profile: str | None = None,
                       prob_source: str = "counts") -> dict[str, Any]:
    """The dictionary behind `jaxalloc calibrate fit --json`.

    **Arguments:**

    - `cal`: :func:`~jaxalloc.calibrate.fit.fit_measurements`' result.
    - `problem`: the profile built from it, if any (adds `prob`, `arrival_rate`, `alpha`,
      `max_tokens`).
    - `profile`: the path the profile was written to, if any.
    - `prob_source`: where π came from (``"counts"``, ``"uniform"``, ``"given"``).

    **Returns:** keys `source`, `form`, `rows`, `level`, `tasks` (names), `fits` (per task:
    `task`, `budgets`, `answers`, `measured_accuracy`, `accuracy` and `latency` with
    estimates, `se`, `ci` and goodness of fit, `flags`), `flag_messages`, `profile` and,
    with a problem, the operating point and `prob`. Infinite values are null.
    """
    fits, seen = [], 0
    for t in cal.tasks:
        a, table = t.accuracy, t.table
        seen |= int(a.flags)
        entry: dict[str, Any] = {
            "task": t.name,
            "budgets": [float(x) for x in table.budgets],
            "answers": [float(x) for x in table.trials],
            "measured_accuracy": [float(x) for x in table.successes / table.trials],
            "accuracy": {
                "A": _num(a.A), "b": _num(a.b), "D": _num(a.D),
                "se": {"A": _num(a.se_A), "b": _num(a.se_b), "D": _num(a.se_D)},
                "ci": {"A": _pair(a.ci_A), "b": _pair(a.ci_b), "D": _pair(a.ci_D)},
                "loglik": _num(a.loglik), "deviance": _num(a.deviance), "pearson_chi2": _num(a.pearson),
                "df": int(a.df), "p_value": _num(a.p_value), "dispersion": _num(a.dispersion),
                "flat_p_value": _num(a.flat_p_value), "rmse": _num(a.rmse), "steps": int(a.steps),
                "flags": flag_labels(a.flags),
            },
            "latency": None,
        }
        if t.latency is not None:
            lat = t.latency
            seen |= lat.flags
            entry["latency"] = {
                "t0": _num(lat.t0), "c": _num(lat.c), "se": {"t0": _num(lat.se_t0), "c": _num(lat.se_c)},
                "ci": {"t0": _pair(lat.ci_t0), "c": _pair(lat.ci_c)}, "r2": _num(lat.r2),
                "max_rel_deviation": _num(lat.max_rel_deviation), "rows": lat.rows, "flags": flag_labels(lat.flags),
            }
        fits.append(entry)
    report: dict[str, Any] = {
        "source": cal.source, "form": cal.form, "rows": cal.rows, "level": cal.level,
        "tasks": list(cal.names), "fits": fits,
        "flag_messages": {f.label: f.message for f in FitFlag if seen & f},
        "profile": profile,
    }
    if problem is not None:
        report.update(
            prob=[float(x) for x in np.asarray(problem.prob)], prob_source=prob_source,
            arrival_rate=float(problem.arrival_rate), alpha=float(problem.alpha), max_tokens=float(problem.max_tokens),
        )
    return report


def _ci(value, ci, spec: str) -> str:
    fmt = lambda v: "inf" if v is None else format(v, spec)
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def format_calibration(report: dict[str, Any], title: str = "") -> str:
    """Fixed-width tables of a :func:`calibration_report`: accuracy fit, service-time fit,
    the task mix and what each flag means."""
    width = max(8, *(len(n) for n in report["tasks"]))
    pct = round(100 * report["level"], 6)
    lines = [title] if title else []
    lines += [
        f"{report['rows']} rows ({report['form']} form), {len(report['tasks'])} tasks, {pct:g}% intervals",
        "",
        "accuracy p(ℓ) = A(1 − exp(−bℓ)) + D (eq. 2), binomial maximum likelihood",
        f"{'task':<{width}}  {'A [CI]':<25}  {'b (1/token) [CI]':<32}  {'D [CI]':<25}  {'deviance/df':>12}  {'p-value':>7}",
    ]
    notes = []
    for f in report["fits"]:
        a = f["accuracy"]
        lines.append(
            f"{f['task']:<{width}}  {_ci(a['A'], a['ci']['A'], '.4f'):<25}  {_ci(a['b'], a['ci']['b'], '.3e'):<32}  "
            f"{_ci(a['D'], a['ci']['D'], '.4f'):<25}  {a['deviance']:>7.2f}/{a['df']:<4d}  {a['p_value']:>7.3f}"
        )
        notes += [(f["task"], flag) for flag in a["flags"]]
    if any(f["latency"] is not None for f in report["fits"]):
        lines += [
            "",
            "service time t(ℓ) = t0 + cℓ (eq. 1), least squares",
            f"{'task':<{width}}  {'t0 (s) [CI]':<28}  {'c (s/token) [CI]':<32}  {'R²':>7}  {'max dev':>7}",
        ]
        for f in report["fits"]:
            lat = f["latency"]
            if lat is None:
                lines.append(f"{f['task']:<{width}}  (no service times)")
                continue
            lines.append(
                f"{f['task']:<{width}}  {_ci(lat['t0'], lat['ci']['t0'], '.4f'):<28}  "
                f"{_ci(lat['c'], lat['ci']['c'], '.3e'):<32}  {lat['r2']:>7.4f}  {100 * lat['max_rel_deviation']:>6.1f}%"
            )
            notes += [(f["task"], flag) for flag in lat["flags"]]
    if "prob" in report:
        source = {"counts": "from the answers per budget in the file", "uniform": "uniform", "given": "given"}
        shares = ", ".join(f"{n} {p:.4f}" for n, p in zip(report["tasks"], report["prob"]))
        lines += ["", f"task mix π ({source.get(report['prob_source'], report['prob_source'])}): {shares}"]
    if notes:
        lines += ["", "flags:"]
        lines += [f"  {task}: {flag}: {report['flag_messages'][flag]}" for task, flag in notes]
    if report.get("profile"):
        lines += [
            "",
            (f"profile written to {report['profile']} (λ = {report['arrival_rate']:g}/s, α = {report['alpha']:g}, "
             f"ℓ_max = {report['max_tokens']:g}); solve it with: jaxalloc solve {report['profile']}"),
        ]
    return "\n".join(lines)


def profile_text(problem: Problem, report: dict[str, Any], name: str) -> str:
    """The TOML profile of `problem` (:func:`~jaxalloc.model.problem_to_toml`) under a comment
    header that records where it came from and the fitted intervals."""
    from ..model import problem_to_toml

    pct = round(100 * report["level"], 6)
    head = [
        f"# Fitted by `jaxalloc calibrate fit` from {report['source']} ({report['rows']} rows, {report['form']} form).",
        "# accuracy p(l) = A (1 - exp(-b l)) + D by binomial maximum likelihood; t(l) = t0 + c l by least squares.",
        f"# {pct:g}% intervals per task:",
    ]
    for f in report["fits"]:
        a, lat = f["accuracy"], f["latency"]
        head.append(
            f"#   {f['task']}: A {_ci(a['A'], a['ci']['A'], '.4g')}, b {_ci(a['b'], a['ci']['b'], '.3e')}, "
            f"D {_ci(a['D'], a['ci']['D'], '.4g')}, t0 {_ci(lat['t0'], lat['ci']['t0'], '.4g')}, "
            f"c {_ci(lat['c'], lat['ci']['c'], '.4g')}" + (f"; flags: {', '.join(a['flags'] + lat['flags'])}"
                                                          if a["flags"] or lat["flags"] else "")
        )
    return "\n".join(head) + "\n" + problem_to_toml(problem, name=name)
