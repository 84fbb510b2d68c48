"""Expected results for the Go tests, computed by the Python API of the same runtime.

    python expected.py  ->  one JSON object on stdout

Float arrays are base64 of little-endian float32 (the Go side compares them bit for bit: both
paths run the same torch code on one intra-op thread).  Keep the cases in step with
realm_test.go.
"""
import base64
import hashlib
import json
import os
import sys

import torch

# what librealm.so does in a non-Python host
torch.set_num_threads(int(os.environ.get("REALM_TORCH_THREADS", "1")))

import realm_embed as realm                  # noqa: E402
from realm_embed.sampling import Sampler, SamplerConfig, top_k_logits  # noqa: E402


def f32(t):
    return base64.b64encode(t.detach().to(torch.float32).contiguous().numpy().tobytes()).decode()


def sha(t):
    return hashlib.sha256(t.detach().to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


mid = realm.store_model()
info = realm.get_model_info(mid)
out = {"version": realm.__version__, "info": {k: v for k, v in info.items() if not isinstance(v, dict)}}
out["info_json_keys"] = sorted(info)

names = realm.list_tensors(mid)
out["tensor_names"] = names
tensors = {}
for name in ("blk.0.attn_norm.weight", "blk.0.attn_k.weight", "blk.3.ffn_down.weight"):
    t, ti = realm.get_tensor(mid, name), realm.tensor_info(mid, name)
    tensors[name] = {"shape": list(t.shape), "type": int(ti.ggml_type), "nbytes": ti.nbytes, "sha256": sha(t),
                     "first": [float(x) for x in t.reshape(-1)[:8]]}
out["tensors"] = tensors

texts = ["Hello world", "The capital of France is", "<|im_start|>user\nHi<|im_end|>", "naïve café 東京 🙂", ""]
out["tokenize"] = [{"text": x, "flags": fl,
                    "ids": realm.tokenize(mid, x, add_special=bool(fl & 1), parse_special=bool(fl & 2))}
                   for x in texts for fl in (0, 1, 2, 3)]
ids = realm.tokenize(mid, texts[3])
out["detokenize"] = {"ids": ids, "text": realm.detokenize(mid, ids)}
out["pieces"] = {str(i): base64.b64encode(realm.token_piece(mid, i)).decode() for i in (0, 1, 2, 28, 19556, ids[-1])}
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
out["chat"] = {"messages": msgs, "gen": realm.apply_chat_template(mid, msgs),
               "nogen": realm.apply_chat_template(mid, msgs, add_generation_prompt=False)}

# compute: the layer loop and the fused decode on the same prompt
prompt = realm.tokenize(mid, "The capital of France is")
out["prompt"] = prompt
s = realm.create_session(mid, 64)
h = realm.embed_tokens(s, prompt)
out["embed"] = f32(h)
for layer in range(info["n_layer"]):
    h = realm.forward_layer(s, layer, h, 0)
    if layer == 0:
        out["layer0"] = f32(h)
out["hidden_last"] = f32(h)
out["logits_all"] = f32(realm.compute_logits(s, h))
realm.session_free(s)

s = realm.create_session(mid, 64)
last = realm.decode(s, prompt)
out["decode_last"] = f32(last)
nxt = int(last.argmax())
out["next"] = nxt
out["decode_next"] = f32(realm.decode(s, [nxt]))
realm.session_free(s)
s = realm.create_session(mid, 64)
out["decode_all"] = f32(realm.decode(s, prompt, all_logits=True))
realm.session_free(s)

s = realm.create_session(mid, 64, precision="fast")
out["decode_fast"] = f32(realm.decode(s, prompt))
realm.session_free(s)

# top-k and a seeded sampler on the prompt's last logits
vals, idx = top_k_logits(last, 5)
out["topk"] = {"values": [float(v) for v in vals], "ids": [int(i) for i in idx]}
sm = Sampler(SamplerConfig(temperature=0.9, top_k=40, top_p=0.95, min_p=0.02, repetition_penalty=1.1, seed=7))
out["sampled"] = [sm.sample(last, prompt) for _ in range(12)]

# generation: greedy chat, a stop string, a seeded sampler
chat = realm.apply_chat_template(mid, [{"role": "user", "content": "What is the capital of France?"}])
gens = []
for case in ({"max_tokens": 32}, {"max_tokens": 32, "stop": ["Paris"]}, {"max_tokens": 5},
             {"max_tokens": 16, "sampler": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.0,
                                            "repetition_penalty": 1.0, "seed": 1234}}):
    s = realm.create_session(mid, 256)
    sc = SamplerConfig(**case["sampler"]) if "sampler" in case else None
    c = realm.generate(s, chat, max_tokens=case["max_tokens"], sampler=sc, stop=case.get("stop", ()))
    gens.append({"case": case, "text": c.text, "tokens": c.token_ids, "finish": c.finish_reason,
                 "n_prompt": c.n_prompt, "n_tokens_after": s.n_tokens})
    realm.session_free(s)
out["chat_prompt"] = chat
out["generate"] = gens

json.dump(out, sys.stdout)
