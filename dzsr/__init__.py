"""dzsr: SelfDZSR dual-zoom self-supervised super-resolution (models, losses, data, evaluation)."""

__version__ = "0.1.0"
