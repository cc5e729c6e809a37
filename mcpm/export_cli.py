"""``mcpm-export``: turn a Hugging Face checkpoint into a bundle for a target. Parses options, calls the exporter."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mcpm import __version__
from mcpm.cli import resolve_model_dir
from mcpm.cli_util import model_dir_argument, run_main
from mcpm.export.bundle.target import TARGET_NAMES
from mcpm.quantize.schemes import DEFAULT_SCHEME, SCHEMES


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-export")
@model_dir_argument
@click.option("--target", default="host", show_default=True, metavar="|".join(TARGET_NAMES),
              help="Where the bundle will run (only host is available yet).")
@click.option("--quant", default=DEFAULT_SCHEME, show_default=True, metavar="|".join(SCHEMES),
              help="Weight quantization scheme.")
@click.option("--quant-rule", "quant_rules", multiple=True, metavar="PATTERN=SCHEME",
              help="Per-weight override, first match wins (e.g. lm_head=q8, 'layers.0.*=f16').")
@click.option("--context-length", default=2048, show_default=True, help="Rows of the static KV cache.")
@click.option("--prefill-chunk", default=64, show_default=True, help="Most tokens per prefill call.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("dist/bundle"), show_default=True,
              help="Output folder (created; an existing bundle there is replaced).")
@click.option("--debug-dump", type=click.Path(path_type=Path), help="Write the IR after every compiler phase here.")
def export(model_dir: str, target: str, quant: str, quant_rules: tuple[str, ...], context_length: int,
           prefill_chunk: int, out: Path, debug_dump: Path | None) -> None:
    """Export MODEL_DIR (`default` = the shipped model) to a bundle: plan, kernels, weights, tokenizer."""
    from mcpm.export.exporter import ExportOptions, run_export

    opts = ExportOptions(resolve_model_dir(model_dir), out, target, quant, quant_rules, context_length, prefill_chunk,
                         debug_dump, progress=sys.stderr.isatty())
    report = run_export(opts)
    click.echo(report.table())
    click.echo(f"bundle written to {out}")
    click.echo(f"next: mcpm generate {out} -p \"The people of the\"")


def main(argv: list[str] | None = None) -> None:
    run_main(export, argv)


if __name__ == "__main__":
    main()
