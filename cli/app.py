"""The root ``robustdx`` app: every command of :mod:`robustdx.cli`'s modules, registered in the order
``--help`` lists them."""

from __future__ import annotations

import typer

from robustdx.cli import pipeline, release, serving, stack, sweep, training

app = typer.Typer(
    help="Adversarially robust, interpretable medical image classification: train, sweep, evaluate, promote, "
    "serve, explain, and run the retraining stack.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # `robustdx --install-completion` for bash, zsh, fish and PowerShell
)
for module in (training, sweep, release, pipeline, serving, stack):
    module.register(app)


def main() -> None:
    """The console script's entry point."""
    app()


if __name__ == "__main__":
    main()
