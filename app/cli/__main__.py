"""``python -m app.cli``: the ``service4ct`` command."""

from app.cli import main

main()
