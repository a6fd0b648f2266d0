"""DGL plugin: the ``alignn_atomwise`` model config (always) and, when DGL imports, its backend.

The config is registered even without DGL so upstream DGL-era configs validate everywhere; training
one without DGL stops with an error that says how to install it or switch to the pure model.
"""

__version__ = "0.1.0"
