"""``python -m alignn_core.cli`` runs the ``alignn`` CLI."""

from alignn_core.cli.app import entry

entry()
