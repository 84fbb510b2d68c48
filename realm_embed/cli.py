"""`realm` command line: run a prompt, inspect a model, benchmark, print build flags."""
from __future__ import annotations

import argparse
import sys
import time

DEFAULT_QUESTION = "What is the capital of France?"


def _progress(done: int, total: int) -> None:
    if total < (256 << 20) or not sys.stderr.isatty():
        return                          # small files load in well under a second: no bar
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\rloading [{'#' * filled}{'.' * (width - filled)}] {done >> 20}/{total >> 20} MiB")
    if done == total:
        sys.stderr.write("\n")


def _store(path):
    from .storage import REGISTRY
    return REGISTRY.store(path, 0, progress=_progress)


def cmd_run(args) -> int:
    import realm_embed as realm
    mid = _store(args.model)
    session = realm.create_session(mid, args.n_ctx, device=args.device, precision=args.precision)
    prompt = args.prompt or DEFAULT_QUESTION
    if not args.raw:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
                   [{"role": "user", "content": prompt}]
        prompt = realm.apply_chat_template(mid, messages)
    sampler = realm.SamplerConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                  min_p=args.min_p, repetition_penalty=args.repeat_penalty, seed=args.seed)
    t0 = time.perf_counter()
    out = realm.generate(session, prompt, max_tokens=args.max_tokens, sampler=sampler, stop=args.stop,
                         on_token=lambda _id, text: print(text, end="", flush=True) and None)
    print()
    if args.verbose:
        dt = time.perf_counter() - t0
        print(f"[{len(out.token_ids)} tokens, {out.n_prompt} prompt, finish={out.finish_reason}, "
              f"{dt:.2f} s]", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    import realm_embed as realm
    mid = _store(args.model)
    info = realm.get_model_info(mid)
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "bytes_by_type":
            value = ", ".join(f"{t} {b / 2**20:.1f} MiB" for t, b in value.items())
        elif key == "id":
            value = f"{value:#x}"
        print(f"{key:<{width}}  {value}")
    if args.tensors:
        print(f"\n{'tensor':<32} {'type':<6} {'shape':<16} bytes")
        for name in realm.list_tensors(mid):
            t = realm.tensor_info(mid, name)
            print(f"{name:<32} {t.ggml_type.name:<6} {'x'.join(map(str, t.shape)):<16} {t.nbytes}")
    else:
        print(f"\n{info['n_tensors']} tensors (realm info --tensors lists them)")
    return 0


def cmd_guest(args) -> int:
    from .wasm import runner
    return runner.main(args)


def cmd_config(args) -> int:
    from . import buildinfo
    return buildinfo.main(args.flags)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="realm", description="realm-embed: embedded LLM inference")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="answer a prompt (chat template by default), streaming to stdout")
    run.add_argument("--model", help="GGUF path (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    run.add_argument("--prompt", help=f"the question (default: {DEFAULT_QUESTION!r})")
    run.add_argument("--system", help="a system message for the chat template")
    run.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    run.add_argument("--max-tokens", type=int, default=128)
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-k", type=int, default=0)
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--min-p", type=float, default=0.0)
    run.add_argument("--repeat-penalty", type=float, default=1.0)
    run.add_argument("--seed", type=int)
    run.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    run.add_argument("--n-ctx", type=int, default=0, help="context size (default: min(2048, model's))")
    run.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    run.add_argument("--precision", choices=("exact", "fast"), default="exact",
                     help="exact: f32 weights (default); fast: 4-bit kernels, bf16 activations")
    run.add_argument("-v", "--verbose", action="store_true", help="print token counts and timing to stderr")
    run.set_defaults(func=cmd_run)

    info = sub.add_parser("info", help="model metadata and a tensor summary")
    info.add_argument("model", nargs="?", help="GGUF path (default: the embedded model)")
    info.add_argument("--tensors", action="store_true", help="list every tensor")
    info.set_defaults(func=cmd_info)

    guest = sub.add_parser("guest", help="run a WebAssembly guest (the reference generator by default) "
                                         "as N sandboxed tenants on one model")
    from .wasm.runner import add_arguments
    add_arguments(guest)
    guest.set_defaults(func=cmd_guest)

    config = sub.add_parser("config", help="build flags for C hosts: --cflags --libs --libdir --pkgconfig")
    config.add_argument("flags", nargs=argparse.REMAINDER)
    config.set_defaults(func=cmd_config)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["config"]:          # its flags look like options: argparse would reject them
        from . import buildinfo
        return buildinfo.main(argv[1:])
    args = build_parser().parse_args(argv)
    from .errors import RealmError
    try:
        return args.func(args)
    except RealmError as e:
        print(f"realm: error: {e.message} (code {e.code})", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
