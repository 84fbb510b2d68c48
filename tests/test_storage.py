"""The registry: ids, reference counts, conflicts, busy removal, and nothing kept on failure."""
import threading

import pytest
import torch

import realm_embed as realm
from realm_embed.storage import REGISTRY


@pytest.fixture(scope="module")
def model_bytes(model_path):
    with open(model_path, "rb") as f:
        return f.read()


def test_same_content_same_id_refcounted(model_path, model_bytes, mid):
    assert realm.store_model(model_path) == mid
    assert realm.store_model(model_bytes) == mid                # bytes or path: same content
    assert REGISTRY.get(mid).refs >= 3
    realm.remove_model(mid), realm.remove_model(mid)            # back to the fixture's reference
    assert realm.get_model_info(mid)["id"] == mid


def test_bytes_are_copied(model_bytes):
    buf = bytearray(model_bytes)
    buf[-4] ^= 0x22                                             # distinct from the fixture's model
    mid = realm.store_model(buf, 0x51)
    want = realm.get_tensor(mid, "blk.0.attn_q.weight")
    buf[:] = bytes(len(buf))                                    # the caller reuses its buffer
    assert torch.equal(realm.get_tensor(mid, "blk.0.attn_q.weight"), want)
    realm.remove_model(mid)


def test_caller_ids_and_conflicts(model_path, mid, tmp_path):
    with pytest.raises(realm.ConflictError, match="already stored"):
        realm.store_model(model_path, 7)                        # same content, another id
    other = tmp_path / "other.gguf"
    data = bytearray(open(model_path, "rb").read())
    data[-1] ^= 0xFF                                            # other content (a weight byte)
    other.write_bytes(data)
    oid = realm.store_model(str(other), 7)
    assert oid == 7
    with pytest.raises(realm.ConflictError, match="0x7 already names a different model"):
        realm.store_model(model_path, 7)
    assert realm.store_model(str(other), 7) == 7                # same content, same id: a reference
    realm.remove_model(7), realm.remove_model(7)
    with pytest.raises(realm.NotFoundError, match="0x7 not found"):
        realm.get_model_info(7)


@pytest.mark.parametrize("bad", [-1, 1 << 64, 1.5, "1", True])
def test_bad_ids_are_argument_errors(model_path, bad):
    with pytest.raises(realm.ArgumentError, match="model_id"):
        realm.store_model(model_path, bad)


def test_stale_derived_id_never_names_a_new_model(model_bytes):
    data = bytearray(model_bytes)
    data[-2] ^= 0x55
    first = realm.store_model(data)
    realm.remove_model(first)
    second = realm.store_model(data)                            # same bytes, stored anew
    assert second != first
    with pytest.raises(realm.NotFoundError):
        realm.get_model_info(first)
    realm.remove_model(second)


def test_remove_with_live_sessions_is_busy(model_bytes):
    data = bytearray(model_bytes)
    data[-3] ^= 0x11
    m = realm.store_model(data)
    s = realm.create_session(m, 16)
    with pytest.raises(realm.BusyError, match="1 live session"):
        realm.remove_model(m)
    assert realm.decode(s, [1, 2, 3]).shape == (49152,)         # the session still works
    realm.session_free(s)
    realm.remove_model(m)
    with pytest.raises(realm.NotFoundError):
        realm.create_session(m)


def test_bad_sources_register_nothing(tmp_path):
    before = REGISTRY.ids()
    with pytest.raises(realm.RealmIOError, match="does not exist"):
        realm.store_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(realm.RealmIOError, match="directory"):
        realm.store_model(str(tmp_path))
    with pytest.raises(realm.FormatError):
        realm.store_model(b"GGUF" + b"\0" * 66)
    with pytest.raises(realm.FormatError):
        realm.store_model(b"")
    with pytest.raises(realm.ArgumentError, match="source"):
        realm.store_model(12345)
    assert REGISTRY.ids() == before


def test_info_describes_the_model(mid):
    info = realm.get_model_info(mid)
    assert (info["architecture"], info["n_layer"], info["n_embd"], info["n_head"], info["n_head_kv"]) == \
        ("llama", 30, 576, 9, 3)
    assert (info["n_vocab"], info["n_ctx_train"], info["n_tensors"], info["head_dim"]) == (49152, 8192, 272, 64)
    assert set(info["bytes_by_type"]) == {"Q4_1", "Q8_0", "F32"}
    assert info["has_chat_template"] and info["tied_output"]
    assert info["rope_freq_base"] == 100000.0 and info["bos_id"] == 1 and info["eos_id"] == 2


def test_get_tensor_shape_and_errors(mid):
    t = realm.get_tensor(mid, "blk.0.ffn_down.weight")
    assert t.dtype == torch.float32 and tuple(t.shape) == (576, 1536)
    assert "token_embd.weight" in realm.list_tensors(mid)
    with pytest.raises(realm.NotFoundError, match="'nope' not found"):
        realm.get_tensor(mid, "nope")


def test_concurrent_stores_agree(model_path, mid):
    ids, errors = [], []

    def worker():
        try:
            ids.append(realm.store_model(model_path))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and ids == [mid] * 8
    for _ in ids:
        realm.remove_model(mid)
    assert realm.get_model_info(mid)["id"] == mid


def test_weight_cache_is_shared_and_bounded(mid):
    from realm_embed.weights import WeightCache
    cache = WeightCache(budget_bytes=3 * 4 * 1000)
    for i in range(5):
        cache.get(("m", i), lambda: torch.zeros(1000))
    assert cache.nbytes == 3 * 4000                             # the two oldest were evicted
    made = []
    cache.get(("m", 4), lambda: made.append(1) or torch.zeros(1000))
    assert not made and cache.hits == 1
    cache.drop_model("m")
    assert cache.nbytes == 0
