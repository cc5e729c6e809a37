"""Quantization schemes, packing and quality measurement (int4 group quantization arrives with the compiler)."""
