"""What every ``rnnkit`` command shares: the command and group classes that turn expected failures
into one line (a missing optional package names its ``rnnkit[...]`` extra; an ``RnnkitError`` is
``Error: ...``), the backend choice, and training-config defaults read without building a config.

Imports click and the stdlib only (``rnnkit --help`` loads this).
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from types import SimpleNamespace

import click

from .extras import missing_package_message

BACKEND = click.Choice(["auto", "onnxruntime", "numba"])


class RnnkitCommand(click.Command):
    """A command whose missing optional package is one line naming the extra to install."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            message = missing_package_message(exc, ctx.command_path)
            if message is None:
                raise
            raise click.ClickException(message) from None


class RnnkitGroup(click.Group):
    command_class = RnnkitCommand

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # an RnnkitError exists only if its module was imported: asking sys.modules keeps
            # `--help` (click's Exit passes here too) from importing the runtime
            errors = sys.modules.get("rnnkit.runtime.errors")
            if errors is not None and isinstance(exc, errors.RnnkitError):
                raise click.ClickException(str(exc)) from None
            raise


RnnkitGroup.group_class = RnnkitGroup  # `rnnkit train` and its commands too


def defaults(config_class) -> SimpleNamespace:
    """A training config's field defaults, read without building one (a default_factory may import the runtime)."""
    return SimpleNamespace(**{f.name: f.default for f in fields(config_class) if f.default is not MISSING})
