"""Trainer of the embedded default captioner (``assets/default-captioner``)."""
