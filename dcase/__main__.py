"""``python -m dcase`` = the ``dcase`` command."""

from dcase.cli import main

main()
