"""The llama.cpp anchor: build `llama-bench` once from the sources the llama-cpp-python sdist on
PyPI vendors, cache it outside the repo, and run it.

    .venv/bin/python bench/llamacpp.py            # build if needed, print the binary's path

Cache: $REALM_BENCH_CACHE or ~/.cache/realm-bench/llama.cpp-<sdist version>/ (sources + build).
CPU only, Release, GGML_NATIVE=ON (tuned to this machine, as a user building it here would).
llama.cpp's code never enters this repository.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("REALM_BENCH_CACHE", Path.home() / ".cache" / "realm-bench"))


class BuildError(RuntimeError):
    pass


def _run(cmd, log, **kw):
    with open(log, "a") as f:
        f.write(f"$ {' '.join(map(str, cmd))}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    if r.returncode:
        tail = Path(log).read_text(errors="replace")[-3000:]
        raise BuildError(f"{cmd[0]} failed (exit {r.returncode}); log {log}:\n{tail}")


def _cached_binary() -> Path | None:
    found = sorted(glob.glob(str(CACHE / "llama.cpp-*" / "build" / "bin" / "llama-bench")))
    return Path(found[-1]) if found else None


def ensure_llama_bench(log=print) -> Path:
    """Path to a built llama-bench, building it (minutes, once) if the cache has none."""
    binary = _cached_binary()
    if binary is not None:
        return binary
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"building llama.cpp needs `{tool}` on PATH")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        log("llama.cpp: downloading the llama-cpp-python sdist (its vendored llama.cpp)...")
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
              "llama-cpp-python", "-d", tmp], CACHE / "build.log")
        sdists = glob.glob(os.path.join(tmp, "llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise BuildError("pip download produced no llama_cpp_python sdist")
        version = os.path.basename(sdists[0])[len("llama_cpp_python-"):-len(".tar.gz")]
        dest = CACHE / f"llama.cpp-{version}"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tar.extractall(tmp, members=members, filter="data")
        src = Path(tmp) / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.move(str(src), dest)
    build_log = dest / "build.log"
    log(f"llama.cpp: building llama-bench {version} (CPU, Release, GGML_NATIVE=ON); log {build_log}")
    _run(["cmake", "-S", dest, "-B", dest / "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
          "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DGGML_OPENMP=ON",
          "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
          "-DLLAMA_BUILD_SERVER=OFF", "-DBUILD_SHARED_LIBS=OFF"]
         + (["-G", "Ninja"] if shutil.which("ninja") else []), build_log)
    _run(["cmake", "--build", dest / "build", "--target", "llama-bench", "-j", str(os.cpu_count() or 2)],
         build_log)
    binary = dest / "build" / "bin" / "llama-bench"
    if not binary.is_file():
        raise BuildError(f"the build finished but {binary} is missing; see {build_log}")
    return binary


def version_of(binary: Path) -> str:
    return binary.parents[2].name.removeprefix("llama.cpp-")


def bench(binary: Path, model: str, threads: int, n_prompt: int, n_gen: int, reps: int) -> dict:
    """llama-bench's own repetitions: {"prefill": [tok/s...], "decode": [tok/s...]}."""
    out = {}
    for phase, args in (("prefill", ["-p", str(n_prompt), "-n", "0"]), ("decode", ["-p", "0", "-n", str(n_gen)])):
        r = subprocess.run([str(binary), "-m", model, "-t", str(threads), "-r", str(reps), "-o", "json", *args],
                           capture_output=True, text=True, timeout=600)
        if r.returncode:
            raise BuildError(f"llama-bench failed (exit {r.returncode}): {r.stderr[-2000:]}")
        rows = json.loads(r.stdout)
        samples = rows[0].get("samples_ts") or [rows[0]["avg_ts"]]
        out[phase] = [float(x) for x in samples]
    return out


if __name__ == "__main__":
    print(ensure_llama_bench())
