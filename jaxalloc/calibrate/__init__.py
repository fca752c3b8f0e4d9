"""Calibration: fit a profile (eqs. 1 and 2) to measurements of your own model.

- :mod:`jaxalloc.calibrate.data`: the measurement format (CSV/Parquet), its reader and
  the row writer a measuring tool uses.
- :mod:`jaxalloc.calibrate.fit`: the accuracy and service-time fits, and the profile.
- :mod:`jaxalloc.calibrate.cli`: `jaxalloc calibrate ...`.

The fitting names are loaded on first use, so that the command line (which registers
`calibrate` for every command) does not import optimistix for `jaxalloc solve`.

Measuring a model (needs the ``calibrate`` extra: flax, transformers, safetensors; not
imported here): :mod:`~jaxalloc.calibrate.qwen3` (Flax NNX Qwen3, safetensors loading),
:mod:`~jaxalloc.calibrate.generate` (KV cache, jitted prefill/decode, budget forcing),
:mod:`~jaxalloc.calibrate.openai_backend` (a vLLM/SGLang server),
:mod:`~jaxalloc.calibrate.benchmarks` (loaders and graders),
:mod:`~jaxalloc.calibrate.measure` (the resumable measuring run),
:mod:`~jaxalloc.calibrate.settings` (the settings a measurement file was measured with).
"""

from .data import (
    AGGREGATED_COLUMNS,
    MEASUREMENT_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    CalibrationError,
    Measurements,
    TaskTable,
    append_rows,
    measured_keys,
    measurements_from_rows,
    read_measurements,
    task_tables,
)

_FIT_NAMES = (
    "AccuracyFit",
    "Calibration",
    "FitFlag",
    "LatencyFit",
    "TaskFit",
    "accuracy_curve",
    "calibrated_problem",
    "fit_accuracy",
    "fit_latency",
    "fit_measurements",
    "task_shares",
)


def __getattr__(name: str):
    if name in _FIT_NAMES:
        from . import fit

        return getattr(fit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATED_COLUMNS",
    "MEASUREMENT_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "AccuracyFit",
    "Calibration",
    "CalibrationError",
    "FitFlag",
    "LatencyFit",
    "Measurements",
    "TaskFit",
    "TaskTable",
    "accuracy_curve",
    "append_rows",
    "calibrated_problem",
    "fit_accuracy",
    "fit_latency",
    "fit_measurements",
    "measured_keys",
    "measurements_from_rows",
    "read_measurements",
    "task_shares",
    "task_tables",
]
