"""vtbench: benchmark and evaluation suite for visual tokenizers."""

__version__ = "0.1.0"
