"""``mcpm-export``: turn a Hugging Face checkpoint into a phone bundle (targets arrive with later issues)."""

from __future__ import annotations

import click

from mcpm import __version__
from mcpm.cli import resolve_model_dir
from mcpm.cli_util import model_dir_argument, run_main
from mcpm.errors import McpmError

TARGETS = ("android", "ios", "host", "linux-arm64")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mcpm-export")
@model_dir_argument
@click.option("--target", type=click.Choice(TARGETS), default="android", show_default=True,
              help="Where the bundle will run.")
@click.option("-o", "--out", type=click.Path(), default="dist", show_default=True, help="Output folder.")
def export(model_dir: str, target: str, out: str) -> None:
    """Check MODEL_DIR (`default` = the shipped model) and export it for TARGET.

    Today this validates the checkpoint (config, every tensor's shape, tokenizer); the compiler,
    bundle and APK/iOS packaging are being built and will write to OUT.
    """
    from mcpm.export.loading import load_model

    loaded = load_model(resolve_model_dir(model_dir), progress=True)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    click.echo(f"checked {loaded.model_dir}: {loaded.family.model_type}, {n_params:,} parameters, tokenizer ok")
    raise McpmError(
        f"export to {target!r} is not available yet: the compiler and packaging are still being built",
        "run the model with `mcpm generate MODEL_DIR --reference -p ...` meanwhile",
    )


def main(argv: list[str] | None = None) -> None:
    run_main(export, argv)


if __name__ == "__main__":
    main()
