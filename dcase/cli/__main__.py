"""``python -m dcase.cli`` = the ``dcase`` command."""

from dcase.cli import main

main()
