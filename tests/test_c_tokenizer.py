"""The C SentencePiece BPE tokenizer (runtime_bindings/c/mcpm_tokenizer.c) against the sentencepiece package.

Built with gcc into a shared library and called through ctypes; compared token-for-token on the default
model's tokenizer.model and on a ~24k-piece BPE trained here, then once more under ASan/UBSan in a subprocess.
This module imports only ctypes, sentencepiece and the standard library at top level, so the ASan subprocess
can import it (torch/tvm crash under ASan).
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

spm = pytest.importorskip("sentencepiece")

REPO = Path(__file__).resolve().parents[1]
C_DIR = REPO / "runtime_bindings" / "c"
DEFAULT_TOKENIZER = REPO / "export" / "default_model" / "tokenizer.model"  # mcpm.export.loading.DEFAULT_MODEL_DIR
HELDOUT = REPO / "export" / "default_model" / "heldout.txt"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-shared"]

CORPUS: list[str | bytes] = [
    "",
    " ",
    "   ",
    "Hello world",
    "Hello  world",
    " leading space",
    "trailing space ",
    "The quick brown fox jumps over the lazy dog. It's 3:45pm, isn't it?",
    "Gentlemen of the Senate and Gentlemen of the House of Representatives:",
    "你好，世界！今天天气很好。",
    "机器学习是人工智能的一个分支。",
    "mixed 中文 and English 文本 together",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧",
    "tabs\tand\nnewlines\r\n\n\tend",
    "many     spaces      here",
    "rare bytes \x01\x02\x7f and \x00 nul",
    "combining e\u0301 a\u0308 n\u0303 \u0301alone",
    "<用户>你好<AI>Hello<用户><AI>",
    "<用户> spaced <AI> markers",
    "text<AI>glued<用户>more",
    "<s></s><unk><0x41> control-looking text",
    "▁already▁escaped▁",
    "привет мир, γειά σου κόσμε, こんにちは、안녕하세요",
    "numbers 1234567890 3.14159 1e-9",
    "symbols !@#$%^&*()_+-=[]{}|;':\",./<>?`~",
    "\ufffd replacement char \ufeff bom",
    "a" * 300,
    "ab " * 100,
    b"invalid utf-8: \xff \xc3 \xe4\xb8 \xed\xa0\x80 \xf4\x90\x80\x80 end",
    b"\xc0\x80 overlong \xe0\x80\x80",
]


def _corpus_extra(model_lines: list[str]) -> list[str]:
    rnd = random.Random(1234)
    pool = "aeiou xyzABC中文字😀é\u0301\t\n  <>用户AI▁\x01\x7f"
    out = [rnd.choice(model_lines) for _ in range(40)]
    out += ["".join(rnd.choice(pool) for _ in range(rnd.randint(1, 40))) for _ in range(150)]
    return out


class CTokenizer:
    def __init__(self, lib: ctypes.CDLL, path: Path):
        self.lib = lib
        err = ctypes.create_string_buffer(512)
        self.h = lib.mcpm_tokenizer_load(str(path).encode(), err, 512)
        if not self.h:
            raise ValueError(err.value.decode())

    def encode(self, text: str | bytes) -> list[int]:
        b = text.encode("utf-8") if isinstance(text, str) else text
        n = self.lib.mcpm_tokenizer_encode(self.h, b, len(b), None, 0)
        assert n >= 0
        ids = (ctypes.c_int32 * max(n, 1))()
        assert self.lib.mcpm_tokenizer_encode(self.h, b, len(b), ids, n) == n
        if n > 0:
            assert self.lib.mcpm_tokenizer_encode(self.h, b, len(b), ids, n - 1) == -1
        return list(ids[:n])

    def decode(self, ids: list[int]) -> str:
        arr = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        n = self.lib.mcpm_tokenizer_decode(self.h, arr, len(ids), None, 0)
        assert n >= 0
        out = ctypes.create_string_buffer(n + 1)
        assert self.lib.mcpm_tokenizer_decode(self.h, arr, len(ids), out, n + 1) == n
        assert self.lib.mcpm_tokenizer_decode(self.h, arr, len(ids), out, n) == -1  # no room for the NUL
        return out.raw[:n].decode("utf-8")

    def close(self) -> None:
        self.lib.mcpm_tokenizer_free(self.h)
        self.h = None


def load_lib(path: str | Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    vp, i32, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t
    lib.mcpm_tokenizer_load.restype = vp
    lib.mcpm_tokenizer_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, sz]
    lib.mcpm_tokenizer_encode.restype = ctypes.c_int
    lib.mcpm_tokenizer_encode.argtypes = [vp, ctypes.c_char_p, sz, ctypes.POINTER(i32), ctypes.c_int]
    lib.mcpm_tokenizer_decode.restype = ctypes.c_int
    lib.mcpm_tokenizer_decode.argtypes = [vp, ctypes.POINTER(i32), ctypes.c_int, ctypes.c_char_p, sz]
    lib.mcpm_tokenizer_id_to_piece.restype = ctypes.POINTER(ctypes.c_char)
    lib.mcpm_tokenizer_id_to_piece.argtypes = [vp, i32, ctypes.POINTER(sz)]
    lib.mcpm_tokenizer_piece_to_id.restype = i32
    lib.mcpm_tokenizer_piece_to_id.argtypes = [vp, ctypes.c_char_p, sz]
    for name in ("vocab_size", "bos_id", "eos_id", "unk_id"):
        fn = getattr(lib, "mcpm_tokenizer_" + name)
        fn.restype = i32
        fn.argtypes = [vp]
    lib.mcpm_tokenizer_free.restype = None
    lib.mcpm_tokenizer_free.argtypes = [vp]
    return lib


def check_model(lib: ctypes.CDLL, model_path: str | Path, texts: list[str | bytes]) -> int:
    """Everything the C tokenizer must agree with sentencepiece on; returns the number of ids compared."""
    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    tok = CTokenizer(lib, Path(model_path))
    try:
        h = tok.h
        V = sp.get_piece_size()
        assert lib.mcpm_tokenizer_vocab_size(h) == V
        assert lib.mcpm_tokenizer_bos_id(h) == sp.bos_id()
        assert lib.mcpm_tokenizer_eos_id(h) == sp.eos_id()
        assert lib.mcpm_tokenizer_unk_id(h) == sp.unk_id()
        n = ctypes.c_size_t()
        for i in range(V):
            p = lib.mcpm_tokenizer_id_to_piece(h, i, ctypes.byref(n))
            piece = ctypes.string_at(p, n.value)
            assert piece.decode() == sp.id_to_piece(i), i
            assert lib.mcpm_tokenizer_piece_to_id(h, piece, len(piece)) == sp.piece_to_id(sp.id_to_piece(i))
        assert not lib.mcpm_tokenizer_id_to_piece(h, V, None)
        assert lib.mcpm_tokenizer_piece_to_id(h, b"\xe2\x96\x81no-such-piece-xyz", 21) == sp.unk_id()
        compared = 0
        for text in texts:
            want = sp.encode(text)
            got = tok.encode(text)
            assert got == want, (text, got, want, sp.id_to_piece(want))
            assert tok.decode(got) == sp.decode(want), text
            compared += len(want)
        rnd = random.Random(7)
        special = [i for i in (sp.bos_id(), sp.eos_id(), sp.unk_id()) if i >= 0]
        for _ in range(200):  # arbitrary id sequences: control/unk/byte pieces anywhere
            ids = [rnd.choice(special) if rnd.random() < 0.2 else rnd.randrange(V) for _ in range(rnd.randint(0, 12))]
            assert tok.decode(ids) == sp.decode(ids), ids
        bad = (ctypes.c_int32 * 2)(1, V)
        assert lib.mcpm_tokenizer_decode(h, bad, 2, None, 0) == -1
        return compared
    finally:
        tok.close()


def check_garbled(lib: ctypes.CDLL, model_path: str | Path, tmp_dir: str | Path) -> None:
    """Truncated or corrupted files must load with a message or load cleanly, never crash."""
    data = Path(model_path).read_bytes()
    tmp = Path(tmp_dir) / "garbled.model"
    err = ctypes.create_string_buffer(256)
    rnd = random.Random(3)
    cuts = [0, 1, 2, 7, 100, len(data) // 2, len(data) - 20, len(data) - 3, len(data) - 1]
    variants = [data[:c] for c in cuts]
    for _ in range(60):
        b = bytearray(data)
        for _ in range(rnd.randint(1, 8)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        variants.append(bytes(b))
    variants.append(b"\xff" * 64)
    errors = 0
    for v in variants:
        tmp.write_bytes(v)
        h = lib.mcpm_tokenizer_load(str(tmp).encode(), err, len(err))
        if h:
            text = "Hello wörld 你好 <AI>".encode()
            ids = (ctypes.c_int32 * 256)()
            n = lib.mcpm_tokenizer_encode(h, text, len(text), ids, 256)
            if n > 0:
                lib.mcpm_tokenizer_decode(h, ids, n, None, 0)
            lib.mcpm_tokenizer_free(h)
        else:
            errors += 1
            assert err.value and b"\n" not in err.value, v[:16]
    assert errors >= len(cuts) - 1  # every truncation but (maybe) one inside the trailing specs
    h = lib.mcpm_tokenizer_load(str(Path(tmp_dir) / "missing.model").encode(), err, len(err))
    assert not h and b"cannot open" in err.value


def train_big_model(out_dir: str | Path) -> Path:
    """A MiniCPM-sized (73440 pieces, as MiniCPM-1B/3) identity-normalized BPE with byte fallback and the markers."""
    rnd = random.Random(0)
    lines = HELDOUT.read_text(encoding="utf-8").splitlines()
    letters = "abcdefghijklmnopqrstuvwxyz"
    cjk = [chr(c) for c in range(0x4E00, 0x4E00 + 6000)]
    words = ["".join(rnd.choice(letters) for _ in range(rnd.randint(3, 9))) for _ in range(50000)]
    zh = ["".join(rnd.choice(cjk) for _ in range(rnd.randint(2, 3))) for _ in range(30000)]
    extra = ["éàüñçøß", "ăşğ", "привет", "мир", "γειά", "σου", "こんにちは", "안녕하세요", "😀🎉👍",
             "e\u0301", "你好", "世界"]
    for _ in range(90000):
        k = rnd.random()
        if k < 0.5:
            lines.append(" ".join(rnd.choice(words) for _ in range(12)))
        elif k < 0.85:
            lines.append("".join(rnd.choice(zh) for _ in range(10)))
        else:
            lines.append("  ".join(rnd.choice(extra + words) for _ in range(8)))
    prefix = Path(out_dir) / "big"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), model_type="bpe", vocab_size=73440,
        byte_fallback=True, normalization_rule_name="identity", add_dummy_prefix=True,
        remove_extra_whitespaces=False, character_coverage=0.9995, user_defined_symbols=["<用户>", "<AI>"],
        hard_vocab_limit=True, num_threads=2, minloglevel=2, max_sentence_length=100000)
    return prefix.with_suffix(".model")


def build(out: Path, extra_flags: list[str] | None = None) -> Path:
    cmd = ["gcc", *CFLAGS, *(extra_flags or []), "-o", str(out), str(C_DIR / "mcpm_tokenizer.c")]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return load_lib(build(tmp_path_factory.mktemp("ctok") / "libmcpm_tokenizer.so"))


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    path = train_big_model(tmp_path_factory.mktemp("bigspm"))
    assert spm.SentencePieceProcessor(model_file=str(path)).get_piece_size() == 73440
    return path


def _heldout_lines() -> list[str]:
    text = HELDOUT.read_text(encoding="utf-8").replace(". ", ".\n")  # the file holds a few very long lines
    return [ln for ln in text.splitlines() if ln.strip()]


@needs_gcc
def test_default_model_matches_sentencepiece(lib):
    texts = CORPUS + _corpus_extra(_heldout_lines()) + [HELDOUT.read_text(encoding="utf-8")[:20000]]
    assert check_model(lib, DEFAULT_TOKENIZER, texts) > 1000


@needs_gcc
def test_minicpm_sized_model_matches_sentencepiece(lib, big_model):
    texts = CORPUS + _corpus_extra(_heldout_lines()) + [HELDOUT.read_text(encoding="utf-8")[:20000]]
    assert check_model(lib, big_model, texts) > 1000


@needs_gcc
def test_garbled_model_files(lib, tmp_path):
    check_garbled(lib, DEFAULT_TOKENIZER, tmp_path)


@needs_gcc
def test_refuses_unsupported_models(lib, tmp_path):
    lines = _heldout_lines()[:300]
    err = ctypes.create_string_buffer(256)
    for kw, msg in [({"model_type": "bpe", "normalization_rule_name": "nmt_nfkc"}, b"nmt_nfkc"),
                    ({"model_type": "unigram", "normalization_rule_name": "identity"}, b"UNIGRAM")]:
        prefix = tmp_path / kw["model_type"]
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=300,
                                       minloglevel=2, **kw)
        h = lib.mcpm_tokenizer_load(f"{prefix}.model".encode(), err, len(err))
        assert not h and msg in err.value, err.value


@needs_gcc
def test_no_byte_fallback_and_extra_whitespace_model(lib, tmp_path):
    """unk runs merge into one id, remove_extra_whitespaces collapses spaces."""
    prefix = tmp_path / "plain"
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_heldout_lines()), model_prefix=str(prefix),
                                   model_type="bpe", vocab_size=1000, normalization_rule_name="identity",
                                   remove_extra_whitespaces=True, minloglevel=2)
    assert check_model(lib, f"{prefix}.model", CORPUS + _corpus_extra(_heldout_lines())) > 100


_ASAN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_c_tokenizer as t
lib = t.load_lib({lib!r})
lines = t._heldout_lines()
for model in ({default!r}, {big!r}):
    t.check_model(lib, model, t.CORPUS + t._corpus_extra(lines))
t.check_garbled(lib, {default!r}, {tmp!r})
print("ASAN-OK")
"""


@needs_gcc
def test_under_asan(tmp_path, big_model):
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not asan or not os.path.isabs(asan):
        pytest.skip("gcc has no libasan")
    so = build(tmp_path / "libtok_asan.so", ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                                             "-fno-omit-frame-pointer"])
    script = _ASAN_SCRIPT.format(tests=str(Path(__file__).parent), lib=str(so), default=str(DEFAULT_TOKENIZER),
                                 big=str(big_model), tmp=str(tmp_path))
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "ASAN-OK" in r.stdout, r.stdout[-3000:] + r.stderr[-6000:]
