"""Pure-torch graph backend (``torch``) and the ``alignn_atomwise_pure`` model."""

__version__ = "0.1.0"
