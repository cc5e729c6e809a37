"""``mcpm``: run and inspect models. Commands only parse options and call interface functions."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mcpm import __version__
from mcpm.android_cli import android
from mcpm.cli_util import model_dir_argument, run_main
from mcpm.errors import McpmError

if TYPE_CHECKING:
    import numpy as np

    from mcpm.export.bundle.reader import Bundle
    from mcpm.export.tokenizer import Tokenizer
    from mcpm.runtime.binding import Model


THREADS = click.IntRange(0, 256)  # the C runtime's limit; 0 = its default (the cores actually available)


def resolve_model_dir(model_dir: str) -> Path:
    from mcpm.export.loading import DEFAULT_MODEL_DIR

    return DEFAULT_MODEL_DIR if model_dir == "default" else Path(model_dir)


def device_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--device cpu|gpu|auto of the commands that run a bundle in the C runtime."""
    return click.option(
        "--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True,
        help="Where the C runtime runs the bundle: cpu, gpu (its OpenCL kernels, from mcpm-export --device gpu) or "
             "auto (the GPU when OpenCL works, else the CPU with a notice).")(func)


def verify_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--verify of the commands that load a bundle."""
    return click.option(
        "--verify", is_flag=True, default=None,
        help="Check every bundle file's SHA-256 and every tensor's CRC-32 before running (done anyway on a "
             "bundle's first load, remembered in ~/.cache/mcpm/verified).")(func)


def load_bundle_on(bundle_dir: Path, threads: int, device: str,
                   verify: bool | None = None) -> tuple[Bundle, Model, Tokenizer]:
    """load_host_bundle on DEVICE: (bundle, model, tokenizer); a notice on stderr when auto runs on the CPU."""
    from mcpm.runtime.host import load_host_bundle

    if device == "cpu":
        return load_host_bundle(bundle_dir, threads=threads, verify=verify)
    from mcpm.export.bundle.reader import open_bundle
    from mcpm.export.bundle.target import check_runs_here
    from mcpm.export.tokenizer import Tokenizer
    from mcpm.runtime.bench import check_device
    from mcpm.runtime.binding import Model
    from mcpm.runtime.build import build_library, default_cache_dir

    check_device(Path(bundle_dir), device)
    bundle = open_bundle(Path(bundle_dir), verify=verify)
    check_runs_here(bundle.config["target"])
    model = Model.load(bundle.path, threads=threads, library=build_library(bundle.path, bundle.plan.object_file),
                       device=device, cache_dir=default_cache_dir() / "opencl")
    cfg = bundle.config
    tok = Tokenizer.from_bundle(bundle.path, cfg["tokenizer"], cfg["chat_template"], cfg["bos_token_id"])
    model.set_sampleable(tok.decodable_mask(model.vocab_size))  # padded vocabularies: ids with no text
    show_notice(model.notice)
    return bundle, model, tok


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    """--temperature / --top-k / --top-p as one-line errors (a NaN temperature or top-p <= 0 broke the samplers)."""
    import math

    if not math.isfinite(temperature) or temperature < 0:
        raise McpmError(f"--temperature {temperature} must be a finite number >= 0", "pass 0 (greedy) or e.g. 0.8")
    if top_k < 0:
        raise McpmError(f"--top-k {top_k} must be >= 0", "pass 0 (off) or e.g. 40")
    if not (0 < top_p <= 1):
        raise McpmError(f"--top-p {top_p} must be in (0, 1]", "pass 1 (off) or e.g. 0.9")


def show_notice(notice: str) -> None:
    """The runtime's notice (device auto fell back to the CPU) as one line on stderr."""
    if notice:
        click.echo(f"notice: {notice}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm")
def cli() -> None:
    """Run MiniCPM models and make checkpoints to work with.

    MODEL_DIR is a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.model);
    the word `default` names the tiny model shipped with mcpm.
    """


@cli.command()
@click.argument("path", metavar="BUNDLE|MODEL_DIR", default="default")
@click.option("-p", "--prompt", required=True, help="Text to continue (or the user's message with --chat).")
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=0), default=64, show_default=True,
              help="Tokens to generate at most.")
@click.option("--reference", is_flag=True, help="Run a checkpoint folder with the PyTorch reference model.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the model's chat template.")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, help="Keep the k most likely tokens (0 = off).")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling threshold.")
@click.option("--seed", default=0, show_default=True, help="Random seed for sampling.")
@click.option("--threads", "-t", type=THREADS, default=0,
              help="CPU threads of the C runtime (0 = one per CPU); with --reference, of PyTorch (0 = its default).")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON on the last line.")
@device_option
@verify_option
def generate(
    path: str, prompt: str, max_new_tokens: int, reference: bool, chat: bool, temperature: float,
    top_k: int, top_p: float, seed: int, threads: int, as_json: bool, device: str = "cpu", verify: bool | None = None,
) -> None:
    """Generate text, streaming tokens, then print tokens/s.

    BUNDLE is a folder written by mcpm-export, run by the C runtime on this host: its session tokenizes,
    applies the template (--chat) and samples, as `mcpm chat`, `mcpm bench` and the apps do (one --seed, one
    text). With --reference, MODEL_DIR is a checkpoint folder run by the PyTorch reference (`default` = the
    shipped model) with the Python sampler.
    """
    from mcpm.export.bundle.reader import CONFIG_NAME

    if not _is_utf8(prompt):
        raise McpmError("the prompt is not valid UTF-8 text", "pass -p in UTF-8")
    check_sampling(temperature, top_k, top_p)
    folder = resolve_model_dir(path)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise McpmError(f"{folder} {what}", "pass a bundle written by mcpm-export (or a checkpoint folder "
                        "with --reference)")
    is_bundle = (folder / CONFIG_NAME).is_file()
    if device != "cpu" and (reference or not is_bundle):
        raise McpmError(f"--device {device} runs bundles in the C runtime; the PyTorch reference runs on the CPU",
                        "drop --device, or pass a bundle written by mcpm-export --device gpu")
    if is_bundle and not reference:
        from mcpm.runtime.binding import Sampling

        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        stats = generate_in_runtime(folder, prompt, max_new_tokens, chat, sampling, threads, device, verify)
    elif reference and not is_bundle:
        stats = generate_in_reference(folder, prompt, max_new_tokens, chat, temperature, top_k, top_p, seed, threads)
    elif is_bundle:
        raise McpmError(f"{folder} is a bundle; --reference runs checkpoint folders", "drop --reference")
    elif (folder / "config.json").is_file():
        raise McpmError(f"{folder} is a checkpoint folder, not a bundle",
                        "export it with mcpm-export, or pass --reference to run the PyTorch reference")
    else:
        raise McpmError(f"{folder} has no {CONFIG_NAME}: it is not a bundle written by mcpm-export",
                        "pass the folder mcpm-export wrote (or a checkpoint folder with --reference)")
    click.echo(
        f"[{stats['prompt_tokens']} prompt tokens, {stats['prefill_tok_s']:.1f} tok/s prefill; "
        f"{stats['generated_tokens']} generated, {stats['decode_tok_s']:.1f} tok/s decode; {stats['engine']}]",
        err=True,
    )
    if as_json:
        click.echo(json.dumps(stats))


def generate_in_runtime(folder: Path, prompt: str, max_new_tokens: int, chat: bool, sampling: Any, threads: int,
                        device: str, verify: bool | None) -> dict[str, Any]:
    """`mcpm generate BUNDLE`: the C session continues (with chat: answers) the prompt, streaming its text as it
    comes; returns the stats, from the C runtime's clocks as in `mcpm bench`."""
    import codecs

    from mcpm.runtime.binding import Session

    t0 = time.perf_counter()
    bundle, model, _ = load_bundle_on(folder, threads, device, verify)
    load_ms = (time.perf_counter() - t0) * 1000
    engine = f"bundle ({bundle.config['quantization']}, C runtime{', GPU' if model.device == 'gpu' else ''})"
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    with model:
        session = Session(model)
        if not chat:
            click.echo(prompt, nl=False)
        run = session.chat if chat else session.complete
        n, _ = run(prompt, max_new_tokens, sampling, lambda piece: click.echo(decoder.decode(piece), nl=False))
        click.echo(decoder.decode(b"", final=True))
        c = model.stats()
        session.close()
    stats: dict[str, Any] = {"load_ms": round(load_ms, 1), "prompt_tokens": c["prefill_tokens"],
                             "generated_tokens": n}
    stats.update({k: round(c[k], 2) for k in ("prefill_tok_s", "decode_tok_s", "ttft_ms")})
    stats.update(threads=c["threads"], engine=engine)
    if device != "cpu":
        stats["device"] = c["device"]
    return stats


def generate_in_reference(folder: Path, prompt: str, max_new_tokens: int, chat: bool, temperature: float, top_k: int,
                          top_p: float, seed: int, threads: int) -> dict[str, Any]:
    """`mcpm generate MODEL_DIR --reference`: the PyTorch reference model with the Python sampler."""
    import torch

    from mcpm.export.loading import load_model
    from mcpm.export.reference_generate import SamplingParams
    from mcpm.export.reference_generate import generate as run_generate

    if threads > 0:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    loaded = load_model(folder, progress=sys.stderr.isatty())
    assert loaded.tokenizer is not None
    tok = loaded.tokenizer
    load_ms = (time.perf_counter() - t0) * 1000
    ids = tok.encode_chat([{"role": "user", "content": prompt}]) if chat else tok.encode(prompt, add_bos=True)
    stream = tok.stream_decoder(ids)
    if not chat:
        click.echo(prompt, nl=False)

    def on_token(token: int) -> None:
        if token not in tok.stop_ids:
            click.echo(stream.push(token), nl=False)

    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    allowed = torch.from_numpy(tok.decodable_mask(loaded.config.vocab_size))  # ids with no text are never drawn
    result = run_generate(loaded.model, ids, max_new_tokens, loaded.config.max_position_embeddings, tok.stop_ids,
                          params, on_token, allowed=allowed)
    click.echo()
    return {"load_ms": round(load_ms, 1), **{k: round(v, 2) for k, v in result.stats().items()},
            "threads": torch.get_num_threads(), "engine": "PyTorch reference"}


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-p", "--n-prompt", type=click.IntRange(min=1), default=128, show_default=True,
              help="Prompt tokens (random ids, seeded).")
@click.option("-n", "--n-gen", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens to generate (greedy, no stop ids).")
@click.option("-t", "--threads", type=THREADS, default=0, show_default=True, help="CPU threads (0 = one per CPU).")
@click.option("-r", "--repetitions", type=click.IntRange(min=1), default=5, show_default=True,
              help="Measured runs (after one warm-up).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with the machine and every run.")
@device_option
@click.option("--kernel-times/--no-kernel-times", default=None,
              help="Time every GPU kernel (OpenCL profiling events) and list the slowest (default: on unless "
                   "--device cpu).")
@click.option("--image", type=click.Path(path_type=Path), metavar="PATH",
              help="Also time the vision encoder on this image file in every run (MiniCPM-V bundles): "
                   "image_encode_ms, image_slices, image_patches, apart from prefill and decode.")
@verify_option
def bench(bundle: Path, n_prompt: int, n_gen: int, threads: int, repetitions: int, seed: int, as_json: bool,
          device: str = "cpu", kernel_times: bool | None = None, image: Path | None = None,
          verify: bool | None = None) -> None:
    """Prefill and decode speed of BUNDLE in the C runtime (mean ± sd over the runs), TTFT, load time, peak RSS.

    With --device gpu (a bundle from mcpm-export --device gpu) it runs the OpenCL kernels and adds the GPU's name
    and the time of every kernel, slowest first ("kernel_times" in --json). With --image PATH (a MiniCPM-V bundle)
    each run first encodes the image (overview + slices) and reports that time on its own row ("image_encode_ms").
    """
    from mcpm.runtime.bench import format_table, run_bench

    result = run_bench(bundle, n_prompt, n_gen, threads, repetitions, seed, device=device, kernel_times=kernel_times,
                       image=image, verify=verify)
    show_notice(result["notice"])
    click.echo(json.dumps(result) if as_json else format_table(result))


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-t", "--threads", type=THREADS, default=0, show_default=True, help="CPU threads (0 = one per CPU).")
@click.option("--gpu/--no-gpu", default=None,
              help="Also run on the GPU (an error when OpenCL does not work) / the CPU only (default: the GPU too when "
                   "the bundle has GPU kernels and OpenCL works).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with every run.")
@verify_option
def selftest(bundle: Path, threads: int, gpu: bool | None, as_json: bool, verify: bool | None = None) -> None:
    """Check that BUNDLE computes what its export's reference computed, in every kernel set this CPU runs.

    The export records a fixed prompt, the PyTorch reference's greedy continuation and its top-5 logits at every step
    (mcpm-config.json "golden"). The C runtime feeds the same ids and compares its logits (docs/self-test.md); the
    phone apps run the same check (`mcpm android verify`). Exits with status 1 when a run fails.

    \b
    Example:
      mcpm selftest dist/host-bundle
    """
    from mcpm.runtime.selftest import format_report, run_self_test

    report = run_self_test(bundle, threads, gpu=gpu, verify=verify)
    click.echo(json.dumps(report) if as_json else format_report(report))
    if not report["pass"]:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("report_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Folder for <device>.json and <device>.html.")
def report(report_file: Path, results_dir: Path) -> None:
    """Turn a self-test JSON into the report page: the iOS app's selftest/latest.json (`-selftest`), or a
    results/<device>.json of `mcpm android verify` (written again with its HTML).

    \b
    Example:
      mcpm report selftest.json            # from an iPhone: results/apple-iphone15-2.json and .html
    """
    from mcpm.export.android.report import write_html
    from mcpm.export.android.verify import device_slug, format_verify, report_from_file

    data = report_from_file(report_file)
    results_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(data["device"])
    json_path, html_path = results_dir / f"{slug}.json", results_dir / f"{slug}.html"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    write_html(data, html_path)
    click.echo(format_verify(data, json_path, html_path))


@cli.command("make-checkpoint")
@click.option("--preset", required=True, help="minicpm-2b, minicpm-1b, minicpm-2b-128k, minicpm-moe-8x2b, minicpm3-4b.")
@click.option("--random", "random_", is_flag=True, required=True, help="Random weights (the only kind available).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (new or empty).")
@click.option("--seed", default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default="bf16", show_default=True)
def make_checkpoint(preset: str, random_: bool, out: Path, seed: int, dtype: str) -> None:
    """Write a random-weight checkpoint with the real shapes and config keys of PRESET."""
    from mcpm.export.make_checkpoint import make_preset_checkpoint

    make_preset_checkpoint(preset, out, seed=seed, dtype=dtype, progress=True)
    click.echo(f"wrote {preset} (random weights, {dtype}) to {out}")


@cli.command()
@model_dir_argument
def info(model_dir: str) -> None:
    """Print the family, derived config values and parameter count of MODEL_DIR (weights are not loaded)."""
    from mcpm.export.hf_config import config_to_dict
    from mcpm.export.loading import chat_template_name, load_config

    path = resolve_model_dir(model_dir)
    family, config = load_config(path)
    derived = {k: v for k, v in vars(config).items() if k not in config_to_dict(config) and k != "extra"}
    click.echo(json.dumps({"family": family.model_type, "chat_template": chat_template_name(path, family), **derived},
                          indent=2))


@cli.command("eval")
@model_dir_argument
@click.option("--quant", "schemes", multiple=True, help="Scheme(s) to compare with float (default: all).")
@click.option("--quant-rule", "rules", multiple=True, help="PATTERN=SCHEME override applied to every scheme.")
@click.option("--text", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Held-out text (default: the default model's heldout.txt).")
@click.option("--max-tokens", type=click.IntRange(min=2), default=4096, show_default=True,
              help="Tokens of text to score.")
@click.option("--seq-len", type=click.IntRange(min=2), default=256, show_default=True, help="Window length.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_(model_dir: str, schemes: tuple[str, ...], rules: tuple[str, ...], text: Path | None, max_tokens: int,
          seq_len: int, as_json: bool) -> None:
    """Quality of quantized weights vs float on MODEL_DIR: perplexity, mean KL, top-1 agreement."""
    from mcpm.export.loading import DEFAULT_MODEL_DIR, load_model
    from mcpm.quantize.quality import evaluate
    from mcpm.quantize.recipe import Recipe
    from mcpm.quantize.schemes import SCHEMES

    recipes = [Recipe.parse(name, rules) for name in (schemes or tuple(SCHEMES))]
    loaded = load_model(resolve_model_dir(model_dir), progress=sys.stderr.isatty())
    assert loaded.tokenizer is not None
    source = text or DEFAULT_MODEL_DIR / "heldout.txt"
    try:
        held_out = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise McpmError(f"{source} is not UTF-8 text (byte {exc.start})",
                        "pass a plain text file with --text") from None
    tokens = loaded.tokenizer.encode(held_out, add_bos=True)[:max_tokens]
    if len(tokens) < 2:
        raise McpmError(f"{source} holds too little text to evaluate", "give a file with at least a few sentences")
    rows = evaluate(loaded.model, recipes, tokens, seq_len=seq_len, progress=sys.stderr.isatty())
    if as_json:
        click.echo(json.dumps({"model": str(loaded.model_dir), "tokens": len(tokens),
                               "results": [r.as_dict() for r in rows]}))
        return
    click.echo(f"{len(tokens)} tokens of {source.name}, windows of {seq_len}")
    click.echo(f"{'recipe':<24}{'bits/w':>8}{'MiB':>9}{'ppl':>10}{'mean KL':>10}{'top-1':>8}")
    for r in rows:
        click.echo(f"{r.recipe:<24}{r.bits_per_weight:>8.3f}{r.weight_mib:>9.2f}{r.perplexity:>10.3f}"
                   f"{r.mean_kl:>10.5f}{r.top1_agreement:>8.3f}")


@cli.command("quant-size")
@click.argument("model_dir", metavar="MODEL_DIR|PRESET", default="default")
@click.option("--quant-rule", "rules", multiple=True, help="PATTERN=SCHEME override applied to every scheme.")
def quant_size(model_dir: str, rules: tuple[str, ...]) -> None:
    """Weight bytes and bits/weight of every scheme for a checkpoint or a preset (from shapes only)."""
    import torch

    from mcpm.export.families import all_presets
    from mcpm.export.hf_config import parse_config
    from mcpm.export.loading import load_config
    from mcpm.quantize.apply import weight_bytes
    from mcpm.quantize.recipe import Recipe
    from mcpm.quantize.schemes import SCHEMES

    presets = all_presets()
    if model_dir in presets:
        family, data = presets[model_dir]
        config = parse_config(family.config_cls, data)
    else:
        family, config = load_config(resolve_model_dir(model_dir))
    with torch.device("meta"):
        model = family.model_cls(config)
    click.echo(f"{'scheme':<24}{'bits/w':>8}{'GiB':>9}")
    for name in SCHEMES:
        recipe = Recipe.parse(name, rules)
        nbytes, count = weight_bytes(model, recipe)
        click.echo(f"{recipe.name:<24}{8 * nbytes / count:>8.3f}{nbytes / 2**30:>9.3f}")


def image_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--image PATH (repeatable) of the commands that take images (MiniCPM-V bundles)."""
    return click.option("--image", "images", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
                        help=help_text)


def load_images(paths: tuple[Path, ...] | list[Path]) -> list[np.ndarray]:
    """Decode image files to RGB8 arrays uint8 [h, w, 3]; an unreadable file is a one-line ImageError."""
    from mcpm.export.models.minicpmv.preprocess import load_image

    return [load_image(p) for p in paths]


def require_vision(model: Model, bundle_dir: Path, option: str = "--image") -> None:
    """One-line McpmError when images are given for a bundle without a vision encoder."""
    if not model.has_vision:
        raise McpmError(f"{bundle_dir} has no vision encoder: {option} needs a MiniCPM-V bundle",
                        f"export a MiniCPM-V checkpoint with mcpm-export, or drop {option}")


def describe_image(name: str, rgb: np.ndarray, info: dict[str, Any]) -> str:
    """One stderr line about an attached image: size, vision runs, encode time, the runtime's notice."""
    line = f"[image {name}: {rgb.shape[1]}x{rgb.shape[0]}, {info['slices']} vision runs"
    if "image_patches" in info:
        line += f", {info['image_patches']} patches"
    if "image_encode_ms" in info:
        line += f", encoded in {float(info['image_encode_ms']):.1f} ms"
    line += "]"
    if info.get("notice"):
        line += f" ({info['notice']})"
    return line


@cli.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(path_type=Path))
@click.option("-n", "--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens per reply.")
@click.option("--temperature", default=0.0, show_default=True, help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True)
@click.option("--top-p", default=1.0, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", "-t", type=THREADS, default=0, help="C runtime threads (0 = one per CPU).")
@image_option("An image file (JPEG, PNG, ...) for a MiniCPM-V bundle, attached to the first message; repeat the "
              "option for several (in order). Later images: type /image PATH before a message.")
@device_option
@verify_option
def chat(bundle_dir: Path, max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
         threads: int, images: tuple[Path, ...] = (), device: str = "cpu", verify: bool | None = None) -> None:
    """Interactive multi-turn chat with BUNDLE (the KV cache is kept between turns; /reset, /quit).

    With a MiniCPM-V bundle, --image PATH (or /image PATH during the chat) attaches a picture to the next
    message; its encode time is printed on stderr. Example: echo "What is in the picture?" | mcpm chat BUNDLE
    --image photo.jpg
    """
    from mcpm.runtime.binding import Sampling
    from mcpm.runtime.chat import SessionChat

    check_sampling(temperature, top_k, top_p)
    pictures = list(zip([str(p) for p in images], load_images(images), strict=True))  # unreadable: fail first
    _, model, _ = load_bundle_on(bundle_dir, threads, device, verify)
    if pictures:
        require_vision(model, bundle_dir)
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    session = SessionChat(model, sampling, max_new_tokens)  # the C session, as `mcpm generate` and the apps

    def attach(name: str, rgb: np.ndarray) -> None:
        require_vision(model, bundle_dir, "/image")
        click.echo(describe_image(name, rgb, session.attach(rgb)), err=True)

    for name, rgb in pictures:
        attach(name, rgb)
    interactive = sys.stdin.isatty()
    if interactive:
        on = " on the GPU" if model.device == "gpu" else ""
        images_hint = "; /image PATH attaches a picture" if model.has_vision else ""
        click.echo(f"chatting with {bundle_dir}{on} ({model.context_length} tokens of context); /reset, /quit"
                   f"{images_hint}")
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 become one error line, not a dead chat
        sys.stdin.reconfigure(errors="surrogateescape")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        message = line.strip()
        if not _is_utf8(message):
            click.echo("error: that line is not valid UTF-8 text (type it again in UTF-8)", err=True)
            continue
        if message in ("/quit", "/exit"):
            break
        if message == "/reset":
            session.reset()
            click.echo("(new conversation)")
            continue
        if message == "/image" or message.startswith("/image "):
            try:
                path = Path(message[len("/image"):].strip())
                if not str(path) or str(path) == ".":
                    raise McpmError("/image needs a file", "type /image PATH")
                attach(str(path), load_images([path])[0])
            except McpmError as exc:
                click.echo(f"error: {exc}", err=True)
            continue
        if not message:
            continue
        try:
            session.turn(message, lambda piece: click.echo(piece, nl=False))
            click.echo()
        except McpmError as exc:  # one failed turn never ends the conversation
            click.echo(f"\nerror: {exc}", err=True)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from undecodable input bytes
        return False
    return True


cli.add_command(android)


def main(argv: list[str] | None = None) -> None:
    run_main(cli, argv, prog_name="mcpm")


if __name__ == "__main__":
    main()
