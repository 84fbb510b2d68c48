"""GPU speed, one command, under 8 minutes: realm exact and fast against HF transformers on CUDA,
in the same run, on the same GGUF.

    .venv/bin/python bench/gpu_bench.py [--model PATH] [--reps 3] [--budget-s 420] [--json PATH]

Measured (tok/s, median of --reps with min..max):
  batch 1    prefill 128 tokens; decode 64 tokens, one call a token, greedy (argmax on the host);
             realm's decode tok/s leaves out the first step, which captures the session's CUDA
             graph and is reported apart ("first step", ms)
  batch 16   16 sessions (realm: one sequence per session, served round-robin: there is no
             batched call) / a [16, T] batch (transformers); aggregate tok/s over all 16
Paths: realm exact (f32 weights), realm fast (int4 tinygemm where the GPU runs it, else dense
bf16: the "fast kernels" line says which; decode through a CUDA graph per session, once also
through torch.compile (REALM_CUDA_COMPILE=1), once without graphs: REALM_CUDA_GRAPHS=0),
transformers eager f32 and bf16.  Also the GPU time of one captured fast step alone (CUDA
events over replays) and the kernels of one uncaptured step (torch.profiler).
Without CUDA it prints why and exits 0.  Past --budget-s it skips what is left (each part is
short; a part that would start after the budget is reported as skipped, never half-measured).
JSON goes to bench/results/gpu-<time>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFILL, DECODE, BATCH = 128, 64, 16
TEXT = "The history of the city is long and full of surprises. " * 40


def stats(values) -> dict:
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip parts that would start after this")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip", nargs="*", default=[], help='parts to leave out, as named in the log ("realm exact b16", "transformers float32")')
    ap.add_argument("--json", help="also write the JSON here (e.g. $OUT/gpu.json on a lent machine)")
    args = ap.parse_args(argv)

    import torch
    if not torch.cuda.is_available():
        print(f"gpu_bench: CUDA is not available (torch {torch.__version__}): nothing to measure")
        return 0
    start = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    import realm_embed as realm
    from realm_embed import fast

    dev = torch.device(args.device)
    mid = realm.store_model(args.model)
    path = realm.get_model_info(mid)["path"] or "(bytes)"
    ids = realm.tokenize(mid, TEXT)[:PREFILL]
    sync = torch.cuda.synchronize
    result = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "gpu": torch.cuda.get_device_name(dev),
              "torch": torch.__version__, "model": path, "reps": args.reps, "rows": [], "skipped": {}}
    rows = result["rows"]

    def over_budget(name) -> bool:
        if name in args.skip:
            result["skipped"][name] = "--skip"
            return True
        if time.perf_counter() - start > args.budget_s:
            result["skipped"][name] = f"budget of {args.budget_s:.0f} s spent"
            print(f"gpu_bench: skipping {name}: budget spent", file=sys.stderr)
            return True
        return False

    # ---- realm -----------------------------------------------------------------------------
    # Decode tok/s counts the steps after the first: a session captures its CUDA graph on its
    # first one-token step, reported apart as "first step" (ms, capture included).
    def realm_b1(precision):
        def once(n_decode):
            s = realm.create_session(mid, PREFILL + n_decode + 1, device=dev, precision=precision)
            sync()
            a = time.perf_counter()
            tok = int(realm.decode(s, ids).argmax())
            b = time.perf_counter()
            tok = int(realm.decode(s, [tok]).argmax())
            c = time.perf_counter()
            for _ in range(n_decode - 1):
                tok = int(realm.decode(s, [tok]).argmax())
            sync()
            d = time.perf_counter()
            realm.session_free(s)
            return PREFILL / (b - a), (n_decode - 1) / (d - c), 1000 * (c - b)
        once(4)                                                         # weights to the GPU, warm-up
        return [once(DECODE) for _ in range(args.reps)]

    def realm_b16(precision):
        def once(n_decode):
            sessions = [realm.create_session(mid, PREFILL + n_decode + 1, device=dev, precision=precision)
                        for _ in range(BATCH)]
            sync()
            a = time.perf_counter()
            toks = [int(realm.decode(s, ids).argmax()) for s in sessions]
            b = time.perf_counter()
            c = None
            for step in range(n_decode):
                if step == 1:
                    c = time.perf_counter()
                logits = [realm.decode(s, [t]) for s, t in zip(sessions, toks)]
                toks = torch.stack(logits).argmax(-1).tolist()          # one sync per round
            sync()
            d = time.perf_counter()
            for s in sessions:
                realm.session_free(s)
            return BATCH * PREFILL / (b - a), BATCH * (n_decode - 1) / (d - c), 1000 * (c - b)
        once(4)
        return [once(DECODE) for _ in range(max(1, args.reps - 1))]

    def graph_replay_us() -> float:
        """GPU time of one captured fast step alone (CUDA events around 200 replays): the floor
        under realm's per-token host work."""
        s = realm.create_session(mid, PREFILL + 8, device=dev, precision="fast")
        realm.decode(s, ids[:8])
        realm.decode(s, [ids[8]])                                       # captures
        graph = s.kv.graph.graph
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(200):
            graph.replay()
        end.record()
        sync()
        realm.session_free(s)
        return begin.elapsed_time(end) * 1000 / 200

    # Most telling first: a part that would start past the budget is skipped.
    def step_kernels(top=12) -> dict:
        """What one fast step launches: torch.profiler over an uncaptured static step."""
        from realm_embed import cuda_graph
        s = realm.create_session(mid, PREFILL + 8, device=dev, precision="fast")
        realm.decode(s, ids[:8])
        step = cuda_graph.GraphStep(s.tf, s.kv, capture=False)
        step(torch.tensor([ids[8]], device=dev), 8)
        sync()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            step(torch.tensor([ids[9]], device=dev), 9)
            sync()
        realm.session_free(s)
        events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        us = lambda e: getattr(e, "device_time_total", None) or e.cuda_time_total   # noqa: E731
        events.sort(key=us, reverse=True)
        return {"kernels": sum(e.count for e in events), "us": sum(us(e) for e in events),
                "top": [(e.key[:70], e.count, round(us(e))) for e in events[:top]]}

    parts = [("realm fast", 1, "1", "0"), ("realm fast, torch.compile", 1, "1", "1"),
             ("realm fast", BATCH, "1", "0"), ("realm exact", 1, "1", "0"),
             ("realm fast, no CUDA graphs", 1, "0", "0"), ("realm exact", BATCH, "1", "0")]
    for label, batch, graphs, compiled in parts:
        name = f"{label} b{batch}"
        if over_budget(name):
            continue
        t = time.perf_counter()
        os.environ["REALM_CUDA_GRAPHS"], os.environ["REALM_CUDA_COMPILE"] = graphs, compiled
        try:
            runs = (realm_b1 if batch == 1 else realm_b16)(label.split()[1].rstrip(","))
            rows.append({"path": label, "batch": batch, "prefill": stats(r[0] for r in runs),
                         "decode": stats(r[1] for r in runs), "first_step_ms": stats(r[2] for r in runs)})
        except Exception as e:                                           # noqa: BLE001
            result["skipped"][name] = f"{type(e).__name__}: {e}"[:500]
        finally:
            os.environ["REALM_CUDA_GRAPHS"], os.environ["REALM_CUDA_COMPILE"] = "1", "0"
        print(f"gpu_bench: {name} {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    for key, fn in (("graph_replay_us", graph_replay_us), ("step_kernels", step_kernels)):
        try:
            result[key] = fn()
        except Exception as e:                                           # noqa: BLE001
            result["skipped"][key] = f"{type(e).__name__}: {e}"[:500]
    result["fast_kernels"] = "int4 tinygemm (_weight_int4pack_mm)" if fast._cuda_int4_ok(dev) else \
        "dense bf16 (the int4 kernel is unavailable or failed its check on this GPU)"

    # ---- transformers ------------------------------------------------------------------------
    try:
        import transformers
    except ImportError:
        transformers = None
        result["skipped"]["transformers"] = "transformers is not installed (pip install -e '.[test]')"
    for dtype in ((torch.bfloat16, torch.float32) if transformers else ()):
        dname = str(dtype).removeprefix("torch.")
        if over_budget(f"transformers {dname}"):
            continue
        t = time.perf_counter()
        folder, fname = os.path.split(path)
        new_api = tuple(int(x) for x in transformers.__version__.split(".")[:2]) >= (4, 56)   # dtype= since 4.56
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=fname, **({"dtype": dtype} if new_api else {"torch_dtype": dtype})).to(dev).eval()
        except Exception as e:                                          # noqa: BLE001
            result["skipped"][f"transformers {dname}"] = f"{type(e).__name__}: {e}"[:500]
            continue

        @torch.no_grad()
        def once(batch, n_decode):
            x = torch.tensor([ids] * batch, device=dev)
            sync()
            a = time.perf_counter()
            out = model(input_ids=x, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tok.tolist()                                                # the host sees the token, as realm's loop
            b = time.perf_counter()
            past = out.past_key_values
            for _ in range(n_decode):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                tok.tolist()
            sync()
            c = time.perf_counter()
            return b - a, c - b

        for batch in (1, BATCH):
            once(batch, 2)
            runs = [once(batch, DECODE) for _ in range(args.reps)]
            rows.append({"path": f"transformers eager {dname}", "batch": batch,
                         "prefill": stats(batch * PREFILL / r[0] for r in runs),
                         "decode": stats(batch * DECODE / r[1] for r in runs)})
        del model
        torch.cuda.empty_cache()
        print(f"gpu_bench: transformers {dname} {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)

    # ---- report ------------------------------------------------------------------------------
    print(f"\n{result['gpu']}, torch {result['torch']}, {os.path.basename(path)}; realm fast kernels: "
          f"{result['fast_kernels']}; {args.reps} reps; total {time.perf_counter() - start:.0f} s")
    if "graph_replay_us" in result:
        us = result["graph_replay_us"]
        print(f"one captured fast step: {us:.0f} us of GPU time ({1e6 / us:.0f} tok/s if the host cost nothing)")
    if "step_kernels" in result:
        k = result["step_kernels"]
        print(f"one uncaptured fast step: {k['kernels']} kernels, {k['us']:.0f} us of kernel time; the largest:")
        for key, count, us in k["top"]:
            print(f"  {us:7d} us  {count:4d}x  {key}")
    for batch in (1, BATCH):
        at = [r for r in rows if r["batch"] == batch]
        anchor = next((r for r in at if r["path"] == "transformers eager bfloat16"), None)
        print(f"\nbatch {batch} (aggregate tok/s, median (min..max)); ratios vs transformers eager bf16")
        print(f"{'path':<28} {'prefill':>24} {'decode':>22} {'pre x':>6} {'dec x':>6}")
        for r in at:
            f = lambda s: f"{s['median']:9.1f} ({s['min']:.0f}..{s['max']:.0f})"   # noqa: E731
            rx = lambda ph: f"{r[ph]['median'] / anchor[ph]['median']:.2f}" if anchor else "-"   # noqa: E731
            first = f"  first step {r['first_step_ms']['median']:.0f} ms" if "first_step_ms" in r else ""
            print(f"{r['path']:<28} {f(r['prefill']):>24} {f(r['decode']):>22} {rx('prefill'):>6} {rx('decode'):>6}{first}")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\nJSON: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
