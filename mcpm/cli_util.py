"""Helpers shared by the command-line entry points: one-line errors instead of tracebacks."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from mcpm.errors import McpmError


def run_main(command: click.Command, argv: list[str] | None = None, prog_name: str | None = None) -> Any:
    """Run a click command; McpmError becomes ``error: ...`` on stderr and exit code 2."""
    try:
        return command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except McpmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as exc:  # `mcpm` alone: its help, as `mcpm --help` prints it
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        sys.exit(0)
    except click.UsageError as exc:  # click's own 4-line usage block, as one line in mcpm's style
        where = exc.ctx.command_path if exc.ctx is not None else command.name
        click.echo(f"error: {one_line(exc.format_message())} (see `{where} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"error: {one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)


def one_line(text: str) -> str:
    return " ".join(text.split())


def model_dir_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    """MODEL_DIR argument; the word ``default`` names the shipped default model."""
    return click.argument("model_dir", metavar="MODEL_DIR", default="default")(func)
