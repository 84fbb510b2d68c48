"""Python-path speed: prefill (128 tokens) and decode (64 tokens) tok/s, 1 and 2 torch threads.

    .venv/bin/python bench/bench_python.py [--model PATH] [--reps 3] [--json out.json]

Prints a table and JSON.  Medians of --reps runs, with the spread (min..max), because this
machine is shared and noisy.  Anchors (llama.cpp, transformers) join in bench/ as they land.
"""
import argparse
import json
import statistics
import time

import torch

import realm_embed as realm


def run_once(mid, prefill_ids, n_decode):
    s = realm.create_session(mid, len(prefill_ids) + n_decode + 1)
    t0 = time.perf_counter()
    logits = realm.decode(s, prefill_ids)
    t1 = time.perf_counter()
    token = int(logits.argmax())
    for _ in range(n_decode):
        token = int(realm.decode(s, [token]).argmax())
    t2 = time.perf_counter()
    realm.session_free(s)
    return len(prefill_ids) / (t1 - t0), n_decode / (t2 - t1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    mid = realm.store_model(args.model)
    store_s = time.perf_counter() - t0
    text = "The history of the city is long and full of surprises. " * 40
    ids = realm.tokenize(mid, text)[: args.prefill]
    run_once(mid, ids[:8], 2)                       # warm-up: dequantize weights into the cache
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs = [run_once(mid, ids, args.decode) for _ in range(args.reps)]
        for i, phase in enumerate(("prefill", "decode")):
            vals = [r[i] for r in runs]
            rows.append({"path": "python-exact", "threads": threads, "phase": phase,
                         "tok_s": statistics.median(vals), "min": min(vals), "max": max(vals)})
    print(f"model store: {store_s * 1000:.0f} ms")
    print(f"{'path':<14} {'threads':>7} {'phase':<8} {'tok/s':>8}  spread")
    for r in rows:
        print(f"{r['path']:<14} {r['threads']:>7} {r['phase']:<8} {r['tok_s']:>8.1f}  {r['min']:.1f}..{r['max']:.1f}")
    result = {"store_ms": store_s * 1000, "rows": rows}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
