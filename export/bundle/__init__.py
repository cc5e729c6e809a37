"""The exported bundle: ``mcpm-config.json``, ``plan.json``, ``weights.bin``, tokenizer, kernels per target.

The format is specified in docs/bundle-format.md; readers validate every field and fail with one-line errors.
"""
