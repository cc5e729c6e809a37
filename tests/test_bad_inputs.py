"""The bad-input table: every case is one line `error: ...` on stderr and exit code 2, with nothing deleted that
mcpm did not write (or, where marked, a documented accepted behaviour).

Each case runs the real entry point in-process (`mcpm ...`, `mcpm-export ...`, or a Python API call) over a
fresh copy of a tiny checkpoint and of the default host bundle, damaged as the case says. The message must name
the problem (`want`, a case-insensitive substring) and must not be a traceback.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_minicpm, tiny_minicpm3, write_tiny

from mcpm.errors import McpmError

Prep = Callable[["Ctx"], None]


@dataclass
class Ctx:
    tmp: Path
    ckpt: Path  # a copy of a tiny minicpm checkpoint (fp32, tied, GQA)
    bundle: Path  # a copy of the default host bundle (q4g32, context 128, chunk 16)

    def config(self, edit: Callable[[dict[str, Any]], Any]) -> None:
        path = self.bundle / "mcpm-config.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    def model_config(self, edit: Callable[[dict[str, Any]], Any]) -> None:
        path = self.ckpt / "config.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))

    def plan(self, edit: Callable[[dict[str, Any]], Any]) -> None:
        path = self.bundle / "plan.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the damage is in the plan, not its checksum
        self.config(lambda c: c["files"]["plan.json"].update(bytes=path.stat().st_size, sha256=digest))

    def tensors(self, edit: Callable[[dict[str, Any]], Any]) -> None:
        from safetensors.torch import load_file, save_file

        (path,) = self.ckpt.glob("*.safetensors")
        state = dict(load_file(path))
        edit(state)
        save_file(state, path, metadata={"format": "pt"})


@dataclass
class Case:
    id: str
    argv: list[str]  # first word: mcpm | mcpm-export | py (then argv[1] names a Python API call below)
    want: str  # a case-insensitive substring of the one-line message
    prep: Prep | None = None
    code: int = 2
    keep: tuple[str, ...] = ()  # files (relative to tmp) that must still exist afterwards
    stdin: str | bytes | None = None
    marks: tuple[Any, ...] = field(default_factory=tuple)


def _write(rel: str, data: bytes | str = b"x") -> Prep:
    def prep(ctx: Ctx) -> None:
        path = ctx.tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return prep


def _rm(rel: str) -> Prep:
    def prep(ctx: Ctx) -> None:
        target = ctx.tmp / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return prep


def _truncate(rel: str, keep: int) -> Prep:
    def prep(ctx: Ctx) -> None:
        path = ctx.tmp / rel
        path.write_bytes(path.read_bytes()[:keep])
    return prep


def _flip(rel: str, offset: int) -> Prep:
    def prep(ctx: Ctx) -> None:
        path = ctx.tmp / rel
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x40
        path.write_bytes(bytes(data))
    return prep


def _cfg(**items: Any) -> Prep:
    return lambda ctx: ctx.config(lambda c: c.update(items))


def _mcfg(**items: Any) -> Prep:
    return lambda ctx: ctx.model_config(lambda c: c.update(items))


def _mcfg_del(key: str) -> Prep:
    return lambda ctx: ctx.model_config(lambda c: c.pop(key))


def _replace_recorded(ctx: Ctx, name: str, data: bytes) -> None:
    """Replace a bundle file and record its new size and SHA-256, as a bad export would."""
    (ctx.bundle / name).write_bytes(data)
    ctx.config(lambda c: c["files"][name].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


def _nested_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def _png(width: int, height: int, rows: bytes | None = None) -> bytes:
    """A PNG of width x height gray pixels, written by hand (IDAT: all-zero rows deflated, or ``rows``)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if rows is None:
        rows = zlib.compress(b"\0" * ((width + 1) * height), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


B, C = "{bundle}", "{ckpt}"
GEN = ["mcpm", "generate", B, "-p", "Hello", "-n", "4"]
EXPORT = ["mcpm-export", C, "-o", "{tmp}/out", "--context-length", "64", "--prefill-chunk", "16"]

CASES: list[Case] = [
    # ---------------------------------------------------------------- mcpm-export: options
    Case("export-unknown-target", [*EXPORT, "--target", "nope"], "unknown target"),
    Case("export-unknown-quant", [*EXPORT, "--quant", "q3"], "q3"),
    Case("export-rule-no-equals", [*EXPORT, "--quant-rule", "lm_head"], "PATTERN=SCHEME"),
    Case("export-rule-unknown-scheme", [*EXPORT, "--quant-rule", "lm_head=q9"], "q9"),
    Case("export-rule-matches-nothing", [*EXPORT, "--quant-rule", "nothing.*=q8"], "matches no weight"),
    Case("export-context-0", [*EXPORT, "--context-length", "0"], "--context-length"),
    Case("export-context-negative", [*EXPORT, "--context-length", "-5"], "--context-length"),
    Case("export-chunk-0", [*EXPORT, "--prefill-chunk", "0"], "--prefill-chunk"),
    Case("export-chunk-over-context", [*EXPORT, "--context-length", "32", "--prefill-chunk", "64"],
         "--prefill-chunk"),
    Case("export-context-over-model", [*EXPORT, "--context-length", "4096"], "max_position_embeddings"),
    Case("export-context-huge", [*EXPORT, "--context-length", str(2**28)], "memory",
         prep=_mcfg(max_position_embeddings=2**30)),
    Case("export-out-is-file", ["mcpm-export", C, "-o", "{tmp}/file.txt"], "file", prep=_write("file.txt"),
         keep=("file.txt",)),
    Case("export-debug-dump-is-file", [*EXPORT, "--debug-dump", "{tmp}/d.txt"], "--debug-dump",
         prep=_write("d.txt"), keep=("d.txt",)),
    Case("export-out-user-folder", EXPORT, "not written by mcpm", prep=_write("out/photos/cat.jpg"),
         keep=("out/photos/cat.jpg",)),
    Case("export-out-fake-config", EXPORT, "not written by mcpm",
         prep=lambda ctx: (_write("out/mcpm-config.json", "{}")(ctx), _write("out/photos/a.jpg")(ctx)),
         keep=("out/mcpm-config.json", "out/photos/a.jpg")),
    Case("export-gpu-f16-kv", [*EXPORT, "--device", "gpu", "--kv-dtype", "f16"], "kv"),
    Case("export-bad-choice", [*EXPORT, "--device", "npu"], "--device"),
    Case("export-keystore-missing", [*EXPORT, "--target", "android", "--keystore", "{tmp}/nope.jks"], "nope.jks"),
    Case("export-unknown-option", [*EXPORT, "--frobnicate"], "--frobnicate"),
    Case("export-max-patches-0", [*EXPORT, "--max-patches", "0"], "--max-patches"),
    # ---------------------------------------------------------------- mcpm-export: the checkpoint
    Case("ckpt-missing", ["mcpm-export", "{tmp}/nothing", "-o", "{tmp}/out"], "nothing"),
    Case("ckpt-is-file", ["mcpm-export", "{tmp}/f.bin", "-o", "{tmp}/out"], "f.bin", prep=_write("f.bin")),
    Case("ckpt-empty-folder", ["mcpm-export", "{tmp}/empty", "-o", "{tmp}/out"], "config.json",
         prep=lambda ctx: (ctx.tmp / "empty").mkdir()),
    Case("ckpt-config-garbled", EXPORT, "config.json", prep=_write("ckpt/config.json", "{not json")),
    Case("ckpt-config-list", EXPORT, "config.json", prep=_write("ckpt/config.json", "[1, 2]")),
    Case("ckpt-config-binary", EXPORT, "config.json", prep=_write("ckpt/config.json", b"\xff\xfe\x00garbage")),
    Case("ckpt-no-model-type", EXPORT, "model_type", prep=_mcfg_del("model_type")),
    Case("ckpt-unsupported-type", EXPORT, "gpt2", prep=_mcfg(model_type="gpt2")),
    Case("ckpt-heads-not-dividing", EXPORT, "num_attention_heads", prep=_mcfg(num_attention_heads=5)),
    Case("ckpt-gqa-not-dividing", EXPORT, "num_key_value_heads", prep=_mcfg(num_key_value_heads=3)),
    Case("ckpt-vocab-negative", EXPORT, "vocab_size", prep=_mcfg(vocab_size=-4)),
    Case("ckpt-vocab-string", EXPORT, "vocab_size", prep=_mcfg(vocab_size="many")),
    Case("ckpt-vocab-float", EXPORT, "vocab_size", prep=_mcfg(vocab_size=4096.5)),
    Case("ckpt-layers-zero", EXPORT, "num_hidden_layers", prep=_mcfg(num_hidden_layers=0)),
    Case("ckpt-hidden-missing", EXPORT, "hidden_size", prep=_mcfg_del("hidden_size")),
    Case("ckpt-eps-negative", EXPORT, "rms_norm_eps", prep=_mcfg(rms_norm_eps=-1.0)),
    Case("ckpt-rope-theta-nan", EXPORT, "rope_theta", prep=_mcfg(rope_theta=float("nan"))),
    Case("ckpt-vocab-below-tokenizer", EXPORT, "config.json implies (100, 64)", prep=_mcfg(vocab_size=100)),
    Case("ckpt-no-weights", EXPORT, "safetensors",
         prep=lambda ctx: [p.unlink() for p in ctx.ckpt.glob("*.safetensors")]),
    Case("ckpt-truncated-weights", EXPORT, "safetensors",
         prep=lambda ctx: [_truncate(str(p.relative_to(ctx.tmp)), 3000)(ctx) for p in ctx.ckpt.glob("*.safetensors")]),
    Case("ckpt-weights-garbage", EXPORT, "safetensors",
         prep=lambda ctx: [p.write_bytes(b"\x00" * 64) for p in ctx.ckpt.glob("*.safetensors")]),
    Case("ckpt-tensor-missing", EXPORT, "model.norm.weight",
         prep=lambda ctx: ctx.tensors(lambda s: s.pop("model.norm.weight"))),
    Case("ckpt-tensor-wrong-shape", EXPORT, "model.norm.weight",
         prep=lambda ctx: ctx.tensors(lambda s: s.update({"model.norm.weight": s["model.norm.weight"][:10]}))),
    Case("ckpt-tensor-unmapped", EXPORT, "q_proj.bias",
         prep=lambda ctx: ctx.tensors(lambda s: s.update({"model.layers.0.self_attn.q_proj.bias":
                                                           s["model.norm.weight"].clone()}))),
    Case("ckpt-tensor-nan", EXPORT, "not finite",
         prep=lambda ctx: ctx.tensors(lambda s: s["model.layers.1.mlp.up_proj.weight"].fill_(math.nan))),
    Case("ckpt-tensor-inf", EXPORT, "not finite",
         prep=lambda ctx: ctx.tensors(lambda s: s["model.embed_tokens.weight"][3].fill_(math.inf))),
    Case("ckpt-pickle-only", EXPORT, "pytorch_model.bin",
         prep=lambda ctx: ([p.unlink() for p in ctx.ckpt.glob("*.safetensors")],
                           _write("ckpt/pytorch_model.bin", b"\x80\x02}q\x00.")(ctx))),
    Case("ckpt-no-tokenizer", EXPORT, "tokenizer",
         prep=lambda ctx: [p.unlink() for p in ctx.ckpt.glob("tokenizer*")]),
    Case("ckpt-tokenizer-garbled", EXPORT, "tokenizer",
         prep=lambda ctx: [p.write_bytes(b"\x01garbage") for p in ctx.ckpt.glob("tokenizer.model")]),
    Case("ckpt-minicpm3-not-exportable", ["mcpm-export", "{tmp}/m3", "-o", "{tmp}/out", "--context-length", "64"],
         "minicpm3", prep=lambda ctx: (ctx.tmp / "m3").mkdir() or (ctx.tmp / "m3/config.json").write_text(
             json.dumps(tiny_minicpm3()))),
    # ---------------------------------------------------------------- mcpm generate: options
    Case("gen-temperature-nan", [*GEN, "--temperature", "nan"], "--temperature"),
    Case("gen-temperature-negative", [*GEN, "--temperature", "-1"], "--temperature"),
    Case("gen-top-p-negative", [*GEN, "--top-p", "-1"], "--top-p"),
    Case("gen-top-p-two", [*GEN, "--top-p", "2"], "--top-p"),
    Case("gen-top-k-negative", [*GEN, "--top-k", "-3"], "--top-k"),
    Case("gen-n-negative", [*GEN[:-1], "-5"], "--max-new-tokens"),
    Case("gen-threads-negative", [*GEN, "-t", "-1"], "threads"),
    Case("gen-threads-absurd", [*GEN, "-t", "10000"], "threads"),
    Case("gen-threads-not-int", [*GEN, "-t", "two"], "--threads"),
    Case("gen-prompt-missing", ["mcpm", "generate", B], "--prompt"),
    Case("gen-prompt-over-context", ["mcpm", "generate", B, "-p", "word " * 400, "-n", "4"], "context"),
    Case("gen-prompt-not-utf8", ["mcpm", "generate", B, "-p", "caf\udce9", "-n", "4"], "UTF-8"),
    Case("gen-device-gpu-cpu-bundle", [*GEN, "--device", "gpu"], "gpu"),
    Case("gen-unknown-command", ["mcpm", "frobnicate"], "frobnicate"),
    Case("gen-reference-missing-ckpt", ["mcpm", "generate", "{tmp}/nothing", "--reference", "-p", "x"], "nothing"),
    Case("gen-reference-on-bundle", ["mcpm", "generate", B, "--reference", "-p", "x"], "bundle"),
    # ---------------------------------------------------------------- the bundle: files
    Case("bundle-missing-folder", ["mcpm", "generate", "{tmp}/nothing", "-p", "x"], "does not exist"),
    Case("bundle-is-file", ["mcpm", "generate", "{tmp}/f", "-p", "x"], "not a folder", prep=_write("f")),
    Case("bundle-empty-folder", ["mcpm", "generate", "{tmp}/e", "-p", "x"], "mcpm-config.json",
         prep=lambda ctx: (ctx.tmp / "e").mkdir()),
    Case("bundle-no-config", GEN, "mcpm-config.json", prep=_rm("bundle/mcpm-config.json")),
    Case("bundle-config-garbled", GEN, "mcpm-config.json", prep=_write("bundle/mcpm-config.json", "{oops")),
    Case("bundle-config-binary", GEN, "mcpm-config.json", prep=_write("bundle/mcpm-config.json", b"\xff\x00\x81")),
    Case("bundle-config-list", GEN, "mcpm-config.json", prep=_write("bundle/mcpm-config.json", "[]")),
    Case("bundle-config-deep", GEN, "mcpm-config.json", prep=_write("bundle/mcpm-config.json", _nested_json(200000))),
    Case("bundle-no-plan", GEN, "plan.json", prep=_rm("bundle/plan.json")),
    Case("bundle-plan-garbled", GEN, "plan.json", prep=_write("bundle/plan.json", "{]")),
    Case("bundle-plan-deep", GEN, "plan.json",
         prep=lambda ctx: (_write("bundle/plan.json", _nested_json(200000))(ctx),
                           ctx.config(lambda c: c["files"]["plan.json"].update(bytes=400000)))),
    Case("bundle-plan-truncated", GEN, "plan.json", prep=_truncate("bundle/plan.json", 1000)),
    Case("bundle-plan-wrong-magic", GEN, "plan.json", prep=lambda ctx: ctx.plan(lambda p: p.update(magic="NOTAPLAN"))),
    Case("bundle-plan-version", GEN, "version", prep=lambda ctx: ctx.plan(lambda p: p.update(version=99))),
    Case("bundle-plan-huge-dims", GEN, "plan.json",
         prep=lambda ctx: ctx.plan(lambda p: p["cache"].update(shape=[2**32, 2**32]))),
    Case("bundle-no-weights", GEN, "weights.bin", prep=_rm("bundle/weights.bin")),
    Case("bundle-weights-truncated", GEN, "weights.bin", prep=_truncate("bundle/weights.bin", 100000)),
    Case("bundle-weights-empty", GEN, "weights.bin", prep=_truncate("bundle/weights.bin", 0)),
    Case("bundle-weights-header", GEN, "weights.bin", prep=_flip("bundle/weights.bin", 2)),
    Case("bundle-no-kernels", GEN, "kernels.o", prep=_rm("bundle/kernels.o")),
    Case("bundle-kernels-garbage", GEN, "kernels.o",
         prep=lambda ctx: (_write("bundle/kernels.o", b"\x7fELF" + b"\x00" * 390396)(ctx))),
    Case("bundle-kernels-not-an-object", GEN, "not a valid object file", prep=lambda ctx: _replace_recorded(
        ctx, "kernels.o", b"\x7fELF" + b"\x00" * 4000)),  # its checksum recorded too: found at the link step
    Case("bundle-no-tokenizer", GEN, "tokenizer.model", prep=_rm("bundle/tokenizer.model")),
    Case("bundle-tokenizer-garbled", GEN, "tokenizer",
         prep=lambda ctx: (ctx.bundle / "tokenizer.model").write_bytes(b"\x00" * 66716)),
    Case("bundle-weights-flipped-verify", ["mcpm", "generate", B, "-p", "x", "-n", "2", "--verify"], "sha-256",
         prep=_flip("bundle/weights.bin", 2000000)),
    # ---------------------------------------------------------------- the bundle: mcpm-config.json fields
    Case("cfg-format-version", GEN, "format version 99", prep=_cfg(format_version=99)),
    Case("cfg-tokenizer-escape", GEN, "tokenizer file",
         prep=lambda ctx: ctx.config(lambda c: c["tokenizer"].update(file="../../../../etc/passwd"))),
    Case("cfg-tokenizer-absolute", GEN, "tokenizer file",
         prep=lambda ctx: ctx.config(lambda c: c["tokenizer"].update(file="/etc/passwd"))),
    Case("cfg-tokenizer-kind", GEN, "tokenizer.kind",
         prep=lambda ctx: ctx.config(lambda c: c["tokenizer"].update(kind="wordpiece"))),
    Case("cfg-tokenizer-not-object", GEN, "tokenizer", prep=_cfg(tokenizer="tokenizer.model")),
    Case("cfg-stop-ids-types", GEN, "stop_token_ids", prep=_cfg(stop_token_ids=["a", None])),
    Case("cfg-stop-ids-range", GEN, "stop_token_ids", prep=_cfg(stop_token_ids=[4096])),
    Case("cfg-stop-ids-not-list", GEN, "stop_token_ids", prep=_cfg(stop_token_ids=2)),
    Case("cfg-bos-range", GEN, "bos_token_id", prep=_cfg(bos_token_id=99999)),
    Case("cfg-bos-type", GEN, "bos_token_id", prep=_cfg(bos_token_id="1")),
    Case("cfg-context-mismatch", GEN, "context_length", prep=_cfg(context_length=4096)),
    Case("cfg-chunk-mismatch", GEN, "prefill_chunk", prep=_cfg(prefill_chunk=3)),
    Case("cfg-features-type", GEN, "features",
         prep=lambda ctx: ctx.config(lambda c: c["target"].update(features="avx2"))),
    Case("cfg-features-missing-cpu", GEN, "avx9_fake",
         prep=lambda ctx: ctx.config(lambda c: c["target"]["features"].append("avx9_fake"))),
    Case("cfg-other-target", GEN, "linux-arm64",
         prep=lambda ctx: ctx.config(lambda c: c["target"].update(name="linux-arm64", triple="aarch64-linux-gnu"))),
    Case("cfg-files-entry-type", GEN, "files", prep=lambda ctx: ctx.config(lambda c: c["files"].update(
        {"weights.bin": "big"}))),
    Case("cfg-files-escape", GEN, "leaves the bundle folder", prep=lambda ctx: ctx.config(lambda c: c["files"].update(
        {"../../x.bin": {"bytes": 1, "sha256": "0" * 64}}))),
    Case("cfg-files-size", GEN, "weights.bin",
         prep=lambda ctx: ctx.config(lambda c: c["files"]["weights.bin"].update(bytes=12))),
    Case("cfg-chat-template-type", ["mcpm", "generate", B, "-p", "x", "-n", "2", "--chat"], "chat_template",
         prep=_cfg(chat_template=[1, 2])),
    Case("cfg-family-unknown", GEN, "family", prep=_cfg(family="gpt2")),
    # ---------------------------------------------------------------- mcpm chat / bench
    Case("chat-image-plain-bundle", ["mcpm", "chat", B, "--image", "{tmp}/a.png"], "image",
         prep=_write("a.png", _png(8, 8)), stdin="hi\n"),
    Case("chat-image-missing", ["mcpm", "chat", B, "--image", "{tmp}/none.png"], "none.png", stdin="hi\n"),
    Case("chat-threads-absurd", ["mcpm", "chat", B, "-t", "100000"], "threads", stdin="hi\n"),
    Case("chat-top-p-zero", ["mcpm", "chat", B, "--top-p", "0"], "--top-p", stdin="hi\n"),
    Case("bench-n-prompt-zero", ["mcpm", "bench", B, "-p", "0", "-n", "2", "-r", "1"], "--n-prompt"),
    Case("bench-n-gen-negative", ["mcpm", "bench", B, "-p", "4", "-n", "-2", "-r", "1"], "--n-gen"),
    Case("bench-repetitions-zero", ["mcpm", "bench", B, "-p", "4", "-n", "2", "-r", "0"], "--repetitions"),
    Case("bench-over-context", ["mcpm", "bench", B, "-p", "100", "-n", "100", "-r", "1"], "context"),
    Case("bench-image-plain", ["mcpm", "bench", B, "-p", "4", "-n", "2", "-r", "1", "--image", "{tmp}/a.png"],
         "image", prep=_write("a.png", _png(8, 8))),
    Case("bench-missing-bundle", ["mcpm", "bench", "{tmp}/none"], "does not exist"),
    # ---------------------------------------------------------------- mcpm eval / info / quant-size / make-checkpoint
    Case("eval-seq-len-zero", ["mcpm", "eval", C, "--seq-len", "0"], "--seq-len"),
    Case("eval-max-tokens-zero", ["mcpm", "eval", C, "--max-tokens", "0"], "--max-tokens"),
    Case("eval-text-binary", ["mcpm", "eval", C, "--text", "{tmp}/bin.txt"], "bin.txt",
         prep=_write("bin.txt", bytes(range(256)) * 4)),
    Case("eval-text-missing", ["mcpm", "eval", C, "--text", "{tmp}/none.txt"], "none.txt"),
    Case("eval-text-empty", ["mcpm", "eval", C, "--text", "{tmp}/e.txt"], "e.txt", prep=_write("e.txt", "")),
    Case("eval-unknown-scheme", ["mcpm", "eval", C, "--quant", "q3"], "q3"),
    Case("eval-missing-model", ["mcpm", "eval", "{tmp}/none"], "none"),
    Case("info-missing", ["mcpm", "info", "{tmp}/none"], "none"),
    Case("info-garbled", ["mcpm", "info", C], "config.json", prep=_write("ckpt/config.json", "nope")),
    Case("quant-size-bad-rule", ["mcpm", "quant-size", C, "--quant-rule", "=q8"], "PATTERN"),
    Case("make-ckpt-unknown-preset", ["mcpm", "make-checkpoint", "--preset", "x", "--random", "--out", "{tmp}/m"],
         "preset"),
    Case("make-ckpt-out-file", ["mcpm", "make-checkpoint", "--preset", "minicpm-1b", "--random", "--out", "{tmp}/f"],
         "f", prep=_write("f"), keep=("f",)),
    Case("make-ckpt-out-nonempty", ["mcpm", "make-checkpoint", "--preset", "minicpm-1b", "--random", "--out",
                                    "{tmp}/m"], "empty", prep=_write("m/mine.txt"), keep=("m/mine.txt",)),
    Case("make-ckpt-bad-dtype", ["mcpm", "make-checkpoint", "--preset", "minicpm-1b", "--random", "--dtype", "int3",
                                 "--out", "{tmp}/m"], "--dtype"),
    Case("make-ckpt-no-random", ["mcpm", "make-checkpoint", "--preset", "minicpm-1b", "--out", "{tmp}/m"],
         "--random"),
    # ---------------------------------------------------------------- mcpm android (no phone needed to refuse these)
    Case("android-push-missing-bundle", ["mcpm", "android", "push-model", "{tmp}/none"], "none"),
    Case("android-install-missing-apk", ["mcpm", "android", "install", "{tmp}/none.apk"], "none.apk"),
    Case("android-bench-threads", ["mcpm", "android", "bench", "--model", "m", "-t", "-4"], "threads"),
    # ---------------------------------------------------------------- Python API
    Case("py-load-missing", ["py", "load", "{tmp}/none"], "does not exist"),
    Case("py-prefill-empty", ["py", "prefill", B, "[]"], "at least one token"),
    Case("py-prefill-float-ids", ["py", "prefill", B, "[1.5, 2]"], "integer"),
    Case("py-prefill-out-of-vocab", ["py", "prefill", B, "[1, 4096]"], "4096"),
    Case("py-prefill-negative", ["py", "prefill", B, "[1, -3]"], "-3"),
    Case("py-prefill-over-context", ["py", "prefill", B, "[5]*200"], "context"),
    Case("py-decode-out-of-vocab", ["py", "decode", B, "99999"], "99999"),
    Case("py-chat-nul", ["py", "chat", B, "'hello\\x00world'"], "NUL"),
    Case("py-chat-surrogate", ["py", "chat", B, "'caf\\udce9'"], "lone surrogate"),
    Case("py-chat-too-long", ["py", "chat", B, "'word ' * 400"], "longer than the context"),
    Case("py-image-huge-is-downscaled", ["py", "image", "{tmp}/big.png"], "", code=0,
         prep=_write("big.png", _png(20000, 20000))),  # 400 MP: decoded reduced (Pillow refused it as a bomb)
    Case("py-image-gigapixel", ["py", "image", "{tmp}/g.png"], "million pixels",
         prep=_write("g.png", _png(40000, 40000, rows=b"x"))),  # refused from its header
    Case("py-image-truncated", ["py", "image", "{tmp}/t.png"], "t.png", prep=_write("t.png", _png(64, 64)[:60])),
    Case("py-image-text", ["py", "image", "{tmp}/t.jpg"], "t.jpg", prep=_write("t.jpg", "not a picture")),
    Case("py-image-empty", ["py", "image", "{tmp}/e.png"], "e.png", prep=_write("e.png", b"")),
]


def _py_call(argv: list[str]) -> None:
    from mcpm.export.models.minicpmv.preprocess import load_image
    from mcpm.runtime.binding import Model, Session

    what, where = argv[0], argv[1]
    if what == "image":
        load_image(where)
        return
    if what == "load":
        Model.load(where, threads=1).close()
        return
    if what == "chat":
        with Model.load(where, threads=1) as model:
            Session(model).chat(eval(argv[2]), 4)  # noqa: S307 - the table's own literals
        return
    with Model.load(where, threads=1) as model:
        arg = eval(argv[2])  # noqa: S307 - the table's own literals
        model.prefill(arg) if what == "prefill" else model.decode(arg)


def _run(case: Case, ctx: Ctx, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    argv = [a.format(tmp=ctx.tmp, ckpt=ctx.ckpt, bundle=ctx.bundle) for a in case.argv]
    if case.stdin is not None:
        import io

        raw = case.stdin.encode() if isinstance(case.stdin, str) else case.stdin
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", errors="surrogateescape"))
    code = 0
    try:
        if argv[0] == "py":
            try:
                _py_call(argv[1:])
            except McpmError as exc:
                print(f"error: {exc}", file=__import__("sys").stderr)
                code = 2
        else:
            from mcpm.cli import main as mcpm_main
            from mcpm.export_cli import main as export_main

            (mcpm_main if argv[0] == "mcpm" else export_main)(argv[1:])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("bad") / "ckpt", tiny_minicpm(), dtype="fp32")


def _message_lines(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm writes \\r-separated updates) and blank lines."""
    lines = []
    for line in stderr.splitlines():
        last = line.split("\r")[-1].strip()
        if last and "|" not in last:
            lines.append(last)
    return lines


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_is_one_line(case: Case, tiny_ckpt: Path, default_q4_bundle: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = Ctx(tmp_path, tmp_path / "ckpt", tmp_path / "bundle")
    shutil.copytree(tiny_ckpt, ctx.ckpt)
    shutil.copytree(default_q4_bundle, ctx.bundle)
    if case.prep is not None:
        case.prep(ctx)
    monkeypatch.setenv("ADB", str(tmp_path / "no-adb"))
    code, stderr = _run(case, ctx, capsys, monkeypatch)
    lines = _message_lines(stderr)
    assert "Traceback" not in stderr, stderr
    assert code == case.code, (code, stderr)
    if case.code == 0:  # a documented accepted behaviour: nothing on stderr
        assert not lines, stderr
        return
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, stderr
    assert case.want.lower() in errors[0].lower(), errors[0]
    for rel in case.keep:
        assert (tmp_path / rel).exists(), f"{rel} was deleted"


def test_the_table_is_big_enough() -> None:
    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)




# ---------------------------------------------------------------- the same damaged bundles through the C loader
# What the C runtime alone (the apps, mcpm_run) does with each bundle case: "refuse" = mcpm_model_load or
# mcpm_session_new fails with a message; "not read" = the damage is in something the C runtime does not read (the
# kernels are linked into its library; target, files, family and prefill_chunk are checked by the Python front ends
# and by mcpm-export); "verify" = refused when loaded with verify = 1.
C_LOADER: dict[str, str] = {
    **{c.id: "refuse" for c in CASES if c.id.startswith(("bundle-", "cfg-"))},
    "bundle-no-kernels": "not read", "bundle-kernels-garbage": "not read", "bundle-kernels-not-an-object": "not read",
    "bundle-weights-flipped-verify": "verify",
    "cfg-chunk-mismatch": "not read", "cfg-features-type": "not read",
    "cfg-features-missing-cpu": "not read", "cfg-other-target": "not read", "cfg-files-entry-type": "not read",
    "cfg-files-escape": "not read", "cfg-files-size": "not read", "cfg-family-unknown": "not read",
}

C_DRIVER = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[3])
from tests.test_c_runtime import bind
lib = bind(sys.argv[1])
verdicts = {}
for case_id, folder, verify in json.loads(open(sys.argv[2]).read()):
    p = lib.mcpm_default_params()
    p.threads, p.verify = 1, verify
    m = lib.mcpm_model_load(folder.encode(), ctypes.byref(p))
    if not m:
        verdicts[case_id] = ["refused", lib.mcpm_last_error(None).decode(errors="replace")]
        continue
    s = lib.mcpm_session_new(m)
    if s:
        verdicts[case_id] = ["loaded", ""]
        lib.mcpm_session_free(s)
    else:
        verdicts[case_id] = ["refused", lib.mcpm_last_error(m).decode(errors="replace")]
    lib.mcpm_model_free(m)
print("C-VERDICTS " + json.dumps(verdicts))
"""


def test_c_loader_on_the_same_bundle_cases(tiny_ckpt: Path, default_q4_bundle: Path, tmp_path: Path) -> None:
    """Every bundle/config case of the table, loaded by the C runtime alone under ASan/UBSan: refused with a
    message where the C runtime reads the damaged part, loaded where it does not (C_LOADER says which)."""
    import os
    import subprocess
    import sys

    from tests.test_c_runtime import ROOT, build

    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(libasan), "gcc has no libasan.so"
    bundle_cases = [c for c in CASES if c.id.startswith(("bundle-", "cfg-"))]
    assert sorted(C_LOADER) == sorted(c.id for c in bundle_cases)
    jobs = []
    for case in bundle_cases:
        ctx = Ctx(tmp_path / case.id, tmp_path / case.id / "ckpt", tmp_path / case.id / "bundle")
        ctx.tmp.mkdir()
        shutil.copytree(default_q4_bundle, ctx.bundle)
        if case.prep is not None:
            case.prep(ctx)
        folder = next((a for a in case.argv[2:3] if a.startswith("{")), B).format(tmp=ctx.tmp, bundle=ctx.bundle)
        jobs.append([case.id, folder, int(C_LOADER[case.id] == "verify")])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    (tmp_path / "driver.py").write_text(C_DRIVER)
    lib = build(default_q4_bundle, tmp_path / "libmcpm_asan.so", sanitize=True)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(lib), str(tmp_path / "jobs.json"), ROOT],
                         capture_output=True, text=True, env=env, timeout=300)
    report = res.stdout[-2000:] + res.stderr[-6000:]
    assert res.returncode == 0 and "ERROR: AddressSanitizer" not in res.stderr, report
    assert "runtime error:" not in res.stderr, report
    verdicts = json.loads(next(x for x in res.stdout.splitlines() if x.startswith("C-VERDICTS "))[11:])
    wrong = {cid: verdicts[cid] for cid, want in C_LOADER.items()
             if (verdicts[cid][0] == "refused") != (want in ("refuse", "verify")) or
             (verdicts[cid][0] == "refused" and not verdicts[cid][1].strip())}
    assert not wrong, wrong
