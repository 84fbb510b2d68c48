// Run the reference WebAssembly guest (bindings/wasm/generate.c, shipped as
// realm_embed/guests/generate.wasm) as a sandboxed tenant under Node: the guest tokenizes through
// the host, runs the model layer by layer, samples and streams its answer.  The same .wasm runs
// under the Python host (examples/python/guest.py).
//
//   cd bindings/js && npm install            # once: koffi from the registry
//   REALM_PYTHON=.venv/bin/python node examples/node/guest.mjs ["another question"]
import { GuestHost, Model, Realm } from '../../bindings/js/index.mjs';

Realm.init();                                          // ~1 s: starts Python and torch
const model = Model.storeDefault();                    // weights live once, in the host
const host = new GuestHost({ memoryMiB: 16, timeoutMs: 120000 });
const question = process.argv[2] ?? 'What is the capital of France?';

// One tenant = one worker_thread with its own instance, memory (capped at 16 MiB) and sessions.
const tenant = await host.tenant('generate', model, { onText: (text) => process.stdout.write(text) });
const out = await tenant.generate(question, { maxTokens: 64 });     // "The capital of France is Paris."
console.log(`\n[${out.tokenIds.length} tokens, ${out.finishReason}, ${out.hostCalls} host calls, ` +
  `guest memory ${out.memoryBytes >> 10} KiB]`);

// A guest with its own decoding rule: ban_word bans the "extra" word with a host-side -inf bias.
const banned = await host.tenant('ban_word', model);
console.log((await banned.generate(question, { extra: ' Paris', maxTokens: 24 })).text);   // never "Paris"

await host.close();                                    // closes the tenants, frees their sessions
model.close();
