"""The ``alignn`` command line (Typer + rich)."""
