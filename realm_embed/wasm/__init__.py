"""WebAssembly guests on the realm-embed runtime (wasmtime host).

    import realm_embed as realm
    from realm_embed.wasm import Host, Limits
    mid = realm.store_model()
    with Host() as host, host.tenant("generate", mid, limits=Limits(memory_mib=16)) as t:
        out = t.generate("What is the capital of France?", max_tokens=32)
        print(out.text, out.token_ids, out.finish_reason)

The guest SDK (the imports, the generator convention) is bindings/wasm/realm_guest.h.
Names load lazily, so `realm --help` does not import wasmtime.
"""
import importlib

_NAMES = {
    "ABI_VERSION": "abi", "GuestModule": "abi", "guest_abi": "abi",
    "GuestAbiError": "errors", "GuestFault": "errors", "GuestLimitError": "errors", "GuestStop": "errors",
    "GuestTrap": "errors",
    "GUESTS_DIR": "host", "Host": "host", "guest_path": "host",
    "IMPORTS": "imports",
    "GuestResult": "tenants", "Limits": "tenants", "Tenant": "tenants",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
