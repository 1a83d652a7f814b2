"""``python -m rnnkit.toolkit`` == ``rnnkit``."""

from .cli import main

main()
