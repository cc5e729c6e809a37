"""Reference GPU dispatcher in Python (pyopencl): runs a bundle's prefill / decode from plan.json's "gpu" section,
kernels.cl and weights.bin only (the model the C OpenCL dispatcher follows; see docs/gpu-plan.md).

Every storage, cache, weight and the token buffer is one device buffer bound at offset 0; per plan call, the
call's kernel's launches run in order with global size = grid * block. Only the logits are read back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcpm.errors import McpmError
from mcpm.export.compiler.gpu import eval_rpn, validate_gpu_section
from mcpm.export.compiler.plan import CacheArg, InputArg, Plan, TensorRef, WeightArg, nbytes, shape_at
from mcpm.export.compiler.plan_runner import prefill_in_chunks

if TYPE_CHECKING:
    import pyopencl as cl

_NP_SCALAR: dict[str, type[np.generic]] = {"int32": np.int32, "int64": np.int64, "float32": np.float32}


def opencl_context():
    """(context, queue) on the first OpenCL device, or McpmError when pyopencl or a platform is missing."""
    try:
        import pyopencl as cl
    except ImportError as e:
        raise McpmError("pyopencl is not installed", "pip install pyopencl (the dev extras)") from e
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:  # ocl-icd without any ICD: PLATFORM_NOT_FOUND_KHR
        raise McpmError(f"no OpenCL platform ({e})", "install one, e.g. apt install pocl-opencl-icd") from None
    devices = [d for p in platforms for d in p.get_devices()]
    if not devices:
        raise McpmError("no OpenCL device", "install one, e.g. apt install pocl-opencl-icd")
    ctx = cl.Context([devices[0]])
    return ctx, cl.CommandQueue(ctx)


class GpuPlanModel:
    """Same driver API as plan_runner.PlanModel: prefill(tokens) in chunks, decode(token), pos, reset."""

    def __init__(self, plan_dict: dict, source: str, weights: list[np.ndarray], ctx=None, queue=None) -> None:
        import pyopencl as cl

        self.cl = cl
        validate_gpu_section(plan_dict, source)
        self.plan = Plan.from_dict({k: v for k, v in plan_dict.items() if k != "gpu"})
        self.launches = plan_dict["gpu"]["launches"]
        if ctx is None:
            ctx, queue = opencl_context()
        self.ctx, self.queue = ctx, queue
        try:
            self.program = cl.Program(ctx, source).build()
        except cl.RuntimeError as e:
            raise McpmError(f"OpenCL program build failed: {str(e).strip().splitlines()[-1:]}") from None
        self.kernels = {r["kernel"]: cl.Kernel(self.program, r["kernel"])
                        for recs in self.launches.values() for r in recs}
        mf = cl.mem_flags
        if len(weights) != len(self.plan.weights):
            raise McpmError(f"plan wants {len(self.plan.weights)} weights, got {len(weights)}")
        self.weights = [cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=np.ascontiguousarray(w))
                        for w in weights]
        cache_bytes = int(np.prod(self.plan.cache_shape)) * np.dtype(self.plan.cache_dtype).itemsize
        self.caches = [cl.Buffer(ctx, mf.READ_WRITE, cache_bytes) for _ in range(2 * self.plan.num_layers)]
        zeros = np.zeros(cache_bytes, np.uint8)
        for c in self.caches:
            cl.enqueue_copy(queue, c, zeros)
        self.storages = {name: [cl.Buffer(ctx, mf.READ_WRITE, max(s.size, 4)) for s in e.storages]
                         for name, e in self.plan.entries.items()}
        self.tokens = {name: cl.Buffer(ctx, mf.READ_ONLY, 4 * e.n_max) for name, e in self.plan.entries.items()}
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def _buffer(self, entry: str, a) -> cl.Buffer:
        if isinstance(a, TensorRef):
            if a.offset:
                raise McpmError(f"tensor arg at byte offset {a.offset}: GPU plans bind buffers at offset 0")
            return self.storages[entry][a.storage]
        if isinstance(a, WeightArg):
            return self.weights[a.index]
        if isinstance(a, CacheArg):
            return self.caches[2 * a.layer + (a.which == "v")]
        if isinstance(a, InputArg):
            return self.tokens[entry]
        raise McpmError(f"launch binds a non-buffer plan arg {a!r}")

    def run(self, entry_name: str, tokens: np.ndarray) -> np.ndarray:
        cl = self.cl
        entry = self.plan.entries[entry_name]
        n = len(tokens)
        if not 1 <= n <= entry.n_max:
            raise McpmError(f"{entry_name} takes 1..{entry.n_max} tokens, got {n}")
        if self.pos + n > self.plan.max_ctx:
            raise McpmError(f"context full: {self.pos} + {n} tokens > max_ctx {self.plan.max_ctx}")
        if tokens.min() < 0 or tokens.max() >= self.plan.vocab_size:
            raise McpmError(f"token id out of range 0..{self.plan.vocab_size - 1}")
        cl.enqueue_copy(self.queue, self.tokens[entry_name], np.ascontiguousarray(tokens, np.int32))
        for call in entry.calls:
            for r in self.launches[call.kernel]:
                k = self.kernels[r["kernel"]]
                for i, p in enumerate(r["params"]):
                    if "arg" in p:
                        k.set_arg(i, self._buffer(entry_name, call.args[p["arg"]]))
                    else:
                        k.set_arg(i, _NP_SCALAR[p["scalar"]](eval_rpn(p["expr"], n, self.pos)))
                grid = [eval_rpn(g, n, self.pos) for g in r["grid"]]
                block = r["block"]
                cl.enqueue_nd_range_kernel(self.queue, k, [g * b for g, b in zip(grid, block, strict=True)], block)
        out = entry.output
        logits = np.empty(shape_at(out.shape, n), out.dtype)
        assert nbytes(out.shape, out.dtype, n) == logits.nbytes and out.offset == 0
        cl.enqueue_copy(self.queue, logits, self.storages[entry_name][out.storage])
        self.queue.finish()
        self.pos += n
        return logits

    def prefill(self, tokens) -> np.ndarray:
        return prefill_in_chunks(tokens, self.plan.chunk, lambda chunk: self.run("prefill", chunk))

    def decode(self, token: int) -> np.ndarray:
        return self.run("decode", np.array([token], np.int32))

    def cache_numpy(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for c in self.caches[2 * layer : 2 * layer + 2]:
            a = np.empty(self.plan.cache_shape, self.plan.cache_dtype)
            self.cl.enqueue_copy(self.queue, a, c)
            out.append(a)
        self.queue.finish()
        return out[0], out[1]


def bundle_weights(bundle_dir: Path, plan: Plan) -> list[np.ndarray]:
    """The plan's weights from weights.bin, in plan order."""
    from mcpm.export.bundle.weights_file import WeightsFile

    wf = WeightsFile(Path(bundle_dir) / "weights.bin")
    return [np.asarray(wf.tensor(w.name)) for w in plan.weights]


def load_gpu_model(bundle_dir: Path, plan_dict: dict | None = None) -> GpuPlanModel:
    """plan.json (or ``plan_dict``, e.g. a modified copy) + kernels.cl + weights.bin of a --device gpu bundle."""
    import json

    bundle_dir = Path(bundle_dir)
    if plan_dict is None:
        plan_dict = json.loads((bundle_dir / "plan.json").read_text())
    if "gpu" not in plan_dict:
        raise McpmError(f"{bundle_dir} has no GPU launch records", "export it with mcpm-export --device gpu")
    source = (bundle_dir / plan_dict["gpu"]["opencl_source"]).read_text()
    plan = Plan.from_dict({k: v for k, v in plan_dict.items() if k != "gpu"})
    return GpuPlanModel(plan_dict, source, bundle_weights(bundle_dir, plan))
