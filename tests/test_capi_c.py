"""The C ABI from real C hosts: tests/c/ and examples/c/ compiled against include/realm.h and
linked with -lrealm (or dlopen()ed), run as separate processes.

Each host runs with a hostile Python environment (PYTHONHOME, PYTHONPATH, PYTHONFAULTHANDLER set
to nonsense): the library's isolated start-up must ignore all of it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from realm_embed import buildinfo

ROOT = Path(__file__).resolve().parent.parent
CC = shutil.which("gcc") or shutil.which("cc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")

HOSTILE = {"PYTHONHOME": "/nonexistent", "PYTHONPATH": "/nonexistent", "PYTHONFAULTHANDLER": "1",
           "PYTHONWARNINGS": "error"}


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "REALM_"))}
    e.update(HOSTILE)
    e.update(extra)
    return e


def compile_c(src: Path, out: Path, *flags: str, link: bool = True) -> Path:
    cmd = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", buildinfo.cflags(), str(src), "-o", str(out)]
    if link:
        cmd += buildinfo.libs().split() + ["-lm"]
    cmd += list(flags)
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("c")


@pytest.fixture(scope="module")
def test_realm(bin_dir) -> Path:
    return compile_c(ROOT / "tests" / "c" / "test_realm.c", bin_dir / "test_realm")


def run(exe, *args, timeout=300, **extra):
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env(**extra))


def test_header_is_strict_c99_and_cxx(bin_dir):
    src = bin_dir / "strict.c"
    src.write_text('#include "realm.h"\n'
                   "int main(void) {\n"
                   "    realm_error e = REALM_ERROR_INIT; realm_model_info i = REALM_MODEL_INFO_INIT;\n"
                   "    realm_tensor_info t = REALM_TENSOR_INFO_INIT; realm_sampler_params s = REALM_SAMPLER_PARAMS_INIT;\n"
                   "    realm_generate_params g = REALM_GENERATE_PARAMS_INIT;\n"
                   "    realm_generate_result r = REALM_GENERATE_RESULT_INIT;\n"
                   "    (void)e; (void)i; (void)t; (void)s; (void)g; (void)r; return 0;\n}\n")
    for compiler, std in [(CC, "-std=c99"), (shutil.which("g++"), "-std=c++11")]:
        if compiler is None:
            continue
        r = subprocess.run([compiler, std, "-pedantic", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                            buildinfo.cflags()] + (["-x", "c++"] if "++" in std else []) + [str(src)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_c_host_main_calls_and_error_paths(test_realm):
    r = run(test_realm)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].endswith(" passed, 0 failed"), r.stdout
    assert "answer: The capital of France is Paris." in r.stdout
    assert r.stderr == ""


def _python_without_package() -> list[str]:
    out = []
    base = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    for exe in (base, "/usr/bin/python3"):
        if os.path.isfile(exe) and subprocess.run([exe, "-c", "import realm_embed"], capture_output=True,
                                                  env=env(), cwd="/").returncode != 0:
            out.append(exe)
    return out + ["/nonexistent/bin/python"]


@pytest.mark.parametrize("python", _python_without_package())
def test_c_host_start_up_failure(test_realm, python):
    """REALM_PYTHON at a Python without the package: REALM_E_INIT from every call, forever, the
    reason in the message, nothing on stderr, and the process goes on to exit normally."""
    r = run(test_realm, "--expect-init-failure", REALM_PYTHON=python)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    assert r.stdout.splitlines()[-1].endswith(" passed, 0 failed"), r.stdout
    reason = r.stdout.splitlines()[0]
    assert python in reason
    if python.startswith("/nonexistent"):
        assert "is not an executable file" in reason
    else:
        assert "No module named" in reason and "set REALM_PYTHON" in reason


def test_rtld_local_host(bin_dir):
    exe = compile_c(ROOT / "tests" / "c" / "dlopen_host.c", bin_dir / "dlopen_host", "-ldl", link=False)
    r = run(exe, buildinfo.library_path())
    assert r.returncode == 0 and r.stdout.startswith("ok "), r.stdout + r.stderr
    assert r.stderr == ""


def test_examples_paris_and_layers(bin_dir):
    paris = compile_c(ROOT / "examples" / "c" / "paris.c", bin_dir / "paris")
    r = run(paris)
    assert r.returncode == 0 and "Paris" in r.stdout and r.stderr == "", r.stdout + r.stderr
    layers = compile_c(ROOT / "examples" / "c" / "layers.c", bin_dir / "layers")
    r = run(layers)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    assert r.stdout.splitlines()[1].startswith("The capital of France is Paris"), r.stdout


def test_config_command_and_pkg_config(bin_dir):
    r = subprocess.run([sys.executable, "-m", "realm_embed", "config", "--cflags", "--libs"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"{buildinfo.cflags()} {buildinfo.libs()}", r.stderr
    r = subprocess.run([sys.executable, "-m", "realm_embed", "config", "--nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown flag '--nope'" in r.stderr
    pkg_config = shutil.which("pkg-config")
    if pkg_config is None:
        pytest.skip("no pkg-config")
    r = subprocess.run([pkg_config, "--cflags", "--libs", "realm"], capture_output=True, text=True,
                       env={**os.environ, "PKG_CONFIG_PATH": str(buildinfo.pkgconfig_path().parent)})
    assert r.returncode == 0, r.stderr
    flags = r.stdout.split()
    exe = bin_dir / "paris_pc"
    c = subprocess.run([CC, str(ROOT / "examples" / "c" / "paris.c"), "-o", str(exe), *flags], capture_output=True,
                       text=True)
    assert c.returncode == 0, c.stderr
    assert Path(flags[0][2:]).resolve() == buildinfo.include_dir().resolve()
