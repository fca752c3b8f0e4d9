"""Calibration: fit a profile (eqs. 1 and 2) to measurements of your own model.

- :mod:`jaxalloc.calibrate.data`: the measurement format (CSV/Parquet), its reader and
  the row writer a measuring tool uses.
- :mod:`jaxalloc.calibrate.fit`: the accuracy and service-time fits, and the profile.

Measuring a model (needs the ``calibrate`` extra: flax, transformers, safetensors; not
imported here): :mod:`~jaxalloc.calibrate.qwen3` (Flax NNX Qwen3, safetensors loading),
:mod:`~jaxalloc.calibrate.generate` (KV cache, jitted prefill/decode, budget forcing),
:mod:`~jaxalloc.calibrate.openai_backend` (a vLLM/SGLang server),
:mod:`~jaxalloc.calibrate.benchmarks` (loaders and graders),
:mod:`~jaxalloc.calibrate.measure` (the resumable measuring run).
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
from .fit import (
    AccuracyFit,
    Calibration,
    FitFlag,
    LatencyFit,
    TaskFit,
    accuracy_curve,
    calibrated_problem,
    fit_accuracy,
    fit_latency,
    fit_measurements,
    task_shares,
)
