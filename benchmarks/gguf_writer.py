"""Hugging Face MiniCPM checkpoint -> GGUF for llama.cpp (the peer of `make bench-peer`).

What llama.cpp's own converter (convert_hf_to_gguf.py, MiniCPMModel) writes, with the `gguf` package:

* architecture ``minicpm`` and all three muP scale keys: ``minicpm.embedding_scale`` = scale_emb,
  ``minicpm.residual_scale`` = scale_depth / sqrt(layers), ``minicpm.logit_scale`` = hidden / dim_model_base
  (llama.cpp divides the logits by it; when the key is missing it silently uses 256 / hidden, the inverse);
* q rows permuted per head and k rows per kv head (HF's rotate-half RoPE -> llama.cpp's interleaved pairs);
* the checkpoint's SentencePiece tokenizer as a llama-style vocabulary (tokens, scores, token types), padded with
  ``[PAD<id>]`` entries up to the config's vocab_size as the converter does;
* Q4_0 for every 2-D weight (the embedding too, which is also the tied output head), float32 norms; or float32
  everywhere (``qtype="f32"``) for parity checks.

Q4_0 packing is gguf's ``quants`` module (a NumPy port of ggml's ``quantize_row_q4_0_ref``; the test checks it
bit for bit against a transliteration of the C). Tensors are streamed: one tensor in memory at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

Q4_0_BLOCK = 32
Q4_0_BYTES = 18  # fp16 scale + 16 bytes of nibbles per 32 weights
QTYPES = ("q4_0", "f32")
ROW_CHUNK = 2048  # rows quantized at a time (bounds the temporaries for the 122753-row embedding)


def permute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half q/k rows -> llama.cpp's pair layout: within each head, rows (i, i + d/2) become (2i, 2i+1).

    Same as llama.cpp's ``LlamaModel.permute`` (n_head = heads for q, kv heads for k). w: [n_head*d, in]."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of :func:`permute_rope_rows`."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def quantize_q4_0(w: np.ndarray) -> np.ndarray:
    """Q4_0 blocks of a float32 [rows, cols] matrix as uint8 [rows, cols/32*18] (ggml's layout, row-major)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if w.ndim != 2 or w.shape[1] % Q4_0_BLOCK:
        raise ValueError(f"Q4_0 needs a 2-D matrix with columns a multiple of 32, got {w.shape}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    out = np.empty((w.shape[0], w.shape[1] // Q4_0_BLOCK * Q4_0_BYTES), dtype=np.uint8)
    for r in range(0, w.shape[0], ROW_CHUNK):
        out[r:r + ROW_CHUNK] = quantize(w[r:r + ROW_CHUNK], GGMLQuantizationType.Q4_0)
    return out


def dequantize_q4_0(q: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] of Q4_0 bytes [rows, cols/32*18]."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    return np.asarray(dequantize(q, GGMLQuantizationType.Q4_0), dtype=np.float32)


@dataclass(frozen=True)
class _Tensor:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # numpy order, as in the checkpoint
    quantized: bool
    transform: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass
class GGUFSummary:
    path: Path
    qtype: str
    tensors: int
    weight_bytes: int  # bytes of every tensor in the file
    decode_read_bytes: int  # bytes of weights one decode step reads (all but the embedding rows, + the head)
    decode_read_weights: int  # weights one decode step multiplies (2-D matmul weights, incl. the output head)
    metadata: dict[str, Any]


def _tensor_plan(cfg: Any, qtype: str) -> list[_Tensor]:
    q = qtype == "q4_0"
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_kv_heads
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    plan = [_Tensor("token_embd.weight", "model.embed_tokens.weight", (cfg.vocab_size, hidden), q),
            _Tensor("output_norm.weight", "model.norm.weight", (hidden,), False)]
    if not cfg.tie_word_embeddings:
        plan.append(_Tensor("output.weight", "lm_head.weight", (cfg.vocab_size, hidden), q))
    for i in range(cfg.num_hidden_layers):
        hf = f"model.layers.{i}"
        plan += [
            _Tensor(f"blk.{i}.attn_norm.weight", f"{hf}.input_layernorm.weight", (hidden,), False),
            _Tensor(f"blk.{i}.attn_q.weight", f"{hf}.self_attn.q_proj.weight", (nh * hd, hidden), q,
                    partial(permute_rope_rows, n_head=nh)),
            _Tensor(f"blk.{i}.attn_k.weight", f"{hf}.self_attn.k_proj.weight", (nkv * hd, hidden), q,
                    partial(permute_rope_rows, n_head=nkv)),
            _Tensor(f"blk.{i}.attn_v.weight", f"{hf}.self_attn.v_proj.weight", (nkv * hd, hidden), q),
            _Tensor(f"blk.{i}.attn_output.weight", f"{hf}.self_attn.o_proj.weight", (hidden, nh * hd), q),
            _Tensor(f"blk.{i}.ffn_norm.weight", f"{hf}.post_attention_layernorm.weight", (hidden,), False),
            _Tensor(f"blk.{i}.ffn_gate.weight", f"{hf}.mlp.gate_proj.weight", (inter, hidden), q),
            _Tensor(f"blk.{i}.ffn_up.weight", f"{hf}.mlp.up_proj.weight", (inter, hidden), q),
            _Tensor(f"blk.{i}.ffn_down.weight", f"{hf}.mlp.down_proj.weight", (hidden, inter), q),
        ]
    return plan


def _nbytes(t: _Tensor) -> int:
    n = math.prod(t.shape)
    return n // Q4_0_BLOCK * Q4_0_BYTES if t.quantized else 4 * n


def scale_keys(cfg: Any) -> dict[str, float]:
    """The three MiniCPM muP keys, from the config (as convert_hf_to_gguf.py's MiniCPMModel computes them)."""
    base = cfg.dim_model_base or cfg.hidden_size
    return {
        "minicpm.embedding_scale": float(cfg.scale_emb),
        "minicpm.residual_scale": float(cfg.scale_depth) / math.sqrt(cfg.num_hidden_layers),
        "minicpm.logit_scale": cfg.hidden_size / base,
    }


def sentencepiece_vocab(model_file: Path, vocab_size: int) -> tuple[list[bytes], list[float], list[int]]:
    """Tokens, scores and token types as convert_hf_to_gguf's _create_vocab_sentencepiece (padded to vocab_size)."""
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model_file))
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [int(TokenType.UNUSED)] * vocab_size
    for i in range(min(sp.vocab_size(), vocab_size)):
        kind = TokenType.NORMAL
        if sp.IsUnknown(i):
            kind = TokenType.UNKNOWN
        elif sp.IsControl(i):
            kind = TokenType.CONTROL
        elif sp.IsUnused(i):
            kind = TokenType.UNUSED
        elif sp.IsByte(i):
            kind = TokenType.BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), float(sp.GetScore(i)), int(kind)
    return tokens, scores, types


def _tensors(model_dir: Path, plan: list[_Tensor]) -> Iterator[tuple[_Tensor, np.ndarray]]:
    import torch

    from mcpm.export.checkpoint import TensorReader

    with TensorReader(model_dir) as reader:
        for t in plan:
            w = reader.get(t.hf_name, t.shape).to(torch.float32).numpy()
            if t.transform is not None:
                w = t.transform(w)
            yield t, (quantize_q4_0(w) if t.quantized else np.ascontiguousarray(w, dtype=np.float32))


def write_gguf(model_dir: Path, out: Path, qtype: str = "q4_0", name: str | None = None) -> GGUFSummary:
    """Write ``out`` (a .gguf file) from the MiniCPM checkpoint folder ``model_dir``; returns what it wrote."""
    import gguf

    from mcpm.errors import McpmError
    from mcpm.export.loading import load_config

    if qtype not in QTYPES:
        raise McpmError(f"unknown GGUF weight type {qtype!r}", f"use one of {', '.join(QTYPES)}")
    family, cfg = load_config(Path(model_dir))
    if family.model_type != "minicpm" or cfg.is_moe or cfg.rope_scaling:
        raise McpmError(f"{model_dir}: only dense MiniCPM checkpoints without rope_scaling are written as GGUF",
                        "use minicpm-2b or minicpm-1b shapes")
    plan = _tensor_plan(cfg, qtype)
    tokens, scores, types = sentencepiece_vocab(Path(model_dir) / "tokenizer.model", cfg.vocab_size)
    eos = cfg.eos_token_id[0] if cfg.eos_token_id else 2

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), arch="minicpm")
    w.add_name(name or Path(model_dir).name)
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_0 if qtype == "q4_0" else gguf.LlamaFileType.ALL_F32))
    w.add_vocab_size(cfg.vocab_size)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.head_dim)
    keys = scale_keys(cfg)
    w.add_embedding_scale(keys["minicpm.embedding_scale"])
    w.add_residual_scale(keys["minicpm.residual_scale"])
    w.add_logit_scale(keys["minicpm.logit_scale"])
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(eos)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for t in plan:
        raw = gguf.GGMLQuantizationType.Q4_0 if t.quantized else gguf.GGMLQuantizationType.F32
        shape = t.shape if not t.quantized else (*t.shape[:-1], t.shape[-1] // Q4_0_BLOCK * Q4_0_BYTES)
        w.add_tensor_info(t.gguf_name, shape, np.dtype(np.uint8 if t.quantized else np.float32), _nbytes(t), raw)
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _, data in _tensors(Path(model_dir), plan):
            w.write_tensor_data(data)
        w.close()
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)

    read = [t for t in plan if len(t.shape) == 2 and (t.gguf_name != "token_embd.weight" or cfg.tie_word_embeddings)]
    return GGUFSummary(
        path=out, qtype=qtype, tensors=len(plan), weight_bytes=sum(_nbytes(t) for t in plan),
        decode_read_bytes=sum(_nbytes(t) for t in read) + sum(_nbytes(t) for t in plan if len(t.shape) == 1),
        decode_read_weights=sum(math.prod(t.shape) for t in read),
        metadata={"general.architecture": "minicpm", **keys},
    )


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--qtype", choices=QTYPES, default="q4_0")
    a = p.parse_args(argv)
    s = write_gguf(a.model_dir, a.out, a.qtype)
    print(f"wrote {s.path} ({s.qtype}, {s.tensors} tensors, {s.weight_bytes / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
