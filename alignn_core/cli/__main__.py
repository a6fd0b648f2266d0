"""``python -m alignn_core.cli`` runs the ``alignn`` CLI."""

from alignn_core.cli.launch import entry

entry()
