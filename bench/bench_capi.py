"""The C ABI's cost, measured in one run against the Python path (issue 3's bench).

    python bench/bench_capi.py [--calls 100000] [--tokens 32] [--rounds 3] [--threads 1] [--precision exact|fast]

Compiles bench/c/bench_capi.c against include/realm.h (-lrealm), then alternates rounds of the C
host and of the same greedy decode loop through the Python API in this process, with the same
torch intra-op thread count (REALM_TORCH_THREADS for the C host, torch.set_num_threads here) and
the same session precision (the C host: realm_session_create_ex).
Prints the per-call overhead of an export that stays in C and of one that enters Python, and
decode tok/s through the ABI against the Python path (target: ratio >= 0.98).  Timings are
medians; nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build(out_dir: Path) -> Path:
    from realm_embed import buildinfo
    cc = shutil.which("gcc") or shutil.which("cc")
    exe = out_dir / "bench_capi"
    subprocess.run([cc, "-O2", buildinfo.cflags(), str(ROOT / "bench" / "c" / "bench_capi.c"), "-o", str(exe),
                    *buildinfo.libs().split()], check=True)
    return exe


def python_decode(n_tokens: int, precision: str) -> tuple[float, int]:
    import realm_embed as realm
    mid = realm.store_model()
    s = realm.create_session(mid, precision=precision)
    logits = realm.decode(s, realm.tokenize(mid, "The capital of France is"))
    t0 = time.perf_counter()
    tok = 0
    for _ in range(n_tokens):
        tok = int(logits.argmax())
        logits = realm.decode(s, [tok])
    dt = time.perf_counter() - t0
    realm.session_free(s)
    return n_tokens / dt, tok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=100_000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("REALM_TORCH_THREADS", "1")))
    ap.add_argument("--precision", choices=("exact", "fast"), default="exact", help="both paths' sessions")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
        env = {**os.environ, "REALM_TORCH_THREADS": str(args.threads)}
        c_runs, py_runs = [], []
        for _ in range(args.rounds):
            r = subprocess.run([str(exe), str(args.calls), str(args.tokens), args.precision], capture_output=True,
                               text=True, env=env, check=True)
            c_runs.append(json.loads(r.stdout))
            py_runs.append(python_decode(args.tokens, args.precision))
    assert len({r["last_token"] for r in c_runs} | {t for _, t in py_runs}) == 1, "ABI and Python disagree"
    med = {k: statistics.median(r[k] for r in c_runs) for k in ("init_s", "cnoop_us", "noop_us", "decode_tok_s")}
    py = statistics.median(t for t, _ in py_runs)
    print(f"torch threads            {args.threads}")
    print(f"precision                {args.precision}")
    print(f"realm_init (first call)  {med['init_s']:.2f} s")
    print(f"C-only export            {med['cnoop_us'] * 1000:.1f} ns/call   (realm_abi_version)")
    print(f"export into Python       {med['noop_us']:.2f} us/call   (realm_session_n_tokens)")
    print(f"decode via the C ABI     {med['decode_tok_s']:.1f} tok/s")
    print(f"decode via Python        {py:.1f} tok/s")
    print(f"ratio ABI / Python       {med['decode_tok_s'] / py:.3f}   (target >= 0.98)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
