"""The plain-C runtime against damaged bundles (seeded mutation fuzzing under ASan/UBSan) and several models at once.

1. Mutants of plan.json / weights.bin / mcpm-config.json are loaded by a sanitizer build in a subprocess (the model,
   then a C session, which parses mcpm-config.json and loads the tokenizer); a mutant either fails with a message
   or loads and runs without memory errors. (tests/native/fuzz_bundle.c is the libFuzzer version: `make fuzz`.)
   Data bytes of weights.bin are not checked on a plain load (only the tensor table is): with verify=1 they are.
2. Two handles of one bundle plus a second bundle, interleaved and from two Python threads, give exactly the
   logits of each model run alone (no shared mutable state).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.test_c_runtime import ROOT, CModel, bind, build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")

FUZZ_SEED = 20240611
FUZZ_ITERS = 150
N_VERIFY = 12  # data-byte flips loaded with verify=0 and verify=1
MUTATED_FILES = ["plan.json", "weights.bin", "mcpm-config.json"]
HUGE_NUMBERS = ["-1", "0", "-2147483649", "2147483648", "4294967296", "9223372036854775807", "18446744073709551616",
                "1e308", "-1e308", "1e400", "3.5", "-0", "99999999999999999999999"]

# ---------------------------------------------------------------- mutations (stdlib only: run under ASan too)


def weights_layout(data: bytes) -> tuple[int, int, int]:
    """(n tensors, data_offset, data_bytes) of a weights.bin header."""
    n = struct.unpack_from("<I", data, 12)[0]
    data_offset, data_bytes = struct.unpack_from("<QQ", data, 24)
    return n, data_offset, data_bytes


def _flip(rng: random.Random, b: bytearray, lo: int = 0, hi: int | None = None) -> None:
    hi = len(b) if hi is None else hi
    for _ in range(rng.choice([1, 1, 2, 4, 16])):
        i = rng.randrange(lo, hi)
        b[i] ^= rng.randrange(1, 256)


def _json_number(rng: random.Random, b: bytearray) -> bytearray:
    spans = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?", bytes(b))]
    if not spans:
        return b
    s, e = rng.choice(spans)
    return b[:s] + rng.choice(HUGE_NUMBERS).encode() + b[e:]


def _json_node(rng: random.Random, b: bytearray) -> bytearray:
    """Replace a random node of the JSON tree with a value of another kind or size."""
    try:
        doc = json.loads(bytes(b))
    except ValueError:
        return b
    nodes: list[tuple[object, object]] = []  # (container, key)

    def walk(x: object) -> None:
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in items:
            nodes.append((x, k))
            walk(v)

    walk(doc)
    if not nodes:
        return b
    parent, key = rng.choice(nodes)
    choice = rng.randrange(8)
    if choice == 0 and isinstance(parent, dict):
        del parent[key]
    elif choice == 1 and isinstance(parent, list):
        parent.append(parent[key])  # type: ignore[index]
    else:
        parent[key] = rng.choice([None, True, "", "x" * 300, [], {}, [[]], -1, 0, 2**31, 2**63, -(2**63), 1e300,  # type: ignore[index]
                                  [2**40, -5], {"id": -1}])
    return bytearray(json.dumps(doc).encode())


def _table_field(rng: random.Random, b: bytearray) -> None:
    """Change one field of weights.bin's tensor table and fix the table checksum (gets past the CRC check)."""
    n, _, _ = weights_layout(b)
    if n == 0 or len(b) < 64 + n * 128:
        return
    r = 64 + rng.randrange(n) * 128
    field = rng.choice([(r + 64, "<I"), (r + 68, "<I"), (r + 72, "<Q"), (r + 80, "<Q"), (r + 104, "<Q"),
                        (r + 112, "<Q"), (r, "<Q")])
    value = rng.choice([0, 1, 5, 6, 64, 2**31, 2**32 - 1, 2**63, 2**64 - 64, 2**64 - 1])
    struct.pack_into(field[1], b, field[0], value & (2 ** (8 * struct.calcsize(field[1])) - 1))
    struct.pack_into("<I", b, 40, zlib.crc32(bytes(b[64:64 + n * 128])))


def _header_field(rng: random.Random, b: bytearray) -> None:
    off, fmt = rng.choice([(8, "<I"), (12, "<I"), (16, "<Q"), (24, "<Q"), (32, "<Q"), (40, "<I"), (44, "<I")])
    value = rng.choice([0, 1, 63, 64, 2**31, 2**32 - 1, 2**63, 2**64 - 1, len(b), len(b) + 64])
    struct.pack_into(fmt, b, off, value & (2 ** (8 * struct.calcsize(fmt)) - 1))


def mutate(rng: random.Random, name: str, data: bytes) -> bytes:
    """One seeded mutation of file `name`'s bytes."""
    b = bytearray(data)
    is_json = name.endswith(".json")
    kinds = ["flip", "truncate", "insert", "delete", "duplicate"]
    kinds += ["number", "number", "node", "node"] if is_json else ["header", "table", "table", "flip-head"]
    kind = rng.choice(kinds)
    if kind == "flip" and b:
        _flip(rng, b)
    elif kind == "flip-head" and len(b) > 64:  # header + tensor table (the data section is most of the file)
        _flip(rng, b, 0, min(len(b), weights_layout(b)[1] or 64))
    elif kind == "truncate":
        b = b[:rng.randrange(len(b) + 1)] if rng.random() < 0.5 else b[:rng.randrange(min(len(b), 20000) + 1)]
    elif kind == "insert":
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 3, 64, 1000])))
    elif kind == "delete" and b:
        i = rng.randrange(len(b))
        del b[i:i + rng.choice([1, 7, 64, 4096])]
    elif kind == "duplicate" and b:
        i = rng.randrange(len(b))
        chunk = b[i:i + rng.choice([1, 16, 128, 5000])]
        j = rng.randrange(len(b) + 1)
        b[j:j] = chunk
    elif kind == "number":
        b = _json_number(rng, b)
    elif kind == "node":
        b = _json_node(rng, b)
    elif kind == "header" and len(b) >= 64:
        _header_field(rng, b)
    elif kind == "table" and len(b) >= 64:
        _table_field(rng, b)
    return bytes(b)


# ---------------------------------------------------------------- the sanitizer subprocess


def fuzz_main(lib_path: str, bundle_dir: str, work_dir: str, seed: int, iters: int) -> dict:
    """Runs in the ASan/UBSan subprocess: only ctypes, numpy and stdlib are used here."""
    lib = bind(Path(lib_path))
    bundle, work = Path(bundle_dir), Path(work_dir)
    rng = random.Random(seed)
    originals = {n: (bundle / n).read_bytes() for n in MUTATED_FILES}
    stats = {"loaded": 0, "rejected": 0, "empty_messages": 0, "messages": [], "verify": []}

    def make_dir(tag: str, files: dict[str, bytes]) -> Path:
        d = work / tag
        d.mkdir()
        for f in bundle.iterdir():
            if f.name in files:
                (d / f.name).write_bytes(files[f.name])
            else:
                os.symlink(f, d / f.name)
        return d

    def load(d: Path, verify: int, threads: int) -> int | None:
        p = lib.mcpm_default_params()
        p.threads, p.verify = threads, verify
        return lib.mcpm_model_load(str(d).encode(), ctypes.byref(p))

    def run(h: int) -> None:
        session = lib.mcpm_session_new(h)  # parses mcpm-config.json; a refusal needs a message
        if session:
            lib.mcpm_session_free(session)
        elif not lib.mcpm_last_error(h):
            stats["empty_messages"] += 1
        vocab = lib.mcpm_vocab_size(h)
        out = np.empty(vocab, np.float32) if 0 < vocab <= 1 << 20 else None  # [vocab]
        ptr = out.ctypes.data if out is not None else None
        toks = np.array([1, 2, 3, 7, 11], np.int32)
        lib.mcpm_prefill(h, toks.ctypes.data, len(toks), ptr)  # -1 is fine: only memory safety counts here
        lib.mcpm_decode(h, 5, ptr)
        lib.mcpm_model_free(h)

    for it in range(iters):
        name = rng.choices(MUTATED_FILES, weights=[4, 4, 3])[0]
        mutant = mutate(rng, name, originals[name])
        d = make_dir(f"m{it}", {name: mutant})
        h = load(d, verify=int(rng.random() < 0.25), threads=rng.choice([1, 2]))
        if h:
            stats["loaded"] += 1
            run(h)
        else:
            stats["rejected"] += 1
            msg = lib.mcpm_last_error(None).decode(errors="replace")
            stats["empty_messages"] += not msg
            stats["messages"].append(msg)
        shutil.rmtree(d)

    # data bytes of weights.bin: loadable without verify, rejected with it
    w = originals["weights.bin"]
    _, data_offset, data_bytes = weights_layout(w)
    for k in range(N_VERIFY):
        b = bytearray(w)
        b[rng.randrange(data_offset, data_offset + data_bytes)] ^= rng.randrange(1, 256)
        d = make_dir(f"v{k}", {"weights.bin": bytes(b)})
        plain = load(d, verify=0, threads=1)
        if plain:
            run(plain)
        checked = load(d, verify=1, threads=1)
        msg = "" if checked else lib.mcpm_last_error(None).decode(errors="replace")
        if checked:
            lib.mcpm_model_free(checked)
        stats["verify"].append([bool(plain), bool(checked), msg])
        shutil.rmtree(d)
    return stats


FUZZ_DRIVER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[6])
    from tests.test_c_fuzz import fuzz_main
    stats = fuzz_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    print("FUZZ-STATS " + json.dumps(stats))
    """
)


def test_mutated_bundles_under_sanitizers(default_q4_bundle: Path, tmp_path: Path) -> None:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    lib = build(default_q4_bundle, tmp_path / "libmcpm_asan.so", sanitize=True)
    (tmp_path / "driver.py").write_text(FUZZ_DRIVER)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(lib), str(default_q4_bundle), str(work),
                          str(FUZZ_SEED), str(FUZZ_ITERS), ROOT], capture_output=True, text=True, env=env, timeout=300)
    report = res.stdout[-3000:] + res.stderr[-6000:]
    assert res.returncode == 0, report
    assert "ERROR: AddressSanitizer" not in res.stderr and "runtime error:" not in res.stderr, report
    line = [x for x in res.stdout.splitlines() if x.startswith("FUZZ-STATS ")]
    assert line, report
    stats = json.loads(line[-1][len("FUZZ-STATS "):])
    assert stats["loaded"] + stats["rejected"] == FUZZ_ITERS
    assert stats["rejected"] >= FUZZ_ITERS // 4, stats["rejected"]
    assert stats["loaded"] >= 5, stats["loaded"]  # some mutants are harmless (config, data bytes, whitespace)
    assert stats["empty_messages"] == 0
    assert all(m.strip() for m in stats["messages"])
    for plain, checked, msg in stats["verify"]:
        assert plain and not checked, (plain, checked, msg)
        assert "data checksum mismatch" in msg, msg


# ---------------------------------------------------------------- several models at once


class Model(CModel):
    """A CModel run by scripts: step 0 = prefill(tokens), then decode(t) for each t."""

    def step(self, i: int, script: tuple[np.ndarray, list[int]]) -> np.ndarray:
        return self.prefill(script[0]) if i == 0 else self.decode(int(script[1][i - 1]))

    def run_all(self, script: tuple[np.ndarray, list[int]]) -> np.ndarray:
        """[1 + len(decodes), vocab] from position 0."""
        self.lib.mcpm_reset(self.h)
        return np.stack([self.step(i, script) for i in range(1 + len(script[1]))])



_rng = np.random.default_rng(1)
SCRIPTS = [
    (_rng.integers(3, 4096, 19).astype(np.int32), [5, 77, 1000, 4095, 3, 9]),
    (_rng.integers(3, 4096, 7).astype(np.int32), [12, 400, 2, 3000, 8, 8]),
    (_rng.integers(3, 4096, 11).astype(np.int32), [1, 2, 3, 4, 5, 6]),
]


@pytest.fixture(scope="module")
def two_bundles(
    default_q4_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[ctypes.CDLL, Path]]:
    from mcpm.export.exporter import ExportOptions, run_export
    from tests.conftest import tiny_minicpm, write_tiny

    root = tmp_path_factory.mktemp("fuzz-multi")
    tiny = write_tiny(root / "tiny-model", tiny_minicpm(tie_word_embeddings=False), seed=5)
    run_export(ExportOptions(tiny, root / "tiny-f32", "host", "f32", (), 64, 8, progress=False))
    out = {}
    for name, b in [("q4", default_q4_bundle), ("tiny", root / "tiny-f32")]:
        out[name] = (bind(build(b, root / f"libmcpm_{name}.so")), b)
    return out


def test_models_interleaved_equal_alone(two_bundles) -> None:
    (lib_q4, b_q4), (lib_tiny, b_tiny) = two_bundles["q4"], two_bundles["tiny"]
    models = [Model(lib_q4, b_q4), Model(lib_q4, b_q4), Model(lib_tiny, b_tiny)]
    alone = []
    for m, s in zip(models, SCRIPTS[:len(models)], strict=True):
        alone.append(m.run_all(s))
        np.testing.assert_array_equal(m.run_all(s), alone[-1])  # deterministic on its own
    assert not np.array_equal(alone[0][0], alone[1][0])  # different inputs, so shared state would show
    for m in models:
        m.lib.mcpm_reset(m.h)
    steps = 1 + len(SCRIPTS[0][1])
    got = [[] for _ in models]
    for i in range(steps):  # A, B, C step by step
        for k, (m, s) in enumerate(zip(models, SCRIPTS[:len(models)], strict=True)):
            got[k].append(m.step(i, s))
    for k in range(len(models)):
        np.testing.assert_array_equal(np.stack(got[k]), alone[k])
    for m in models:
        m.close()


def _worker(models: list[Model], results: list[list[np.ndarray]], errors: list[BaseException],
            barrier: threading.Barrier):
    def worker(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(4):  # ctypes drops the GIL: both models really run at the same time
                results[k].append(models[k].run_all(SCRIPTS[k]))
        except BaseException as e:  # noqa: BLE001 - reported in the main thread
            errors.append(e)

    return worker


def test_models_on_two_python_threads_equal_sequential(two_bundles) -> None:
    (lib_q4, b_q4), (lib_tiny, b_tiny) = two_bundles["q4"], two_bundles["tiny"]
    for pair in ([(lib_q4, b_q4), (lib_q4, b_q4)], [(lib_q4, b_q4), (lib_tiny, b_tiny)]):
        models = [Model(lib, b) for lib, b in pair]
        sequential = [m.run_all(s) for m, s in zip(models, SCRIPTS[:len(models)], strict=True)]
        results: list[list[np.ndarray]] = [[], []]
        errors: list[BaseException] = []
        worker = _worker(models, results, errors, threading.Barrier(2))
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for k in range(2):
            assert len(results[k]) == 4
            for r in results[k]:
                np.testing.assert_array_equal(r, sequential[k])
        for m in models:
            m.close()


# ---------------------------------------------------------------- sizes computed from plan.json never overflow

@pytest.mark.parametrize("dims", [[2**32, 2**32], [2**40, 2**40, 2**40], [2**31, 2**33], [2**40, 0, 2**40]])
def test_huge_tensor_shapes_are_refused_not_wrapped(dims: list[int], default_q4_bundle: Path, tmp_path: Path) -> None:
    """A planned tensor of 2^32 x 2^32 float32 is 2^66 bytes: the size once wrapped to 0 in int64 and the bundle
    loaded (undefined behaviour, UBSan: signed overflow). It must be refused like any tensor larger than its storage
    (or, with a zero dimension, accepted as the empty tensor it is)."""
    from mcpm.errors import McpmError
    from mcpm.runtime.binding import Model

    bundle = tmp_path / "b"
    shutil.copytree(default_q4_bundle, bundle)
    plan = json.loads((bundle / "plan.json").read_text())
    call = plan["entries"]["decode"]["calls"][0]
    out = next(a for a in call["args"] if a["kind"] == "tensor")
    out["shape"] = [[0, d] for d in dims]
    (bundle / "plan.json").write_text(json.dumps(plan))
    lib = build(default_q4_bundle, tmp_path / "lib.so")
    if 0 in dims:
        with pytest.raises(McpmError, match="Mismatched out.ndim") as info:  # the kernel's own check refuses it
            Model.load(bundle, library=lib).decode(1)
        assert "\n" not in str(info.value)  # one line
        return
    with pytest.raises(McpmError, match="storage|bytes|larger|exceeds|shape"):
        Model.load(bundle, library=lib)
