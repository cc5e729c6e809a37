"""``mcpm android``: install the demo app, push bundles and run the on-phone benchmark over adb."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mcpm.errors import McpmError

if TYPE_CHECKING:
    from mcpm.export.android.adb import Adb


def _adb(ctx: click.Context) -> Adb:
    from mcpm.export.android.adb import Adb

    return Adb(serial=ctx.obj.get("serial"), log=lambda message: click.echo(message, err=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-s", "--serial", envvar="ANDROID_SERIAL",
              help="Device serial from `adb devices` (default: $ANDROID_SERIAL, or the only device connected).")
@click.pass_context
def android(ctx: click.Context, serial: str | None) -> None:
    """Run exported models on an Android phone over adb.

    The phone needs USB debugging on (Settings > Developer options).

    adb is found on PATH or in $ADB. Typical session:

    \b
      mcpm android verify out                  (all of it: install, self-test and benchmark, report)
      mcpm android install out/mcpm-demo.apk
      mcpm android push-model out/minicpm-1b-q4
      mcpm android bench --model minicpm-1b-q4 -p 128 -n 64 -t 4
      mcpm android pull-results -o results
    """
    ctx.ensure_object(dict)
    ctx.obj["serial"] = serial


@android.command()
@click.argument("apk", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def install(ctx: click.Context, apk: Path) -> None:
    """Install or replace the demo app APK.

    An installed app keeps its data and pushed models.

    \b
    Example:
      mcpm android install out/mcpm-demo.apk
    """
    _adb(ctx).install(apk)
    click.echo(f"installed {apk}")


@android.command("push-model")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", help="Model name on the phone (default: the bundle folder's name).")
@click.pass_context
def push_model(ctx: click.Context, bundle: Path, name: str | None) -> None:
    """Copy a bundle to the phone's models folder.

    BUNDLE is a folder written by mcpm-export. It lands in /sdcard/Android/data/org.mcpm.demo/files/models/NAME/,
    where the app's model picker and `mcpm android bench --model NAME` find it.
    Kernel objects (*.o) are not copied: the APK holds them.

    \b
    Example:
      mcpm android push-model out/minicpm-1b-q4 --name minicpm-1b
    """
    remote = _adb(ctx).push_model(bundle, name)
    click.echo(f"pushed {bundle} to {remote}")


@android.command()
@click.option("--model", metavar="NAME|DIR", required=True,
              help="A model name (pushed with push-model or shipped in the APK) or an absolute bundle folder "
                   "on the phone.")
@click.option("-p", "--prompt-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Prompt tokens to prefill.")
@click.option("-n", "--gen-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens to generate.")
@click.option("-t", "--threads", type=click.IntRange(0, 256), default=0, show_default=True,
              help="CPU threads on the phone (0 = automatic: its big cores).")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu", show_default=True,
              help="Where the app runs the model (gpu: OpenCL, needs a bundle exported with --device gpu; auto: "
                   "the GPU when it works, else the CPU).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=600.0, show_default=True,
              help="Seconds to wait for the result.")
@click.option("--json", "as_json", is_flag=True, help="Print the phone's stats JSON instead of a table.")
@click.option("--kernel-variant", type=click.Choice(["i8mm", "dotprod", "neon"]), default=None,
              help="Benchmark this CPU kernel set (default: the best one the phone supports); run once per set to "
                   "compare them (an error when the phone lacks its instructions).")
@click.option("--image", type=click.Path(path_type=Path), metavar="PATH",
              help="An image file (MiniCPM-V models): pushed to the phone and encoded once before the text "
                   "benchmark; adds the vision encoder's time (image_encode_ms) and its runs and patches.")
@click.pass_context
def bench(ctx: click.Context, model: str, prompt_tokens: int, gen_tokens: int, threads: int, device: str,
          timeout: float, as_json: bool, image: Path | None = None, kernel_variant: str | None = None) -> None:
    """Benchmark a model on the phone.

    Prints prefill and decode tok/s, time to first token, load time and peak memory. Starts the app's
    BenchmarkActivity and waits for its result file (/sdcard/Android/data/org.mcpm.demo/files/bench/latest.json).
    With --image PATH (a MiniCPM-V model) also the image encode time, apart from prefill and decode.

    \b
    Example:
      mcpm android bench --model minicpm-1b -p 128 -n 64 -t 4
      mcpm android bench --model minicpm-v2 --image photo.jpg
    """
    if image is not None and not image.is_file():
        raise McpmError(f"image {image} does not exist", "give a JPEG or PNG file")
    stats = _adb(ctx).bench(model, prompt_tokens, gen_tokens, threads, device, timeout, image=image,
                            kernel_variant=kernel_variant)
    click.echo(json.dumps(stats) if as_json else format_stats(stats, model))


def format_stats(stats: dict[str, Any], model: str) -> str:
    """The phone's stats JSON as a small table (keys the runtime did not report are shown as '-')."""

    def value(key: str, fmt: str, scale: float = 1.0) -> str:
        v = stats.get(key)
        return format(v / scale, fmt) if isinstance(v, int | float) else "-"

    prefill_n = stats.get("prefill_tokens", "?")
    decode_n = stats.get("decode_tokens", "?")
    rows = [
        (f"pp{prefill_n}", f"{value('prefill_tok_s', '.2f')} tok/s"),
        (f"tg{decode_n}", f"{value('decode_tok_s', '.2f')} tok/s"),
        ("ttft", f"{value('ttft_ms', '.1f')} ms"),
        ("load", f"{value('load_ms', '.1f')} ms"),
        ("peak rss", f"{value('peak_rss_kb', '.1f', 1024)} MiB"),
    ]
    if "image_encode_ms" in stats:  # bench --image: the vision encoder, apart from prefill and decode
        size = f"{stats.get('image_width', '?')}x{stats.get('image_height', '?')}"
        rows.insert(2, ("image", f"{value('image_encode_ms', '.1f')} ms"))
        extra_image = (f"image {size}: {stats.get('image_slices', '?')} vision runs, "
                       f"{stats.get('image_patches', '?')} patches")
    else:
        extra_image = ""
    head = (f"model {model}, {stats.get('threads', '?')} threads, device {stats.get('device', 'cpu')}"
            f"{' (' + str(stats['gpu_device']) + ')' if stats.get('gpu_device') else ''}, kernels "
            f"{stats.get('kernel_variant', '?')}")
    lines = [head, f"{'test':<12}{'value':>18}"]
    lines += [f"{name:<12}{text:>18}" for name, text in rows]
    if extra_image:
        lines.append(extra_image)
    if stats.get("image_notice"):
        lines.append(f"image notice: {stats['image_notice']}")
    if stats.get("notice"):
        lines.append(f"notice: {stats['notice']}")
    for k in (stats.get("kernel_times") or [])[:5]:  # GPU runs: the slowest kernels
        lines.append(f"  {k.get('kernel', '?'):<40}{k.get('ms', 0):>10.1f} ms  x{k.get('count', 0)}")
    return "\n".join(lines)


@android.command("pull-results")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder to copy the phone's bench/ folder into.")
@click.pass_context
def pull_results(ctx: click.Context, out_dir: Path) -> None:
    """Copy the phone's benchmark results here.

    Every result (bench/latest.json and bench/<unix-millis>.json) lands in OUT/bench/.

    \b
    Example:
      mcpm android pull-results -o results
    """
    local = _adb(ctx).pull_results(out_dir)
    click.echo(f"pulled results to {local}")


@android.command()
@click.argument("export_dir", metavar="OUT", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("results"), show_default=True, help="Folder for <device>.json and <device>.html.")
@click.option("-p", "--prompt-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Prompt tokens of each benchmark.")
@click.option("-n", "--gen-tokens", type=click.IntRange(min=1), default=64, show_default=True,
              help="Tokens generated by each benchmark.")
@click.option("-t", "--threads", type=click.IntRange(0, 256), default=0, show_default=True,
              help="CPU threads on the phone (0 = automatic: its big cores).")
@click.option("--model", metavar="NAME", default=None,
              help="The model is already on the phone under NAME (push-model): do not push the bundle.")
@click.option("--install/--no-install", default=True, show_default=True,
              help="Install OUT's APK first (the app's native library holds the kernels being checked).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=900.0, show_default=True,
              help="Seconds to wait for each run.")
@click.pass_context
def verify(ctx: click.Context, export_dir: Path, results_dir: Path, prompt_tokens: int, gen_tokens: int,
           threads: int, model: str | None, install: bool, timeout: float) -> None:
    """Prove the phone runs OUT right, and measure how fast: one report.

    OUT is the folder of `mcpm-export MODEL --target android -o OUT`. Installs its APK, puts the model on the phone
    (pushed when it is not inside the APK), collects the phone's facts (model, SoC, Android, CPU cores and their
    frequencies, features, GPU), then for every CPU kernel set the phone runs (i8mm, dotprod, neon) and the GPU
    (when the bundle has GPU kernels) runs the self-test (the export's golden results: docs/self-test.md) and the
    benchmark, screen kept on, thermal status recorded. Writes RESULTS/<device>.json and a self-contained
    RESULTS/<device>.html and prints PASS/FAIL per kernel set with the speeds. Exit status 1 when a run fails.

    \b
    Example:
      mcpm-export default --target android -o dist/a && mcpm android verify dist/a
    """
    from mcpm.export.android.verify import format_verify, run_verify

    report, json_path, html_path = run_verify(_adb(ctx), export_dir, results_dir, prompt_tokens, gen_tokens, threads,
                                              timeout, install, model,
                                              progress=lambda message: click.echo(message, err=True))
    click.echo(format_verify(report, json_path, html_path))
    if not report["pass"]:
        raise click.exceptions.Exit(1)
