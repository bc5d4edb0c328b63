"""``python -m robustdx.cli``: the same as the ``robustdx`` console script."""

from robustdx.cli.app import main

main()
