"""Run the reference WebAssembly guest as a sandboxed tenant, streaming its answer.

    .venv/bin/python examples/python/guest.py ["your question"]
"""
import codecs
import sys

import realm_embed as realm
from realm_embed.wasm import Host, Limits

question = sys.argv[1] if len(sys.argv) > 1 else "What is the capital of France?"
mid = realm.store_model()                                  # weights live once, in the host
limits = Limits(memory_mib=16, fuel=10**10, deadline_s=120)
utf8 = codecs.getincrementaldecoder("utf-8")("replace")     # a character may span two emits
with Host() as host, host.tenant("generate", mid, limits=limits,
                                 on_emit=lambda b: print(utf8.decode(b), end="", flush=True)) as t:
    out = t.generate(question, max_tokens=64)              # the guest tokenizes, runs the layers, samples
    print(f"\n[{len(out.token_ids)} tokens, {out.finish_reason}, guest memory {out.memory_bytes >> 10} KiB]")
    banned = host.tenant("ban_word", mid)                  # a guest with its own decoding rule
    print(banned.generate(question, max_tokens=24).text)   # ... it never says "Paris"
    banned.close()
