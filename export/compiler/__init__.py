"""TVM (0.27) compiler of mcpm: MiniCPM models (``minicpm`` dense and MoE, ``minicpmv``) to a static execution plan
plus native kernels, for the host CPU, ARM64 (kernel sets ``neon``, ``dotprod``, ``i8mm``) and GPUs (OpenCL, Metal).

    spec.CompileSpec(max_ctx, chunk, all_logits, recipe, ...)   what to compile (context, chunk, weight schemes)
    layout.weight_params(cfg, spec)       the ordered weight parameters (name, shape, dtype)
    model_def.build_module(cfg, spec)     relax IRModule: ``prefill`` (n <= chunk), ``decode`` (n = 1); minicpmv also
                                          ``embed``, ``prefill_embeds`` and ``vision`` (vision_def.py)
    weights.export_weights(model, cfg, spec)   NumPy weights in that order (muP scales folded, int4 packed)
    lower.py                              relax -> plan.Plan (storages + ordered kernel calls per entry) + kernels.o,
                                          one kernel object per ARM64 kernel set
    plan.py / plan_runner.py              the plan format (docs/bundle-format.md) and its Python interpreter (the
                                          reference of the C runtime in runtime_bindings/c)
    runner.py                             compile and drive the module with TVM's relax VirtualMachine (tests)
    kernels.py, quant_kernels.py, arm_q4.py, moe_kernels.py, vision_kernels.py   hand-written TIR: float, int4
                                          (portable and SDOT/SMMLA), MoE routing/experts, SigLIP + resampler
    gpu.py, gpu_kernels.py, gpu_runner.py  the GPU phase: scheduled kernels for OpenCL/Metal + launch records
                                          (docs/gpu-plan.md), and a pyopencl reference dispatcher
    vision_runner.py                      run a MiniCPM-V plan with images from Python (docs/minicpmv.md)

Calling convention of ``prefill`` / ``decode``:
    (tokens int32[n], pos int64, k_cache_0, v_cache_0, ..., k_cache_{L-1}, v_cache_{L-1}, *weights) -> logits
    caches [max_ctx, kv_heads, head_dim] (float16 or float32, --kv-dtype), written in place at rows pos .. pos+n-1;
    logits float32[1, vocab] of the last position ([n, vocab] when spec.all_logits).
"""
