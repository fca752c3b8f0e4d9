"""Write calibration/example_measurements.csv: SYNTHETIC measurements, not a real model.

Answers are drawn from the paper's Table I curves (Qwen3-8B on an A100):
correct ~ Bernoulli(A (1 − e^{−bℓ}) + D), service time (t0 + cℓ) × lognormal jitter
(coefficient of variation 5%), 100 made-up items per task, one run, eight budgets.
Run from the repository root: python calibration/make_example.py
"""

from pathlib import Path

import numpy as np

from jaxalloc.calibrate.data import append_rows
from jaxalloc.model import paper_profile

BUDGETS = (0, 32, 128, 512, 1024, 2048, 4096, 8192)
ITEMS = 100
CV = 0.05


OUT = Path(__file__).with_name("example_measurements.csv")


def main(path: Path = OUT, seed: int = 2024) -> None:
    paper = paper_profile()
    rng = np.random.default_rng(seed)
    sigma = np.sqrt(np.log1p(CV**2))
    rows = []
    for k, task in enumerate(paper.names):
        A, b, D, t0, c = (float(getattr(paper, f)[k]) for f in ("A", "b", "D", "t0", "c"))
        for ell in BUDGETS:
            p = A * -np.expm1(-b * ell) + D
            correct = rng.random(ITEMS) < p
            service = (t0 + c * ell) * rng.lognormal(-sigma**2 / 2, sigma, ITEMS)
            rows += [
                {"task": task, "budget": ell, "repeat": 0, "correct": bool(ok), "service_s": round(float(s), 4),
                 "item": f"{task.lower()}-{i:03d}"}
                for i, (ok, s) in enumerate(zip(correct, service))
            ]
    path.write_text(
        "# SYNTHETIC example, not a measurement: drawn from the paper's Table I curves by\n"
        f"# calibration/make_example.py (seed {seed}); see calibration/README.md.\n",
        encoding="utf-8",
    )
    append_rows(path, rows)


if __name__ == "__main__":
    main()
