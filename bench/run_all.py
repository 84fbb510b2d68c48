"""Every speed number in one run: realm-embed against llama.cpp and HF transformers, same machine,
same GGUF, same thread counts, one after the other.

    .venv/bin/python bench/run_all.py [--reps 5] [--threads 1 2] [--quick] [--skip NAME ...]
    make bench                                    # the same, with the defaults

Paths (each in its own fresh process, so import, store, first-token and RSS numbers are its own;
the first four are measured in interleaved rounds, one repetition of each per round, so that a
change of load on a shared machine hits them alike):
  realm python exact / fast   prefill 128 tokens, decode 64 (greedy, one decode call a token)
  llama.cpp                   llama-bench, built once from the llama-cpp-python sdist (bench/llamacpp.py)
  transformers f32            AutoModelForCausalLM.from_pretrained(folder, gguf_file=...), the same ids
  host paths, when present    bench/bench_capi.py (C ABI), bench/bench_node.mjs, bench/bench_go.sh,
                              bench/bench_wasm.py; each runs its own loop, once per precision (exact,
                              fast), against the Python path at that precision in the same run (the
                              ratio is in the row's note), and joins the table after that precision's
                              realm python row
Plus: init (import realm_embed + store), store, time to first token (cold: first session after
store, weights prepared on first use; warm: a 128-token prompt), peak RSS, and the host memory
each added tenant (session with 128 tokens cached) costs, for 1/2/4/8/16 tenants.

Output: a table with ratios against llama.cpp and transformers (median of --reps, spread
min..max: the machine may be shared), bench/results/run-<time>.json (+ latest.json) and a PNG
chart next to it (needs matplotlib: pip install -e '.[bench]').  Nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PREFILL, DECODE = 128, 64
TEXT = "The history of the city is long and full of surprises. " * 40
TENANTS = (1, 2, 4, 8, 16)
PRECISIONS = ("exact", "fast")
ANCHORS = ("llama.cpp", "transformers f32")


def stats(values) -> dict:
    values = [float(v) for v in values]
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ---- workers: one fresh interpreter per path, kept alive and driven line by line -------------
# The parent sends "run THREADS" once per repetition and path, in rounds over every path, so a
# change of load on this shared machine hits all paths alike; each answer is one JSON line.

def serve(setup, run_once, tenants=None) -> None:
    """Worker loop: setup() -> ready line; then "run T" / "tenants" / "quit" commands."""
    print(json.dumps(setup()), flush=True)     # first: setup times the imports itself
    import torch
    threads = None
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            if int(cmd[1]) != threads:
                threads = int(cmd[1])
                torch.set_num_threads(threads)
                run_once(2)                                  # warm-up at this thread count
            pre, dec, token = run_once(DECODE)
            print(json.dumps({"prefill": PREFILL / pre, "decode": DECODE / dec, "ttft_s": pre, "token": token}),
                  flush=True)
        elif cmd[0] == "tenants":
            print(json.dumps({"rss_per_tenant": tenants() if tenants else None}), flush=True)
        else:
            print(json.dumps({"peak_rss": peak_rss()}), flush=True)
            return


def worker_realm(args) -> None:
    state = {}

    def setup():
        t0 = time.perf_counter()
        import realm_embed as realm
        import realm_embed.api  # noqa: F401  names load lazily: this is the import that brings in torch
        t_import = time.perf_counter() - t0
        t1 = time.perf_counter()
        mid = realm.store_model(args.model)
        t_store = time.perf_counter() - t1
        state.update(realm=realm, mid=mid, ids=realm.tokenize(mid, TEXT)[:PREFILL])
        cold, _, _ = run_once(1)                             # first use: weights dequantized / packed
        return {"import_s": t_import, "store_s": t_store, "init_s": t_import + t_store, "ttft_cold_s": cold}

    def run_once(n_decode):
        realm, ids = state["realm"], state["ids"]
        s = realm.create_session(state["mid"], PREFILL + n_decode + 1, precision=args.precision)
        a = time.perf_counter()
        token = int(realm.decode(s, ids).argmax())
        b = time.perf_counter()
        for _ in range(n_decode):
            token = int(realm.decode(s, [token]).argmax())
        c = time.perf_counter()
        realm.session_free(s)
        return b - a, c - b, token

    def tenants():
        realm, sessions, base, per = state["realm"], [], rss_now(), {}
        for n in TENANTS:
            while len(sessions) < n:
                s = realm.create_session(state["mid"], 256, precision=args.precision)
                realm.decode(s, state["ids"])
                sessions.append(s)
            per[n] = (rss_now() - base) / n
        for s in sessions:
            realm.session_free(s)
        return per

    serve(setup, run_once, tenants)


def worker_transformers(args) -> None:
    state = {}

    def setup():
        t0 = time.perf_counter()
        import torch
        import transformers
        folder, name = os.path.split(args.model)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        state.update(torch=torch, model=model.eval(), ids=torch.tensor([json.loads(Path(args.ids).read_text())]))
        t_load = time.perf_counter() - t0
        cold, _, _ = run_once(1)
        return {"init_s": t_load, "store_s": t_load, "ttft_cold_s": cold, "version": transformers.__version__}

    def run_once(n_decode):
        torch, model = state["torch"], state["model"]
        with torch.no_grad():
            a = time.perf_counter()
            out = model(input_ids=state["ids"], use_cache=True)
            token = out.logits[0, -1].argmax().view(1, 1)
            b = time.perf_counter()
            past = out.past_key_values
            for _ in range(n_decode):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[0, -1].argmax().view(1, 1)
            c = time.perf_counter()
        return b - a, c - b, int(token)

    serve(setup, run_once)


class Worker:
    """A worker process seen from the parent."""

    def __init__(self, kind: str, args, extra=()):
        self.log = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, __file__, "--worker", kind, "--model", args.model, *extra]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, cwd=ROOT)
        self.ready = self.answer()

    def answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.log.seek(0)
        raise RuntimeError(f"worker exited (code {self.proc.wait()}): {self.log.read()[-1500:]}")

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> dict:
        try:
            return self.ask("quit")
        finally:
            self.proc.wait(timeout=60)


# ---- anchors and optional host paths -----------------------------------------------------------

def llama_cpp_round(binary, args, threads) -> dict:
    """One llama-bench repetition of each phase: {"prefill": tok/s, "decode": tok/s}."""
    import llamacpp
    r = llamacpp.bench(binary, args.model, threads, PREFILL, DECODE, 1)
    return {phase: r[phase][0] for phase in ("prefill", "decode")}


def _tmp_json() -> str:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    return path


def host_precisions(args) -> list[str]:
    """The precisions the host paths run at: both, less any named in --skip."""
    return [p for p in PRECISIONS if p not in args.skip]


def host_capi(args) -> list[dict]:
    rows = []
    for precision in host_precisions(args):
        for threads in args.threads:
            r = subprocess.run([sys.executable, "bench/bench_capi.py", "--rounds", str(args.reps), "--tokens",
                                str(DECODE), "--threads", str(threads), "--calls", "20000", "--precision", precision],
                               capture_output=True, text=True, timeout=1200, cwd=ROOT, check=True)
            vals = {line.split("  ")[0].strip(): line for line in r.stdout.splitlines()}
            c = float(vals["decode via the C ABI"].split()[-2])
            py = float(vals["decode via Python"].split()[-2])
            rows.append({"path": f"C ABI (C host), {precision}", "threads": threads, "decode": stats([c]),
                         "note": f"its own loop; Python {precision} in the same run {py:.1f} tok/s, "
                                 f"ratio {c / py:.3f}"})
    return rows


def host_node(args) -> list[dict]:
    if not shutil.which("node") or not (ROOT / "bindings/js/node_modules").is_dir():
        raise FileNotFoundError("node or bindings/js/node_modules missing (cd bindings/js && npm install)")
    rows = []
    for threads, precision in itertools.product(args.threads, host_precisions(args)):
        out = _tmp_json()
        subprocess.run(["node", "bench/bench_node.mjs", "--reps", str(args.reps), "--precision", precision,
                        "--json", out], capture_output=True, text=True, timeout=1200, cwd=ROOT, check=True,
                       env={**os.environ, "REALM_PYTHON": sys.executable, "REALM_TORCH_THREADS": str(threads)})
        data = json.loads(Path(out).read_text())
        row = {"path": f"Node (koffi), {precision}", "threads": threads, "note": "its own loop; "}
        for r in data["rows"]:
            for phase in ("prefill", "decode"):
                if r["what"] == f"{phase} tok/s":
                    lo, hi = (float(x) for x in r["nodeSpread"].split(".."))
                    # the spread is printed rounded: keep the median inside it (the chart's whiskers)
                    row[phase] = {"median": r["node"], "min": min(lo, r["node"]), "max": max(hi, r["node"]),
                                  "n": data["reps"]}
                    row["note"] += f"{phase} vs Python {precision} {r['ratio']:.3f} "
        rows.append(row)
    return rows


def host_go(args) -> list[dict]:
    if not shutil.which("go"):
        raise FileNotFoundError("go is not installed")
    rows = []
    for threads, precision in itertools.product(args.threads, host_precisions(args)):
        out = _tmp_json()
        subprocess.run(["sh", "bench/bench_go.sh", "-reps", str(args.reps), "-precision", precision, "-json", out],
                       capture_output=True, text=True, timeout=1800, cwd=ROOT, check=True,
                       env={**os.environ, "REALM_TORCH_THREADS": str(threads)})
        data = json.loads(Path(out).read_text())
        row = {"path": f"Go (cgo), {precision}", "threads": threads, "note": "its own loop; "}
        for r in data["rows"]:
            for phase in ("prefill", "decode"):
                if r["metric"].startswith(phase) and r["unit"] == "tok/s":
                    row[phase] = {"median": r["go"], "min": r["go_min"], "max": r["go_max"], "n": args.reps}
                    if r.get("python"):
                        row["note"] += f"{phase} vs Python {precision} {r['go'] / r['python']:.3f} "
        rows.append(row)
    return rows


def host_wasm(args) -> list[dict]:
    rows = []
    for precision in host_precisions(args):
        for threads in args.threads:
            out = _tmp_json()
            subprocess.run([sys.executable, "bench/bench_wasm.py", "--reps", str(args.reps), "--tokens", str(DECODE),
                            "--threads", str(threads), "--precision", precision, "--json", out],
                           capture_output=True, text=True, timeout=1800, cwd=ROOT, check=True)
            for r in json.loads(Path(out).read_text())["rows"]:
                if r["path"].startswith("guest"):
                    same = "" if r.get("same_tokens", True) else "; tokens left the Python path's late"
                    rows.append({"path": f"wasm {r['path'][6:]}, {precision}", "threads": threads,
                                 "decode": {"median": r["tok_s"], "min": r["min"], "max": r["max"], "n": args.reps},
                                 "note": f"generate loop incl. sampling; vs Python generate {precision} "
                                         f"{r['vs_python']:.3f}{same}"})
    return rows


HOSTS = {  # name -> (script that must exist, runner)
    "capi": ("bench/bench_capi.py", host_capi),
    "node": ("bench/bench_node.mjs", host_node),
    "go": ("bench/bench_go.sh", host_go),
    "wasm": ("bench/bench_wasm.py", host_wasm),
}


# ---- report ------------------------------------------------------------------------------------

def row_order(row: dict) -> tuple:
    """Table and chart order, per thread count: the anchors, then for each precision its realm
    python row followed by the host paths at that precision (whose ratios are against it)."""
    path = row["path"]
    if path in ANCHORS:
        return row["threads"], ANCHORS.index(path), 0, path
    precision = path.rsplit(" ", 1)[-1]
    group = PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)
    return row["threads"], len(ANCHORS) + group, 0 if path.startswith("realm python") else 1, path


def fmt_stat(s) -> str:
    return "-" if not s else f"{s['median']:7.1f} ({s['min']:.0f}..{s['max']:.0f})"


def ratio(row, anchor, phase) -> str:
    if not anchor or phase not in row or phase not in anchor:
        return "-"
    return f"{row[phase]['median'] / anchor[phase]['median']:.2f}x"


def table(rows: list[dict]) -> str:
    lines = []
    for threads in sorted({r["threads"] for r in rows}):
        at = [r for r in rows if r["threads"] == threads]
        llama = next((r for r in at if r["path"] == "llama.cpp"), None)
        hf = next((r for r in at if r["path"].startswith("transformers")), None)
        lines.append(f"\n{threads} thread{'s' if threads > 1 else ''}: tok/s median (min..max); ratios of medians")
        lines.append(f"{'path':<40} {'prefill 128':>20} {'decode 64':>20}  {'pre/llama':>9} {'dec/llama':>9}"
                     f" {'pre/HF':>7} {'dec/HF':>7}")
        for r in at:
            lines.append(f"{r['path']:<40} {fmt_stat(r.get('prefill')):>20} {fmt_stat(r.get('decode')):>20}  "
                         f"{ratio(r, llama, 'prefill'):>9} {ratio(r, llama, 'decode'):>9} "
                         f"{ratio(r, hf, 'prefill'):>7} {ratio(r, hf, 'decode'):>7}")
    return "\n".join(lines)


def chart(result: dict, path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed (pip install -e '.[bench]'): no chart"
    rows = [r for r in result["rows"] if "decode" in r]
    threads = sorted({r["threads"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(14, 0.45 * len(rows) + 2.5))
    for ax, phase in zip(axes, ("decode", "prefill")):
        items = [r for r in rows if phase in r]
        labels = [f"{r['path']} · {r['threads']}t" for r in items]
        med = [r[phase]["median"] for r in items]
        err = [[max(0.0, m - r[phase]["min"]) for m, r in zip(med, items)],      # >= 0: matplotlib refuses less
               [max(0.0, r[phase]["max"] - m) for m, r in zip(med, items)]]
        colors = ["tab:gray" if r["path"] == "llama.cpp" else "tab:orange" if r["path"].startswith("transformers")
                  else "tab:blue" if r["threads"] == threads[0] else "tab:cyan" for r in items]
        y = range(len(items))
        ax.barh(list(y), med, xerr=err, color=colors, capsize=3)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("tokens/s (median, whiskers min..max)")
        ax.set_title(f"{phase} ({PREFILL if phase == 'prefill' else DECODE} tokens)")
    fig.suptitle(f"realm-embed vs llama.cpp vs transformers — {result['machine']['cpu']}, "
                 f"{result['model_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF path (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--quick", action="store_true", help="2 repetitions, no host paths, no tenant sweep")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="any of: exact fast (that precision's Python path and host rows) llama.cpp transformers "
                         "tenants " + " ".join(HOSTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="exact", help=argparse.SUPPRESS)
    ap.add_argument("--ids", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.model is None:
        sys.path.insert(0, str(ROOT))
        from realm_embed.storage import default_model_path
        args.model = default_model_path()
    args.model = os.path.abspath(args.model)
    if args.worker:
        {"realm": worker_realm, "transformers": worker_transformers}[args.worker](args)
        return 0
    if args.quick:
        args.reps = min(args.reps, 2)
        args.skip = list(args.skip) + list(HOSTS) + ["tenants"]

    log = lambda msg: print(msg, file=sys.stderr, flush=True)   # noqa: E731
    import torch
    result = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "model": args.model, "model_name": os.path.basename(args.model),
              "prefill_tokens": PREFILL, "decode_tokens": DECODE, "reps": args.reps, "threads": args.threads,
              "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                          "load_avg_start": os.getloadavg()},
              "rows": [], "misc": {}, "skipped": {}}
    rows, misc = result["rows"], result["misc"]

    def attempt(name, fn):
        if name in args.skip:
            result["skipped"][name] = "--skip"
            return
        log(f"bench: {name} ...")
        t = time.perf_counter()
        try:
            fn()
            log(f"bench: {name} done in {time.perf_counter() - t:.0f} s")
        except Exception as e:            # noqa: BLE001  one path failing must not lose the others
            result["skipped"][name] = f"{type(e).__name__}: {e}"[:2000]
            log(f"bench: {name} skipped: {result['skipped'][name]}")

    # -- the anchors and the Python paths: interleaved rounds, one repetition of each per round --
    paths: dict[str, object] = {}            # name -> Worker, or the llama-bench binary

    def start_llama():
        sys.path.insert(0, str(ROOT / "bench"))
        import llamacpp
        paths["llama.cpp"] = llamacpp.ensure_llama_bench(log)
        result["llama_cpp_version"] = llamacpp.version_of(paths["llama.cpp"])

    def start_worker(name, kind, extra):
        def go():
            w = paths[name] = Worker(kind, args, extra)
            misc[name] = dict(w.ready)
        return go

    def transformers_extra():
        ids_file = _tmp_json()
        sys.path.insert(0, str(ROOT))
        import realm_embed as realm
        Path(ids_file).write_text(json.dumps(realm.tokenize(realm.store_model(args.model), TEXT)[:PREFILL]))
        return ["--ids", ids_file]

    attempt("llama.cpp", start_llama)
    attempt("exact", start_worker("realm python exact", "realm", ["--precision", "exact"]))
    attempt("fast", start_worker("realm python fast", "realm", ["--precision", "fast"]))
    attempt("transformers", lambda: start_worker("transformers f32", "transformers", transformers_extra())())
    samples = {(name, t): [] for name in paths for t in args.threads}
    log(f"bench: {args.reps} rounds over {', '.join(paths)} at {args.threads} threads")
    for rep in range(args.reps):
        for t in args.threads:
            for name, p in list(paths.items()):
                try:
                    samples[name, t].append(llama_cpp_round(p, args, t) if name == "llama.cpp" else p.ask(f"run {t}"))
                except Exception as e:       # noqa: BLE001
                    result["skipped"][name] = f"{type(e).__name__}: {e}"[:2000]
                    log(f"bench: {name} failed: {result['skipped'][name]}")
                    del paths[name]
        log(f"bench: round {rep + 1}/{args.reps} done")
    for (name, t), got in samples.items():
        if got:
            row = {"path": name, "threads": t, "prefill": stats(g["prefill"] for g in got),
                   "decode": stats(g["decode"] for g in got)}
            if "ttft_s" in got[0]:
                row["ttft_warm_s"] = statistics.median(g["ttft_s"] for g in got)
            if name == "llama.cpp":
                row["note"] = f"llama-bench {result['llama_cpp_version']}"
            rows.append(row)
    for name, p in paths.items():
        if isinstance(p, Worker):
            if name.startswith("realm") and "tenants" not in args.skip:
                misc[name].update(p.ask("tenants"))
            misc[name].update(p.close())

    # -- host paths: each script runs its own loop against its own Python anchor ----------------
    for name, (script, fn) in HOSTS.items():
        if not (ROOT / script).exists():
            result["skipped"][name] = f"{script} not present"
            continue
        attempt(name, lambda fn=fn: rows.extend(fn(args)))
    result["machine"]["load_avg_end"] = os.getloadavg()

    rows.sort(key=row_order)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path, png_path = RESULTS / f"run-{stamp}.json", RESULTS / f"run-{stamp}.png"

    print(f"\nrealm-embed bench — {result['model_name']}, {result['machine']['cpu']} ({os.cpu_count()} cores), "
          f"torch {torch.__version__}, {args.reps} reps, load avg {result['machine']['load_avg_start'][0]:.1f} at start")
    print(table(rows))
    hosts = [r for r in rows if r.get("note") and r["path"] not in ANCHORS]
    if hosts:                   # the host paths' own ratios against Python at the same precision
        print("\nhost paths against the Python path at the same precision, measured in the same run:")
        for r in hosts:
            print(f"  {r['path']:<40} {r['threads']}t  {r['note'].strip()}")
    if misc:
        print(f"\n{'path':<22} {'init s':>7} {'store s':>8} {'TTFT cold':>10} {'TTFT warm':>10} {'peak RSS':>9}"
              f"  per-tenant RSS (1/2/4/8/16)")
        for name, m in misc.items():
            warm = [r.get("ttft_warm_s") for r in rows if r["path"] == name and r.get("ttft_warm_s")]
            tenants = m.get("rss_per_tenant")
            per = "/".join(f"{v / 2**20:.1f}" for v in tenants.values()) + " MiB" if tenants else "-"
            print(f"{name:<22} {m['init_s']:7.2f} {m['store_s']:8.3f} {m['ttft_cold_s']:9.2f}s "
                  f"{min(warm) if warm else float('nan'):9.3f}s {m['peak_rss'] / 2**20:8.0f}M  {per}")
        print("init = import realm_embed + store (transformers: import + from_pretrained); TTFT = 128-token prompt "
              "to first logits (cold: first session, weights prepared on first use)")
    for name, why in result["skipped"].items():
        print(f"skipped {name}: {why.splitlines()[0][:200]}")
    note = chart(result, png_path)
    json_path.write_text(json.dumps(result, indent=1))
    shutil.copyfile(json_path, RESULTS / "latest.json")
    print(f"\nJSON: {json_path}" + (f"\nchart: {png_path}" if note is None else f"\n{note}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
