"""``python -m postline``: the CLI, as the ``postline`` script runs it (and how
``postline serve`` starts its delivery and webhook processes)."""

from postline.cli import main

main()
