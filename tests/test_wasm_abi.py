"""The guest ABI without the model: the header agrees with the host and with errors.py, the shipped
guests are current and small, and modules that cannot run are refused with a sentence."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

import realm_embed.errors as E
from realm_embed.wasm import ABI_VERSION, IMPORTS, GuestAbiError, Host, guest_abi, guest_path
from realm_embed.wasm.abi import custom_sections
from wasm_util import GUESTS, proxy_wat, with_abi

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "bindings" / "wasm" / "realm_guest.h"


@pytest.fixture(scope="module")
def host():
    with Host() as h:
        yield h


def _defines(text: str, prefix: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(rf"#define\s+{prefix}(\w+)\s+(-?\d+)\b", text)}


def test_result_codes_equal_errors_py_and_realm_h():
    guest = _defines(HEADER.read_text(), "REALM_")
    codes = {k: v for k, v in guest.items() if k == "OK" or k.startswith("E_")}
    assert codes == {name: getattr(E, name) for name in dir(E) if name == "OK" or name.startswith("E_")}
    realm_h = ROOT / "include" / "realm.h"
    if realm_h.is_file():
        c = {k: v for k, v in _defines(realm_h.read_text(), "REALM_").items() if k == "OK" or k.startswith("E_")}
        assert codes == c
        finish = {k: v for k, v in _defines(realm_h.read_text(), "REALM_").items() if k.startswith("FINISH_")}
        assert finish == {k: v for k, v in guest.items() if k.startswith("FINISH_")}


def _header_imports() -> dict[str, tuple[str, str]]:
    """name -> (param kinds, result kind) from the C declarations, in the host's alphabet."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)
    out = {}
    for m in re.finditer(r"REALM_IMPORT\((\w+)\)\s+(\w+)\s+realm_\w+\(([^)]*)\);", text):
        kinds = ""
        for param in (p.strip() for p in m[3].split(",")):
            if param in ("void", ""):
                continue
            ty = param.rsplit(" ", 1)[0].replace("const ", "").strip()
            kinds += ("p" if "*" in param else "h" if ty == "realm_handle" else "i" if ty == "int32_t"
                      else "u" if ty == "uint32_t" else "I" if ty in ("int64_t", "uint64_t") else "f" if ty == "float"
                      else "?" + ty)
        out[m[1]] = (kinds, {"int32_t": "i", "int64_t": "I"}[m[2]])
    return out


def test_header_declares_exactly_the_host_imports():
    declared = _header_imports()
    assert sorted(declared) == sorted(IMPORTS)
    for name, (sig, _) in IMPORTS.items():
        assert declared[name] == (sig.params, sig.result), name


def test_header_abi_version_is_the_host_abi():
    assert _defines(HEADER.read_text(), "REALM_GUEST_")["ABI_VERSION"] == ABI_VERSION == 1


@pytest.mark.parametrize("name", ["generate", "ban_word"])
def test_shipped_guests_are_small_and_import_only_realm(host, name):
    path = guest_path(name)
    wasm = path.read_bytes()
    assert len(wasm) < 64 * 1024
    assert guest_abi(wasm) == ABI_VERSION
    g = host.load(path)
    assert g.memory_import is not None and g.memory_import.limits.min <= 2    # 128 KiB at start
    assert {"realm_guest_input", "realm_guest_generate", "realm_guest_result"} <= g.exports
    assert {i.name for i in g.module.imports if i.module == "realm"} <= set(IMPORTS)


@pytest.mark.skipif(not (shutil.which("clang") and shutil.which("wasm-ld")), reason="clang/lld not installed")
def test_shipped_guests_match_their_source(tmp_path):
    r = subprocess.run(["make", "-s", "-C", str(ROOT / "bindings" / "wasm"), f"OUT={tmp_path}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name in ("generate", "ban_word"):
        built, shipped = (tmp_path / f"{name}.wasm").read_bytes(), guest_path(name).read_bytes()
        producers = [custom_sections(w, "producers") for w in (built, shipped)]
        if built != shipped and producers[0] != producers[1]:
            pytest.skip(f"the shipped guests come from another compiler: {producers[1]} vs {producers[0]}")
        assert built == shipped, f"realm_embed/guests/{name}.wasm is stale: run make -C bindings/wasm"


def test_old_guest_on_new_host_names_the_import_and_both_abis(host):
    wasm = with_abi(wasmtime.wat2wasm((GUESTS / "old_abi.wat").read_text()), 0)
    with pytest.raises(GuestAbiError) as e:
        host.load(wasm)
    assert str(e.value) == "unknown import realm.forward_layer_v0 (guest built for ABI 0, host ABI 1)"
    assert e.value.code == E.E_UNSUPPORTED
    with pytest.raises(GuestAbiError, match=r"unknown import realm.forward_layer_v0 \(guest built for ABI "
                                            r"unknown, host ABI 1\)"):
        host.load(GUESTS / "old_abi.wat")


def test_wrong_signature_and_foreign_imports_are_refused(host):
    with pytest.raises(GuestAbiError, match=r"import realm.emit has type \(i32\) -> \(i32\), the host's is "
                                            r"\(i32, i32\) -> \(i32\)"):
        host.load('(module (import "realm" "emit" (func (param i32) (result i32))) (memory (export "memory") 1))')
    with pytest.raises(GuestAbiError, match=r"unknown import wasi_snapshot_preview1.fd_write: a realm guest imports "
                                            r"only module 'realm' and env.memory"):
        host.load('(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))')
    with pytest.raises(GuestAbiError, match="neither imports env.memory nor exports a memory"):
        host.load("(module (func (export \"run\")))")
    with pytest.raises(GuestAbiError, match="not a WebAssembly module"):
        host.load(b"\x7fELF not wasm")
    with pytest.raises(GuestAbiError, match="not a valid WebAssembly module"):
        host.load(b"\0asm\x01\0\0\0\x01\xff")
    mixed = with_abi(with_abi(wasmtime.wat2wasm('(module (memory (export "memory") 1))'), 1), 2)
    with pytest.raises(GuestAbiError, match=r"built for different ABIs \[1, 2\]"):
        host.load(mixed)


def test_modules_compile_once_per_content(host):
    assert host.load(proxy_wat()) is host.load(proxy_wat().encode())
    assert host.load("generate") is host.load(guest_path("generate"))
