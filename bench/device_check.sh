#!/usr/bin/env bash
# The prepared accelerator run of the sweep benchmark (the GPU figure of the sweeps issue):
# on a machine with a GPU and JAX for it, from the repository root,
#     bash bench/device_check.sh [--quick]
# No install needed beyond the image's jax, equinox, jaxtyping, pyarrow, scipy, tqdm:
# the package is imported from the checkout. Results go to $OUT (default ./device-out):
# devices.txt, bench_sweep.log and bench_sweep.json.
set -euo pipefail
out="${OUT:-device-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
"$py" -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/devices.txt"
"$py" bench/bench_sweep.py "$@" --json "$out/bench_sweep.json" 2>&1 | tee "$out/bench_sweep.log"
