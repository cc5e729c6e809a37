"""MiniCPM-V 2.0: SigLIP-so400m vision tower, Resampler2 and the MiniCPM-2.4B language model."""
