"""The plain-C runtime (runtime_bindings/c) against the Python plan interpreter (PlanModel): same logits.

The bundle's kernels.o is linked with the runtime into one shared library, called here through ctypes.
A second build with AddressSanitizer + UBSan runs the same checks in a subprocess (LD_PRELOAD of libasan).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mcpm.runtime.build import SOURCES

ROOT = str(Path(__file__).resolve().parents[1])
C_DIR = Path(ROOT) / "runtime_bindings" / "c"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")


def build(bundle: Path, out: Path, sanitize: bool = False) -> Path:
    """runtime sources + <bundle>/kernels.o -> one shared library."""
    flags = CFLAGS + (SANITIZE if sanitize else ["-O2"])
    cmd = ["gcc", *flags, "-shared", "-o", str(out), *[str(C_DIR / s) for s in SOURCES], str(bundle / "kernels.o"),
           "-lm", "-lpthread", "-ldl"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


class Params(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("workspace_bytes", ctypes.c_size_t), ("verify", ctypes.c_int),
                ("kernel_variant", ctypes.c_char_p), ("device", ctypes.c_char_p), ("profile", ctypes.c_int),
                ("cache_dir", ctypes.c_char_p)]


def bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.mcpm_default_params.restype = Params
    lib.mcpm_model_load.restype = ctypes.c_void_p
    lib.mcpm_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(Params)]
    lib.mcpm_prefill.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.mcpm_decode.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
    lib.mcpm_last_error.restype = ctypes.c_char_p
    lib.mcpm_last_error.argtypes = [ctypes.c_void_p]
    for f in ("mcpm_reset", "mcpm_model_free"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
        getattr(lib, f).restype = None
    for f in ("mcpm_vocab_size", "mcpm_position", "mcpm_context_length"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.mcpm_session_new.restype = ctypes.c_void_p
    lib.mcpm_session_new.argtypes = [ctypes.c_void_p]
    lib.mcpm_session_free.argtypes = [ctypes.c_void_p]
    lib.mcpm_session_free.restype = None
    for f in ("mcpm_self_test_json", "mcpm_kernel_variants_json"):
        getattr(lib, f).argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    return lib


class CModel:
    def __init__(self, lib: ctypes.CDLL, bundle: Path, threads: int = 2) -> None:
        self.lib = lib
        p = lib.mcpm_default_params()
        p.threads = threads
        self.h = lib.mcpm_model_load(str(bundle).encode(), ctypes.byref(p))
        assert self.h, lib.mcpm_last_error(None).decode()
        self.vocab = lib.mcpm_vocab_size(self.h)

    def _check(self, rc: int) -> None:
        if rc:
            raise RuntimeError(self.lib.mcpm_last_error(self.h).decode())

    def prefill(self, tokens) -> np.ndarray:
        toks = np.ascontiguousarray(tokens, np.int32)  # [n]
        out = np.empty(self.vocab, np.float32)  # [vocab]
        self._check(self.lib.mcpm_prefill(self.h, toks.ctypes.data, len(toks), out.ctypes.data))
        return out

    def decode(self, token: int) -> np.ndarray:
        out = np.empty(self.vocab, np.float32)  # [vocab]
        self._check(self.lib.mcpm_decode(self.h, int(token), out.ctypes.data))
        return out

    def close(self) -> None:
        self.lib.mcpm_model_free(self.h)
        self.h = None


TOKENS = np.random.default_rng(0).integers(3, 4096, 19).astype(np.int32)  # prefill: 2 chunks + remainder (q4)
DECODE = [5, 77, 1000, 4095, 3]


def c_logits(model: CModel) -> np.ndarray:
    return np.stack([model.prefill(TOKENS)] + [model.decode(t) for t in DECODE])


def _bad_storage(d: Path) -> None:
    plan = json.loads((d / "plan.json").read_text())
    plan["entries"]["prefill"]["calls"][0]["args"][-1]["storage"] = 99
    (d / "plan.json").write_text(json.dumps(plan))


DAMAGES = [
    ("truncated", lambda d: (d / "weights.bin").write_bytes((d / "weights.bin").read_bytes()[:1000]),
     "weights.bin is truncated"),
    ("bad-storage", _bad_storage, "invalid plan: prefill call 0 (embed_q4_4096_256_32): storage id 99 out of range"),
    ("other-kernels", lambda d: (d / "plan.json").write_text((d / "plan.json").read_text().replace(
        "embed_q4_4096_256_32", "embed_q4_8192_256_32")), "not built with the kernels of"),
    ("bad-magic", lambda d: (d / "plan.json").write_text((d / "plan.json").read_text().replace("MCPMPLAN", "X")),
     "bad magic"),
    ("not-json", lambda d: (d / "plan.json").write_text('{"magic": "MCPMPLAN", '), "not JSON"),
]




# mcpm/tvm/torch are imported inside functions only: the sanitizer subprocess imports this module's ctypes
# helpers and must not load them (they do not run under an LD_PRELOADed libasan).


def export(model_dir: Path, out: Path, quant: str, ctx: int, chunk: int) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export

    run_export(ExportOptions(model_dir, out, "host", quant, (), ctx, chunk, progress=False))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, default_q4_bundle: Path) -> dict[str, Path]:
    from tests.conftest import tiny_minicpm, write_tiny

    root = tmp_path_factory.mktemp("cbundles")
    tiny = write_tiny(root / "tiny-model", tiny_minicpm(tie_word_embeddings=False), seed=3)
    return {
        "default-q4": default_q4_bundle,  # read-only: the damage tests copy it
        "tiny-f32": export(tiny, root / "tiny-f32", "f32", 64, 8),
    }


@pytest.fixture(scope="module")
def libs(bundles: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, ctypes.CDLL]:
    root = tmp_path_factory.mktemp("clibs")
    return {k: bind(build(b, root / f"libmcpm_{k}.so")) for k, b in bundles.items()}


def python_reference(bundle: Path) -> np.ndarray:
    """[1 + len(DECODE), vocab]: last-position logits of prefill(TOKENS), then of each decode step."""
    from mcpm.export.bundle.host_runner import load_bundle

    _, pm, _ = load_bundle(bundle)
    rows = [pm.prefill(TOKENS)[-1]] + [pm.decode(t)[-1] for t in DECODE]
    return np.stack(rows)


@pytest.mark.parametrize("name", ["default-q4", "tiny-f32"])
def test_logits_equal_python_plan_model(bundles, libs, name: str) -> None:
    ref = python_reference(bundles[name])
    for threads in (1, 2):
        model = CModel(libs[name], bundles[name], threads)
        got = c_logits(model)
        rel = np.abs(got - ref).max() / np.abs(ref).max()
        assert rel <= 1e-6, (threads, rel)
        assert model.lib.mcpm_position(model.h) == len(TOKENS) + len(DECODE)
        model.lib.mcpm_reset(model.h)  # after reset: the same again
        np.testing.assert_array_equal(c_logits(model), got)
        model.close()


def greedy(step_prefill, step_decode, ids: list[int], n: int) -> list[int]:
    logits = step_prefill(np.array(ids, np.int32))
    out = []
    for _ in range(n):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = step_decode(tok)
    return out


def test_greedy_16_tokens_identical(bundles, libs) -> None:
    from mcpm.export.bundle.host_runner import load_bundle

    bundle = bundles["default-q4"]
    _, pm, tok = load_bundle(bundle)
    ids = tok.encode("The Congress of the United States", add_bos=True)
    ref = greedy(lambda t: pm.prefill(t)[-1], lambda t: pm.decode(t)[-1], ids, 16)
    model = CModel(libs["default-q4"], bundle)
    assert greedy(model.prefill, model.decode, ids, 16) == ref
    assert len(set(ref)) > 3
    model.close()


def test_runtime_errors_are_reported(bundles, libs) -> None:
    model = CModel(libs["tiny-f32"], bundles["tiny-f32"])
    with pytest.raises(RuntimeError, match="out of range 0..4095"):
        model.prefill([1, 4096])
    with pytest.raises(RuntimeError, match="context full: 0 \\+ 65 tokens > max_ctx 64"):
        model.prefill(np.ones(65, np.int32))
    model.prefill(np.ones(64, np.int32))
    with pytest.raises(RuntimeError, match="context full: 64 \\+ 1 tokens > max_ctx 64"):
        model.decode(1)
    model.close()


@pytest.mark.parametrize(("damage", "message"), [(f, m) for _, f, m in DAMAGES], ids=[i for i, _, _ in DAMAGES])
def test_damaged_bundle_gives_error_and_null(bundles, libs, tmp_path: Path, damage, message: str) -> None:
    copy = Path(shutil.copytree(bundles["default-q4"], tmp_path / "copy"))
    damage(copy)
    lib = libs["default-q4"]
    assert not lib.mcpm_model_load(str(copy).encode(), None)
    assert message in lib.mcpm_last_error(None).decode()


def self_test(lib: ctypes.CDLL, bundle: Path) -> bool | str:
    """mcpm_self_test_json of a session on bundle: its "pass", or the error when the test cannot run."""
    import json

    model = CModel(lib, bundle, 2)
    session = lib.mcpm_session_new(model.h)
    assert session, lib.mcpm_last_error(model.h)
    out = ctypes.create_string_buffer(4096)
    try:
        assert lib.mcpm_kernel_variants_json(model.h, out, len(out)) == 0 and out.value == b"[]"  # one kernel set
        assert lib.mcpm_self_test_json(session, out, 8) == -1  # too small (or the record is damaged)
        if lib.mcpm_self_test_json(session, out, len(out)) != 0:
            return str(lib.mcpm_last_error(model.h).decode())
        return bool(json.loads(out.value.decode())["pass"])
    finally:
        lib.mcpm_session_free(session)
        model.close()


GOLDEN_DAMAGES = [  # (name, change of mcpm-config.json "golden", self_test's result)
    ("golden-intact", lambda g: None, True),
    ("golden-inf", lambda g: g["top5"][3][0].__setitem__(1, 1e300), False),  # inf as a float: a failure
    ("golden-tie", lambda g: g["ids"].__setitem__(4, g["top5"][4][1][0]), False),
    ("golden-id-type", lambda g: g["ids"].__setitem__(2, "7"), "token id outside the vocabulary"),
    ("golden-pair", lambda g: g["top5"][1].__setitem__(2, [5]), "top5 step 1 is damaged"),
    ("golden-scale", lambda g: g["scale"].__setitem__(0, -1), "top5/scale step 0 is damaged"),
    ("golden-empty", lambda g: g.update(prompt_ids=[]), "is damaged"),
    ("golden-none", lambda g: g.clear(), "is damaged"),
]


ASAN_DRIVER = textwrap.dedent(
    """
    import json, shutil, sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from tests.test_c_runtime import DAMAGES, GOLDEN_DAMAGES, CModel, bind, c_logits, self_test
    lib, bundle, work = bind(Path(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3])
    ref = np.load(work / "ref.npy")
    for threads in (1, 2):
        m = CModel(lib, bundle, threads)
        got = c_logits(m)
        assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-6
        m.close()
    for name, damage, message in DAMAGES:
        copy = Path(shutil.copytree(bundle, work / name))
        damage(copy)
        assert not lib.mcpm_model_load(str(copy).encode(), None)
        assert message in lib.mcpm_last_error(None).decode(), lib.mcpm_last_error(None)
    for name, change, verdict in GOLDEN_DAMAGES:  # the self-test's parser and checks (mcpm_selftest.c)
        copy = Path(shutil.copytree(bundle, work / name))
        config = json.loads((copy / "mcpm-config.json").read_text())
        change(config["golden"])
        (copy / "mcpm-config.json").write_text(json.dumps(config))
        got = self_test(lib, copy)
        assert got is verdict if isinstance(verdict, bool) else verdict in str(got), (name, got)
    print("ASAN-OK")
    """
)


def test_under_address_and_ub_sanitizers(bundles, tmp_path: Path) -> None:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    bundle = bundles["default-q4"]
    lib = build(bundle, tmp_path / "libmcpm_asan.so", sanitize=True)
    np.save(tmp_path / "ref.npy", python_reference(bundle))
    (tmp_path / "driver.py").write_text(ASAN_DRIVER)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(lib), str(bundle), str(tmp_path), ROOT],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "ASAN-OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
