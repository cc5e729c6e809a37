"""TVM (0.27) compiler for the ``minicpm`` family, dense and MoE (phase 1: host CPU, relax VirtualMachine driver).

    spec.CompileSpec(max_ctx, chunk, all_logits, int4_group | recipe, num_experts)  what to compile (schemes)
    layout.weight_params(cfg, spec)      ordered weight parameters (name, shape, dtype)
    model_def.build_module(cfg, spec)    IRModule with ``prefill`` (n <= chunk, symbolic) and ``decode`` (n = 1)
    weights.export_weights(model, cfg, spec)  NumPy weights in that order (muP scales folded, int4 packed)
    runner.compile_model(loaded, spec)   CompiledModel: prefill(tokens) / decode(token) over a static KV cache
    kernels.py / quant_kernels.py        hand-written blockless TIR (linear, kv_append, attention; int4 linear/embed)
    moe_kernels.py                       MoE: top-k routing + chosen experts' gate_up / down (float, int4-sym)

Calling convention of both functions:
    (tokens int32[n], pos int64, k_cache_0, v_cache_0, ..., k_cache_{L-1}, v_cache_{L-1}, *weights) -> logits
    caches float32[max_ctx, kv_heads, head_dim], written in place at rows pos .. pos+n-1;
    logits float32[1, vocab] of the last position ([n, vocab] when spec.all_logits).
"""
