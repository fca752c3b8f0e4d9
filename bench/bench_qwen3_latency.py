"""Service-time model t(ℓ) = t0 + cℓ (eq. 1) of jaxalloc's Flax Qwen3 at batch 1.

Builds the exact Qwen3-8B architecture (36 layers, hidden 4096, 32 query / 8
key-value heads of 128, MLP 12288, vocabulary 151936, untied head) with random
bfloat16 weights — decoding time does not depend on the weight values — and
times, for several prompt lengths P, the prefill of P tokens plus ℓ decoded
tokens for several ℓ with jaxalloc's engine (the jitted prefill and decode
loop used by ``jaxalloc calibrate measure``; compile and warm-up excluded,
``block_until_ready``, the median of ``--repeats`` runs). t0 and c are the
least-squares line through (ℓ, service time) per prompt length.

c is printed beside the memory-bandwidth bound: every decoded token reads
all weights except the embedding table (only one row is gathered), so
c ≥ (weight bytes − embedding bytes) ÷ bandwidth; the bound with the KV cache
read added is printed too. The bandwidth comes from a table of GPUs by
``device_kind`` or ``--bandwidth GB/s``. Target (issue 7): c within 1.3× the
bound on a GPU. All requests share one cache length (the bucket of the
longest), so the decode loop compiles once and each prompt length compiles
one prefill.

On a machine without a GPU the default is a small configuration (same code,
float32) so the script stays tested; ``--quick`` is a smoke run of seconds.

Run:  python bench/bench_qwen3_latency.py [--quick] [--config {8b,small,tiny}] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxalloc.calibrate.generate import Engine
from jaxalloc.calibrate.qwen3 import QWEN3_8B, ModelConfig, random_model

CONFIGS = {
    "8b": QWEN3_8B,
    "small": ModelConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=64),
    "tiny": ModelConfig(vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32),
}

# Peak memory bandwidth in GB/s by device_kind substring (most specific first).
BANDWIDTH_GBS = [
    ("H200", 4800), ("H100 PCIe", 2000), ("H100", 3350), ("GH200", 4000), ("B200", 8000),
    ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555), ("L40S", 864), ("L4", 300),
    ("A10G", 600), ("A10", 600), ("RTX 4090", 1008), ("V100", 900), ("T4", 320),
]


def device_bandwidth(kind: str) -> float | None:
    """Peak bandwidth (bytes/s) of a device kind from the table, None if unknown."""
    for key, gbs in BANDWIDTH_GBS:
        if key.lower() in kind.lower():
            return gbs * 1e9
    return None


def read_bytes_per_token(config: ModelConfig, itemsize: int, cache_len: int = 0) -> tuple[float, float]:
    """(weight bytes read per decoded token, KV-cache bytes read per token at `cache_len` positions)."""
    embedding = config.vocab_size * config.hidden_size
    weights = (config.weight_count() - embedding) * itemsize
    kv = 2 * config.num_hidden_layers * cache_len * config.num_key_value_heads * config.head_dim * itemsize
    return float(weights), float(kv)


def fit_line(x, y):
    """Least squares y = t0 + c x; returns (t0, c, R²)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    c, t0 = np.polyfit(x, y, 1)
    resid = y - (t0 + c * x)
    ss = float(np.sum((y - y.mean()) ** 2))
    return float(t0), float(c), 1.0 - float(np.sum(resid ** 2)) / ss if ss > 0 else float("nan")


def measure(engine: Engine, prompt_lengths, budgets, repeats, seed=0):
    """Median prefill/decode/service time per (prompt length, budget)."""
    rng = np.random.default_rng(seed)
    vocab = engine.config.vocab_size
    min_cache = max(prompt_lengths) + max(budgets)
    rows = []
    for length in prompt_lengths:
        prompt = rng.integers(0, vocab, length).tolist()
        for budget in budgets:
            runs = [engine.run(prompt, think=budget, min_cache=min_cache) for _ in range(repeats)]
            assert all(r.think == budget for r in runs)
            rows.append({
                "prompt_tokens": length, "budget": budget,
                "prefill_s": float(np.median([r.prefill_s for r in runs])),
                "decode_s": float(np.median([r.decode_s for r in runs])),
                "service_s": float(np.median([r.prefill_s + r.decode_s for r in runs])),
                "cache_len": runs[0].buckets[1],
            })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run in seconds (tiny config, few points)")
    ap.add_argument("--config", choices=list(CONFIGS), help="model size (default: 8b on a GPU, small otherwise)")
    ap.add_argument("--prompts", help="prompt lengths, comma-separated (default 128,512,2048)")
    ap.add_argument("--budgets", help="decoded tokens ℓ, comma-separated (default 0,64,256,1024)")
    ap.add_argument("--repeats", type=int, help="timed runs per point, the median counts (default 3)")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"],
                    help="parameter dtype (default bfloat16 on a GPU, float32 on CPU)")
    ap.add_argument("--bandwidth", type=float, metavar="GB/s", help="memory bandwidth (default: from the GPU table)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    device = jax.devices()[0]
    gpu = device.platform == "gpu"
    name = args.config or ("tiny" if args.quick else "8b" if gpu else "small")
    config = CONFIGS[name]
    dtype = jnp.dtype(args.dtype or ("bfloat16" if gpu else "float32"))
    prompts = [int(x) for x in (args.prompts or ("16,64" if args.quick else "128,512,2048")).split(",")]
    budgets = [int(x) for x in (args.budgets or ("0,8,32" if args.quick else "0,64,256,1024")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    bandwidth = args.bandwidth * 1e9 if args.bandwidth else device_bandwidth(device.device_kind) if gpu else None

    t = time.perf_counter()
    model = random_model(config, param_dtype=dtype, seed=0)
    jax.block_until_ready(jax.tree.leaves(model))
    built = time.perf_counter() - t
    engine = Engine(model, min_bucket=16)
    t = time.perf_counter()
    rows = measure(engine, prompts, budgets, repeats)
    measured = time.perf_counter() - t

    weights, _ = read_bytes_per_token(config, dtype.itemsize)
    print(f"Qwen3 '{name}' config: {config.weight_count() / 1e9:.3f} B parameters, {dtype.name}, "
          f"on {device.device_kind} ({platform.machine()}, jax {jax.__version__}); "
          f"built in {built:.1f} s, measured in {measured:.1f} s (compiles included)")
    bound_text = f"{bandwidth / 1e9:.0f} GB/s" if bandwidth else "unknown bandwidth (use --bandwidth)"
    print(f"weights read per decoded token: {weights / 1e9:.3f} GB; bandwidth: {bound_text}")
    print()
    print(f"{'prompt':>7}{'t0 (ms)':>10}{'prefill (ms)':>14}{'c (ms/token)':>14}{'R²':>9}"
          f"{'bound (ms)':>12}{'c/bound':>9}{'bound+KV':>10}{'c/(b+KV)':>10}")
    results = []
    for length in prompts:
        pts = [r for r in rows if r["prompt_tokens"] == length]
        t0, c, r2 = fit_line([r["budget"] for r in pts], [r["service_s"] for r in pts])
        prefill = float(np.median([r["prefill_s"] for r in pts]))
        _, kv = read_bytes_per_token(config, dtype.itemsize, pts[0]["cache_len"])
        bound = weights / bandwidth if bandwidth else None
        bound_kv = (weights + kv) / bandwidth if bandwidth else None
        fmt = lambda v, f: f"{v:{f}}" if v is not None else "n/a"
        print(f"{length:>7}{t0 * 1e3:>10.2f}{prefill * 1e3:>14.2f}{c * 1e3:>14.4f}{r2:>9.5f}"
              f"{fmt(bound and bound * 1e3, '12.4f'):>12}{fmt(bound and c / bound, '9.2f'):>9}"
              f"{fmt(bound_kv and bound_kv * 1e3, '10.4f'):>10}{fmt(bound_kv and c / bound_kv, '10.2f'):>10}")
        results.append({"prompt_tokens": length, "t0_s": t0, "c_s_per_token": c, "r2": r2, "prefill_s": prefill,
                        "bound_s_per_token": bound, "bound_with_kv_s_per_token": bound_kv,
                        "ratio": c / bound if bound else None})
    if bandwidth:
        worst = max(r["ratio"] for r in results)
        print(f"\ntarget: c within 1.3x the bandwidth bound: worst ratio {worst:.2f} -> "
              f"{'met' if worst <= 1.3 else 'NOT met'}")
    else:
        print("\n(no bandwidth bound on this device: the 1.3x target applies to a GPU run)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"config": name, "dtype": dtype.name, "device": device.device_kind, "bandwidth_Bps": bandwidth,
                       "weight_bytes_per_token": weights, "points": rows, "fits": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
