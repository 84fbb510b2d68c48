"""`realm guest`: run a generator guest (the reference one by default) as N concurrent tenants
on one stored model, streaming a single tenant's text or printing each tenant's answer."""
from __future__ import annotations

import codecs
import sys
import threading
import time

DEFAULT_QUESTION = "What is the capital of France?"


def rss_bytes() -> int:
    """The process's resident set size, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/statm") as f:
            import os
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def add_arguments(p) -> None:
    p.add_argument("wasm", nargs="?", default="generate",
                   help="guest .wasm/.wat path, or a shipped guest name: generate (default), ban_word")
    p.add_argument("--model", help="GGUF path (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--prompt", help=f"the question (default: {DEFAULT_QUESTION!r})")
    p.add_argument("--extra", default="", help="the guest's extra input (generate: a stop string; ban_word: the word)")
    p.add_argument("--raw", action="store_true", help="no chat template")
    p.add_argument("--tenants", type=int, default=1, help="run N guests concurrently on the one model")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--fused", action="store_true", help="fused decode instead of the guest's layer loop")
    p.add_argument("--full-logits", action="store_true", help="sample on all V logits, not the host's top-k")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the guest's PRNG (tenant i uses seed + i)")
    p.add_argument("--fuel", type=int, default=10_000_000_000, help="wasm instructions per call (0 = unlimited)")
    p.add_argument("--memory-mib", type=float, default=64.0, help="guest linear memory limit")
    p.add_argument("--deadline", type=float, default=300.0, help="wall-clock seconds per call into the guest")
    p.add_argument("--precision", default="exact",
                   help="how the guests' sessions compute, chosen by the host: exact (f32, default) or fast "
                        "(4-bit weights)")
    p.add_argument("-v", "--verbose", action="store_true", help="print timing and memory for one tenant too")


def main(args) -> int:
    import realm_embed as realm
    from ..errors import ArgumentError
    from .host import Host
    from .tenants import Limits, check_precision

    if args.tenants < 1:
        raise ArgumentError(f"--tenants must be at least 1, got {args.tenants}")
    check_precision(args.precision, "--precision")      # an ArgumentError before the model is stored
    mid = realm.store_model(args.model)
    limits = Limits(memory_mib=args.memory_mib, fuel=args.fuel, deadline_s=args.deadline)
    single = args.tenants == 1
    decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def stream(data: bytes) -> None:
        sys.stdout.write(decoder.decode(data))
        sys.stdout.flush()

    rss0 = rss_bytes()
    with Host(precision=args.precision) as host:
        tenants = [host.tenant(args.wasm, mid, limits=limits, name=f"tenant-{i}",
                               on_emit=stream if single else None) for i in range(args.tenants)]
        rss1 = rss_bytes()
        results, errors = [None] * len(tenants), [None] * len(tenants)

        def work(i: int) -> None:
            try:
                results[i] = tenants[i].generate(
                    args.prompt or DEFAULT_QUESTION, extra=args.extra, max_tokens=args.max_tokens,
                    chat=not args.raw, fused=args.fused, full_logits=args.full_logits,
                    temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed + i)
            except Exception as e:            # reported per tenant; the others go on
                errors[i] = e

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tenants))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        rss2 = rss_bytes()
        if single:
            sys.stdout.write(decoder.decode(b"", final=True) + "\n")
        for i, t in enumerate(tenants):
            r, e = results[i], errors[i]
            if e is not None:
                print(f"[{t.name}] error: {getattr(e, 'message', e)} (code {getattr(e, 'code', '?')})",
                      file=sys.stderr)
                continue
            if not single:
                print(f"[{t.name}] {r.text}")
            if not single or args.verbose:
                print(f"[{t.name}] {len(r.token_ids)} tokens ({r.finish_reason}) in {r.seconds:.2f} s, "
                      f"{r.host_calls} host calls; guest memory {r.memory_bytes / 1024:.0f} KiB, "
                      f"KV cache reserved {t.stats['kv_bytes_peak'] / 2**20:.1f} MiB", file=sys.stderr)
        if not single or args.verbose:
            n = len(tenants)
            print(f"[host] {n} tenant{'s' if n > 1 else ''} on model {mid:#x} (stored once), wall {wall:.2f} s; "
                  f"RSS +{(rss1 - rss0) / n / 2**20:.2f} MiB per tenant created, +{(rss2 - rss1) / 2**20:.1f} MiB "
                  f"while running (the model's shared weight cache fills on first use)", file=sys.stderr)
        for t in tenants:
            t.close()
    return 1 if any(errors) else 0
