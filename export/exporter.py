"""``mcpm-export``'s pipeline in named phases: load → weights → define → lower → bundle.

Each phase is timed (and shown with a progress bar); the summary lists time per phase, bundle size and
bits/weight. ``debug_dump`` writes the IR after every compiler phase.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from mcpm import __version__
from mcpm.errors import McpmError
from mcpm.export.bundle.reader import CONFIG_NAME, FORMAT_VERSION, sha256_of
from mcpm.export.bundle.target import Target, get_target
from mcpm.export.bundle.weights_file import write_weights
from mcpm.export.hf_config import config_to_dict
from mcpm.export.loading import LoadedModel, load_config, load_model
from mcpm.export.output_dir import OutputFolder
from mcpm.quantize.recipe import Recipe
from mcpm.quantize.schemes import default_scheme

if TYPE_CHECKING:  # tvm is imported only when compiling
    from mcpm.export.bundle.weights_file import TensorEntry
    from mcpm.export.compiler.lower import Exported
    from mcpm.export.compiler.spec import CompileSpec


@dataclass
class ExportOptions:
    model_dir: Path
    out_dir: Path
    target: str = "host"
    quant: str | None = "q4g32"  # None: the target's default (quantize.schemes.default_scheme: q4g32-a8 on ARM64)
    quant_rules: tuple[str, ...] = ()  # PATTERN=SCHEME, first match wins
    context_length: int = 2048
    prefill_chunk: int = 64
    debug_dump: Path | None = None
    progress: bool = True
    embed_model: bool | None = None  # android: bundle inside the APK (None: when it is at most 256 MiB)
    keystore: Any = None  # android: mcpm.export.android.apk.KeystoreOptions (None: the cached debug key)
    device: str = "cpu"  # cpu | gpu: gpu also writes kernels.cl, kernels.metal and plan.json's "gpu" launch records
    vision_dtype: str = "f16"  # minicpmv: f16 | f32 weights of the vision tower and resampler
    max_patches: int = 0  # minicpmv: most patches of one image slice (0: ceil(1.125 * (448 // 14)^2) = 1152)
    force: bool = False  # export into a non-empty folder mcpm did not write (its files are kept)
    kv_dtype: str | None = None  # f16 | f32 KV cache (None: f16, or f32 with --device gpu: the GPU kernels' cache)
    allow_unused_tensors: bool = False  # drop checkpoint tensors the family does not map (else an error)
    golden: bool = True  # record the reference's greedy ids and top-5 logits for the self-test (export/golden.py)


@dataclass
class ExportReport:
    phases: dict[str, float] = field(default_factory=dict)  # name -> seconds
    bundle_bytes: int = 0
    weight_bytes: int = 0
    weight_count: int = 0
    bundle_dir: Path | None = None
    android: Any = None  # mcpm.export.android.package.AndroidPackage for --target android
    ios: Any = None  # mcpm.export.ios.package.IosPackage for --target ios
    written: list[TensorEntry] = field(default_factory=list)  # weights.bin entries
    notices: list[str] = field(default_factory=list)  # shown after the summary table

    def rebase(self, staging: Path, final: Path) -> None:
        """Point every path from the staging folder to where the export now lies."""
        def moved(path: Path) -> Path:
            return final / path.relative_to(staging) if path.is_relative_to(staging) else path

        if self.bundle_dir is not None:
            self.bundle_dir = moved(self.bundle_dir)
        for name in ("android", "ios"):
            pkg = getattr(self, name)
            if pkg is not None:
                setattr(self, name, replace(pkg, **{f.name: moved(getattr(pkg, f.name)) for f in fields(pkg)
                                                    if isinstance(getattr(pkg, f.name), Path)}))

    def table(self) -> str:
        lines = [f"{'phase':<12}{'seconds':>10}"]
        lines += [f"{name:<12}{secs:>10.2f}" for name, secs in self.phases.items()]
        bpw = 8 * self.weight_bytes / max(self.weight_count, 1)
        lines.append(f"bundle {self.bundle_bytes / 2**20:.2f} MiB, weights {bpw:.3f} bits/weight")
        lines += [f"notice: {n}" for n in self.notices]
        if self.android is not None:
            where = "inside the APK" if self.android.embedded else "not in the APK: push it with push-model"
            lines.append(f"APK {self.android.apk_bytes / 2**20:.2f} MiB ({self.android.apk}), model "
                         f"'{self.android.model_name}' {where}")
        if self.ios is not None:
            lines.append(f"iOS: {self.ios.xcframework.name} (kernel variants {', '.join(self.ios.kernel_variants)}), "
                         f"Swift package {self.ios.package_dir}, app {self.ios.app_dir} with model "
                         f"'{self.ios.model_name}'")
        return "\n".join(lines)


def bundle_config(loaded: LoadedModel, recipe: Recipe, target: Target, opts: ExportOptions) -> dict[str, Any]:
    tok = loaded.tokenizer
    assert tok is not None
    tokenizer_file = "tokenizer.model" if tok.kind == "sentencepiece" else "tokenizer.json"
    return {
        "format_version": FORMAT_VERSION,
        "exporter_version": __version__,
        "family": loaded.family.model_type,
        "model_config": config_to_dict(loaded.config),
        "quantization": recipe.name,
        "context_length": opts.context_length,
        "prefill_chunk": opts.prefill_chunk,
        "chat_template": tok.template.to_json(),
        "bos_token_id": tok.bos_id,
        "stop_token_ids": list(tok.stop_ids),
        "tokenizer": {"kind": tok.kind, "file": tokenizer_file, "added_tokens": tok.added},
        "target": target.record(),
        **({"vision": vision_config(loaded)} if loaded.family.model_type == "minicpmv" else {}),
        "files": {},
    }


MAX_PIXELS = 4096 * 4096  # larger images are downscaled by the runtime first (docs/minicpmv.md)
VISION_DTYPES = {"f16": "float16", "f32": "float32"}
KV_DTYPES = {"f16": "float16", "f32": "float32"}
MOE_EXPERTS = "layers.*.mlp.experts.*"  # the MoE experts' weights (a recipe pattern)


def vision_config(loaded: LoadedModel) -> dict[str, Any]:
    """mcpm-config.json "vision" (docs/minicpmv.md): slicing settings and the image marker token ids."""
    from mcpm.export.models.minicpmv.preprocess import ImageTokens

    cfg, tok = loaded.config, loaded.tokenizer
    assert tok is not None
    ids = ImageTokens.from_tokenizer(tok)
    return {
        "max_slices": cfg.max_slice_nums,
        "scale_resolution": cfg.scale_resolution,
        "slice_mode": cfg.slice_mode,
        "patch": cfg.patch_size,
        "query_num": cfg.query_num,
        "max_pixels": MAX_PIXELS,
        "image_tokens": {"image_start": ids.image_start, "image_end": ids.image_end, "slice_start": ids.slice_start,
                         "slice_end": ids.slice_end, "unk": ids.unk, "newline": ids.newline},
    }


def run_export(opts: ExportOptions) -> ExportReport:
    from mcpm.export.compiler.spec import CompileSpec
    from mcpm.export.compiler.weights import check_supported

    report = ExportReport()
    target = get_target(opts.target)
    recipe = Recipe.parse(opts.quant or default_scheme(target.platform, opts.device), opts.quant_rules)
    root = opts.out_dir
    android = target.platform == "android"
    ios = target.platform == "ios"
    # android: OUT/bundle, OUT/lib/..., OUT/mcpm-demo.apk; ios: OUT/bundle, OUT/MCPM (package), OUT/App, project.yml.
    # Everything is written into a staging folder beside OUT and moved into place at the end (export/output_dir.py).
    output = OutputFolder(root, "android" if android else "ios" if ios else "bundle", opts.force)
    _check_debug_dump(opts.debug_dump)
    if opts.device not in ("cpu", "gpu"):
        raise McpmError(f"unknown device {opts.device!r}", "use --device cpu or --device gpu")
    if opts.vision_dtype not in VISION_DTYPES:
        raise McpmError(f"unknown vision weight dtype {opts.vision_dtype!r}", "use --vision-dtype f16 or f32")
    if opts.max_patches < 0:
        raise McpmError(f"--max-patches {opts.max_patches} must be positive", "give --max-patches N >= 1")
    if not opts.context_length > 0:
        raise McpmError(f"--context-length {opts.context_length} must be >= 1", "e.g. --context-length 2048")
    if not 0 < opts.prefill_chunk <= opts.context_length:
        raise McpmError(f"--prefill-chunk {opts.prefill_chunk} must be in 1..{opts.context_length} (the context "
                        "length)", "pass a smaller --prefill-chunk (default 64) or a longer --context-length")
    family, cfg = load_config(opts.model_dir)
    max_pos = getattr(getattr(cfg, "llm", cfg), "max_position_embeddings", None)
    if isinstance(max_pos, int) and opts.context_length > max_pos:
        raise McpmError(f"--context-length {opts.context_length} exceeds the model's max_position_embeddings "
                        f"({max_pos})", "choose a shorter context")
    if opts.quant is None and recipe.default.activations == "int8" and getattr(cfg, "num_experts", 0):
        # the target's a8 default: MoE experts keep float activations (moe_kernels), the rest is a8
        recipe = Recipe.parse(recipe.default.name, (*opts.quant_rules, f"{MOE_EXPERTS}=q4g32"))
    if family.model_type not in ("minicpm", "minicpmv"):
        raise McpmError(f"exporting {family.model_type} is not supported yet",
                        "export a minicpm model (1B/2B/MoE) or MiniCPM-V 2.0")
    vision = family.model_type == "minicpmv"
    if opts.device == "gpu":  # int8 activations (-a8): no GPU kernels
        a8 = [s.name for s in (recipe.default, *(r.scheme for r in recipe.rules)) if s.activations == "int8"]
        if a8:
            from mcpm.export.compiler.gpu_kernels import a8_on_gpu

            raise a8_on_gpu(a8[0])
    kv_dtype = KV_DTYPES.get(opts.kv_dtype or ("f32" if opts.device == "gpu" else "f16"))
    if kv_dtype is None:
        raise McpmError(f"unknown KV cache dtype {opts.kv_dtype!r}", "use --kv-dtype f16 or f32")
    if opts.device == "gpu" and kv_dtype != "float32":
        raise McpmError("--device gpu keeps a float32 KV cache (the GPU kernels read float32 rows)",
                        "drop --kv-dtype f16, or export with --device cpu")
    _check_context_memory(cfg, opts.context_length, kv_dtype, target.platform)
    if vision and opts.device == "gpu":
        raise McpmError("--device gpu does not support MiniCPM-V bundles (the vision entries have no GPU kernels)",
                        "export it with --device cpu")
    with _Phase("load", report, opts.progress):  # in the checkpoint's own dtype: a 2B model stays 5 GB, not 11
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.extra.get("torch_dtype"), torch.float32)
        loaded = load_model(opts.model_dir, dtype=dtype, progress=False, allow_unused=opts.allow_unused_tensors)
    if opts.context_length > loaded.config.max_position_embeddings:
        raise McpmError(f"--context-length {opts.context_length} exceeds the model's max_position_embeddings "
                        f"({loaded.config.max_position_embeddings})", "choose a shorter context")
    check_dense_context(loaded.config, opts.context_length)
    lm = loaded.model.llm if vision else loaded.model
    recipe.check_rules_match([name for name, _ in lm.named_parameters()])
    if vision:
        vision_config(loaded)  # the tokenizer has the image markers (else a one-line TokenizerError now)
    spec = CompileSpec(max_ctx=opts.context_length, chunk=opts.prefill_chunk, recipe=recipe,
                       num_experts=loaded.config.num_experts, vision_dtype=VISION_DTYPES[opts.vision_dtype],
                       max_patches=opts.max_patches, kv_dtype=kv_dtype,
                       q4_rows4=rows4_target(target) and opts.device != "gpu")
    check_supported(loaded.config, spec)
    with output:
        _write_output(output.staging, loaded, recipe, target, spec, opts, report)
        output.commit()
    report.rebase(output.staging, output.final)
    report.weight_bytes = sum(e.nbytes for e in report.written
                              if not e.name.startswith(("rope_", "vision.", "resampler.")))
    report.weight_count = sum(p.numel() for p in lm.parameters())
    return report


def check_dense_context(config: Any, context_length: int) -> None:
    """MiniCPM4-8B's InfLLM v2 (config.json ``sparse_config``) attends sparsely only past ``dense_len`` tokens; below
    that the official model computes dense attention, which is what mcpm exports."""
    sparse = config.extra.get("sparse_config")
    if not isinstance(sparse, dict):
        return
    dense_len = sparse.get("dense_len", 8192)
    if not isinstance(dense_len, int) or isinstance(dense_len, bool) or dense_len < 1:
        raise McpmError(f"config.json sparse_config.dense_len ({dense_len!r}) is not a positive integer",
                        "fix config.json or take it from the original checkpoint")
    if context_length > dense_len:
        raise McpmError(f"--context-length {context_length} exceeds sparse_config.dense_len ({dense_len}): past it "
                        "the model uses InfLLM v2 sparse attention, which mcpm does not export",
                        f"choose --context-length {dense_len} or less")


def rows4_target(target: Target) -> bool:
    """Whether int4-a8 weights go in the rows4 order (layout.uses_rows4) for this target: Android and Linux ARM64
    CPU exports. Not iOS: its package also builds x86_64 simulator kernels from the same bundle, whose AVX2 tiles
    read the row-major order."""
    return target.platform in ("android", "linux") and target.triple.startswith(("aarch64", "arm64"))


def _write_output(root: Path, loaded: LoadedModel, recipe: Recipe, target: Target, spec: CompileSpec,
                  opts: ExportOptions, report: ExportReport) -> None:
    """Compile, quantize and bundle into ``root`` (the staging folder), then package for Android/iOS."""
    from mcpm.export.compiler.layout import bundle_weight_params
    from mcpm.export.compiler.lower import export_plan
    from mcpm.export.compiler.weights import iter_weights

    def phase(name: str):
        return _Phase(name, report, opts.progress)

    android, ios = target.platform == "android", target.platform == "ios"
    out = root / "bundle" if android or ios else root
    out.mkdir(exist_ok=True)
    with phase("compile"):  # define -> legalize -> fuse -> lower -> memory plan -> extract -> kernels.o
        exported = export_plan(loaded.config, spec, out, target.tvm_target, opts.debug_dump,
                               variants=list(target.variants) or None)
        gpu_files = _export_gpu(exported, out) if opts.device == "gpu" else []
    with phase("weights"):  # quantize and write one tensor at a time
        params = bundle_weight_params(loaded.config, spec)
        written = write_weights(out / "weights.bin", ((p.name, a) for p, a in iter_weights(loaded.model,
                                loaded.config, spec)), len(params))
    golden = _golden(loaded, recipe, spec, opts, report)
    with phase("bundle"):
        config = bundle_config(loaded, recipe, target, opts)
        if golden is not None:
            config["golden"] = golden
        shutil.copy(loaded.model_dir / config["tokenizer"]["file"], out / config["tokenizer"]["file"])
        files = ["plan.json", "weights.bin", config["tokenizer"]["file"], *exported.plan.object_files(), *gpu_files]
        config["files"] = {f: {"bytes": (out / f).stat().st_size, "sha256": sha256_of(out / f)} for f in files}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    report.bundle_dir = out
    report.bundle_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if android:
        from mcpm.export.android.package import model_name_for, package_android

        with phase("android"):  # libmcpm.so (runtime + kernels + JNI), then the signed APK
            report.android = package_android(out, root, model_name_for(opts.model_dir), opts.embed_model,
                                             opts.keystore)
    if ios:
        from mcpm.export.android.package import model_name_for
        from mcpm.export.ios.package import package_ios

        with phase("ios"):  # MCPMKernels.xcframework (device + simulator), Swift package, app wired to the bundle
            report.ios = package_ios(out, root, model_name_for(opts.model_dir), device=opts.device)
    report.written = written


def _golden(loaded: LoadedModel, recipe: Recipe, spec: CompileSpec, opts: ExportOptions,
            report: ExportReport) -> dict[str, Any] | None:
    """mcpm-config.json "golden" (export/golden.py), or None (--no-golden, or a model too large for the reference:
    then a notice). Turns the loaded model into its own reference: call it when the weights are written."""
    from mcpm.export.compiler.layout import vision_max_patches
    from mcpm.export.golden import golden_results, image_golden_results, reference_too_large

    if not opts.golden:
        return None
    vision = loaded.family.model_type == "minicpmv"
    lm = loaded.model.llm if vision else loaded.model
    too_large = reference_too_large(lm)
    if too_large:
        report.notices.append(f"no golden results in the bundle ({too_large}): `mcpm selftest` and the apps' "
                              "self-test cannot check it; export on a machine with more memory to add them")
        return None
    # MiniCPM-V: the same check through a generated image (slicing, vision kernels, placeholders), memory allowing
    image_too_large = reference_too_large(lm, (loaded.model.vision, loaded.model.resampler)) if vision else ""
    with _Phase("golden", report, opts.progress):  # the reference's greedy ids and top-5 logits for the self-test
        golden = golden_results(lm, loaded.tokenizer, recipe, spec.kv_dtype, opts.context_length)
        if vision and image_too_large:
            report.notices.append(f"no golden image in the bundle ({image_too_large}): the self-test checks text "
                                  "only; export on a machine with more memory to add it")
        elif vision:
            image = image_golden_results(loaded.model, loaded.tokenizer, spec.vision_dtype,
                                         vision_max_patches(loaded.config, spec),
                                         opts.context_length, golden["tolerance"])
            if image is None:
                report.notices.append("no golden image in the bundle (the context or --max-patches holds no image "
                                      "overview): the self-test checks text only")
            else:
                golden["image"] = image
        return golden


PHONE_MEMORY = 24 * 2**30  # more than any phone or ARM board a bundle for android/ios/linux-arm64 runs on


def _host_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _check_context_memory(cfg: Any, context: int, kv_dtype: str, platform: str) -> None:
    """Refuse a context whose KV cache (and RoPE tables, which the export itself builds) cannot fit: checked
    before any weight is loaded (a 16M context once grew the export to 10 GB before failing)."""
    layers, kv_heads = int(cfg.num_hidden_layers), int(getattr(cfg, "num_kv_heads", cfg.num_attention_heads))
    head_dim = int(getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads))
    kv = 2 * layers * context * kv_heads * head_dim * (2 if kv_dtype == "float16" else 4)  # K and V caches
    rope = 2 * context * head_dim * 4  # cos and sin tables [context, head_dim] float32
    host = _host_memory()
    budget = host if platform == "host" else PHONE_MEMORY
    where = "this machine's" if platform == "host" else "a phone's (at most"
    if host and (kv + rope > budget or rope > host // 2):
        gib = 2**30
        raise McpmError(f"--context-length {context} needs {kv / gib:.1f} GiB of KV cache and {rope / gib:.1f} GiB "
                        f"of RoPE tables, more than {where} {budget / gib:.0f} GiB of memory"
                        f"{')' if platform != 'host' else ''}", "choose a shorter --context-length")


def _check_debug_dump(path: Path | None) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise McpmError(f"--debug-dump {path} is a file, not a folder", "give --debug-dump a folder (it is created)")


def _export_gpu(exported: Exported, out: Path) -> list[str]:
    """--device gpu: GPU kernels of the same plan (docs/gpu-plan.md); adds the "gpu" section to plan.json."""
    from mcpm.export.compiler.gpu import export_gpu

    section = export_gpu(exported.lowered, exported.plan, out)
    exported.plan_path.write_text(json.dumps({**exported.plan.to_dict(), "gpu": section}))
    return [section["opencl_source"], section["metal_source"]]


class _Phase:
    """Times a phase and shows it as a one-step progress bar."""

    def __init__(self, name: str, report: ExportReport, progress: bool) -> None:
        self.name, self.report = name, report
        self.bar = tqdm(total=1, desc=f"{name:<8}", disable=not progress, leave=True,
                        bar_format="{desc} {bar:20} {elapsed}")

    def __enter__(self) -> _Phase:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.report.phases[self.name] = time.perf_counter() - self.t0
        self.bar.update(1)
        self.bar.close()
