"""Lethe's machine-learning core: data, networks, training, unlearning methods and metrics."""

__version__ = "0.1.0"
