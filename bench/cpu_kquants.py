"""Decode speed on a Q4_K_M-like model: the C decode step (cpu_kernels) against fast mode's torch
fallback, and llama.cpp on the same file if its llama-bench is cached.

    .venv/bin/python bench/cpu_kquants.py [--layers 30] [--tokens 48] [--out /tmp/kq_m.gguf]

The model is written once (random weights, tests/kquants.py's reference quantizer, the default
model's tokenizer): SmolLM2-135M's layout with 256-aligned widths (D 768, F 2048, H 12, Hkv 4;
SmolLM2's own D = 576 is not a multiple of 256, and llama.cpp gives such tensors Q5_0 / Q8_0
instead), types as llama.cpp's Q4_K_M picks them: Q4_K, with Q6_K for attn_v / ffn_down in the
first and last eighth of the layers and every third one between, and for the output head.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from gguf.constants import GGMLQuantizationType as QT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import kquants  # noqa: E402
import realm_embed as realm  # noqa: E402
from realm_embed import cpu_kernels as ck  # noqa: E402


def q4_k_m(n_layer):
    def more_bits(i):   # llama.cpp's use_more_bits
        return i < n_layer // 8 or i >= 7 * n_layer // 8 or (i - n_layer // 8) % 3 == 2

    def types(name):
        if name == "output.weight":
            return QT.Q6_K
        if name.startswith("blk.") and ("attn_v" in name or "ffn_down" in name) and more_bits(int(name.split(".")[1])):
            return QT.Q6_K
        return QT.Q4_K
    return types


def decode_tps(mid, n_tokens, threads, c_path):
    ck.ENABLED = c_path
    torch.set_num_threads(threads)
    s = realm.create_session(mid, 256, precision="fast")
    logits = realm.decode(s, realm.tokenize(mid, "The capital of France is"))
    tok = int(logits.argmax())
    for _ in range(4):                                   # warm: weights packed, pool started
        tok = int(realm.decode(s, [tok]).argmax())
    t = time.perf_counter()
    for _ in range(n_tokens):
        tok = int(realm.decode(s, [tok]).argmax())
    dt = time.perf_counter() - t
    realm.session_free(s)
    ck.ENABLED = True
    return n_tokens / dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", default="/tmp/realm_q4_k_m_like.gguf")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    path = Path(args.out)
    if not path.exists():
        t = time.perf_counter()
        kquants.write_llama(path, n_layer=args.layers, D=768, F=2048, H=12, Hkv=4, types=q4_k_m(args.layers))
        print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
    mid = realm.store_model(str(path))
    print(f"variant {ck.variant()}")
    for threads in (1, 2):
        res = {True: [], False: []}
        for _ in range(args.reps):                       # interleaved
            for c in (True, False):
                res[c].append(decode_tps(mid, args.tokens, threads, c))
        c, tr = max(res[True]), max(res[False])
        print(f"{threads} thread(s): decode C {c:.1f} tok/s, torch fallback {tr:.1f} tok/s ({c / tr:.2f}x)")
    try:
        import llamacpp
        binary = llamacpp._cached_binary()
        if binary:
            for threads in (1, 2):
                r = llamacpp.bench(binary, str(path), threads, 8, args.tokens, 3)
                print(f"{threads} thread(s): llama.cpp decode {max(r['decode']):.1f} tok/s")
    except Exception as e:               # noqa: BLE001  the comparison is optional
        print(f"llama.cpp: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
