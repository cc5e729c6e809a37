"""``mcpm-export``: turn a Hugging Face checkpoint into a bundle for a target. Parses options, calls the exporter."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from mcpm import __version__
from mcpm.cli import resolve_model_dir
from mcpm.cli_util import model_dir_argument, run_main
from mcpm.export.bundle.target import TARGET_NAMES
from mcpm.quantize.schemes import ARM_DEFAULT_SCHEME, DEFAULT_SCHEME, SCHEMES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-export")
@model_dir_argument
@click.option("--target", default="host", show_default=True, metavar="|".join(TARGET_NAMES),
              help="Where the bundle will run: host (this machine), linux-arm64 (ARM64 Linux, emulated tests), "
                   "android (bundle + libmcpm.so + signed demo APK), ios (bundle + MCPMKernels.xcframework + Swift "
                   "package + SwiftUI app project; ios-arm64 is the same).")
@click.option("--quant", default=None, metavar="|".join(SCHEMES),
              help=f"Weight quantization scheme (default: {ARM_DEFAULT_SCHEME} for android, ios and linux-arm64 on "
                   f"the CPU, where int8 dot products make it 2.6-6x faster per weight; {DEFAULT_SCHEME} for host "
                   "and --device gpu).")
@click.option("--quant-rule", "quant_rules", multiple=True, metavar="PATTERN=SCHEME",
              help="Per-weight override, first match wins (e.g. lm_head=q8, 'layers.0.*=f16').")
@click.option("--context-length", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Rows of the static KV cache.")
@click.option("--prefill-chunk", type=click.IntRange(min=1), default=64, show_default=True,
              help="Most tokens per prefill call (at most --context-length).")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("dist/bundle"), show_default=True,
              help="Output folder (created). It is written aside and moved into place at the end: an earlier export "
                   "there is replaced, and a failed or interrupted export leaves it as it was.")
@click.option("--force", is_flag=True,
              help="Export into a non-empty folder that mcpm did not write; its files are kept (never deleted or "
                   "overwritten).")
@click.option("--debug-dump", type=click.Path(path_type=Path), help="Write the IR after every compiler phase here.")
@click.option("--embed-model/--no-embed-model", default=None,
              help="android: put the bundle inside the APK (default: when it is at most 256 MiB; larger ones "
                   "are pushed with `mcpm android push-model`).")
@click.option("--keystore", type=click.Path(path_type=Path, dir_okay=False),
              help="android: sign with this keystore (passwords from $MCPM_KEYSTORE_PASSWORD and "
                   "$MCPM_KEY_PASSWORD); default: a debug key generated once in ~/.cache/mcpm/android.")
@click.option("--key-alias", default="mcpm", show_default=True, help="android: key alias in --keystore.")
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="gpu: also export OpenCL (Android) and Metal (iOS) kernels with their launch records "
                   "(docs/gpu-plan.md); the CPU kernels stay in the bundle.")
@click.option("--vision-dtype", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
              help="MiniCPM-V: weight dtype of the vision tower and resampler.")
@click.option("--kv-dtype", type=click.Choice(["f16", "f32"]), default=None,
              help="KV cache rows: f16 (default on the CPU: half the memory of f32) or f32 (the default, and the "
                   "only choice, with --device gpu).")
@click.option("--max-patches", type=click.IntRange(min=1), default=None,
              help="MiniCPM-V: most 14x14 patches of one image slice (default ceil(1.125 * (448/14)^2) = 1152; "
                   "larger slices are refused by the runtime).")
@click.option("--allow-unused-tensors", is_flag=True,
              help="Drop checkpoint tensors this model family does not use (default: refuse them, since dropping a "
                   "weight such as a q_proj.bias changes the model).")
@click.option("--golden/--no-golden", default=True, show_default=True,
              help="Record golden results for the self-test (the PyTorch reference's greedy continuation of a fixed "
                   "prompt and its top-5 logits; `mcpm selftest`, `mcpm android verify`, docs/self-test.md). It runs "
                   "the float32 reference once after the weights are written: 1 s for the shipped model, ~1.5 min and "
                   "17 GiB for a 2B model; skipped with a notice when it would take over 80% of the memory).")
def export(model_dir: str, target: str, quant: str | None, quant_rules: tuple[str, ...], context_length: int,
           prefill_chunk: int, out: Path, debug_dump: Path | None, embed_model: bool | None, keystore: Path | None,
           key_alias: str, device: str = "cpu", vision_dtype: str = "f16", max_patches: int | None = None,
           force: bool = False, kv_dtype: str | None = None, allow_unused_tensors: bool = False,
           golden: bool = True) -> None:
    """Export MODEL_DIR (`default` = the shipped model) to a bundle: plan, kernels, weights, tokenizer.

    \b
    Examples:
      mcpm-export default --target host -o dist/host-bundle
      mcpm-export default --target android -o dist/android     # bundle + libmcpm.so + signed APK
      mcpm-export default --target ios -o dist/ios             # bundle + XCFramework + Swift package + app
      mcpm-export ./MiniCPM-2B-sft-bf16 --target android --context-length 1024 -o dist/minicpm-2b
      mcpm-export ./MiniCPM-V-2 --target host --context-length 2048 -o dist/minicpm-v-2   # + vision entries
    """
    from mcpm.export.exporter import ExportOptions, run_export

    opts = ExportOptions(resolve_model_dir(model_dir), out, target, quant, quant_rules, context_length, prefill_chunk,
                         debug_dump, progress=sys.stderr.isatty(), embed_model=embed_model,
                         keystore=_keystore(keystore, key_alias), device=device, vision_dtype=vision_dtype,
                         max_patches=max_patches or 0, force=force, kv_dtype=kv_dtype,
                         allow_unused_tensors=allow_unused_tensors, golden=golden)
    with _sigterm_as_exit():  # a killed export removes its staging folder like Ctrl-C does
        report = run_export(opts)
    click.echo(report.table())
    click.echo(f"bundle written to {report.bundle_dir}")
    if report.android is not None:
        click.echo(report.android.next_steps())
    elif report.ios is not None:
        click.echo(report.ios.next_steps())
    elif target == "host" and "vision" in json.loads((out / "plan.json").read_text()):  # a MiniCPM-V bundle
        click.echo(f"next: mcpm chat {out} --image PHOTO.jpg")
    elif target == "host":
        click.echo(f"next: mcpm generate {out} -p \"The people of the\"   (or check it: mcpm selftest {out})")


@contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (e.g. called from a test runner's worker): leave it
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _keystore(path: Path | None, alias: str):  # -> KeystoreOptions | None
    if path is None:
        return None
    import os

    from mcpm.errors import McpmError
    from mcpm.export.android.apk import KeystoreOptions

    if not path.is_file():
        raise McpmError(f"keystore {path} does not exist", "pass an existing keystore file (keytool -genkeypair)")
    password = os.environ.get("MCPM_KEYSTORE_PASSWORD")
    if not password:
        raise McpmError("--keystore needs its password in $MCPM_KEYSTORE_PASSWORD",
                        "export MCPM_KEYSTORE_PASSWORD=... (and MCPM_KEY_PASSWORD if the key's differs)")
    return KeystoreOptions(path, alias, password, os.environ.get("MCPM_KEY_PASSWORD") or None)


def main(argv: list[str] | None = None) -> None:
    run_main(export, argv, prog_name="mcpm-export")


if __name__ == "__main__":
    main()
