"""The training loop and everything it writes."""
