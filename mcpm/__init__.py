"""mcpm: deploy MiniCPM models on phones (export, quantize, compile, package, run)."""

__version__ = "0.1.0"
