"""ARM cost model: llvm-mca cycles of the hot loops of mcpm's ARM int4 x int8 kernels and of llama.cpp's, per
32 weights x 1 token (one block of one row for one token), side by side (``make bench-arm``).

No ARM hardware is needed (shared notes: measuring-arm.md). For each kernel:

- mcpm: ``linear_q4(K, N, 32, act="int8", rows4=True)`` (the weight order of Android / Linux ARM64 exports,
  layout.to_rows4) built and compiled under each kernel set's target (neon, dotprod, i8mm), linked into
  tests/native/kernel_run.c and run once under qemu-user with ``-d exec,nochain`` (1 token for decode,
  PREFILL_TOKENS for prefill); the hot loop is the innermost backward-branch loop that multiplies around the most
  executed translation block. The trace also gives the instructions the whole call executes per unit
  (weight preparation and activation quantization included: llama.cpp repacks its weights once at load).
- llama.cpp 0.3.36 (the ``llama-cpp-python`` source distribution, compiled by the same clang with llama.cpp's
  Android flags ``-march=armv8.6-a+dotprod+fp16+i8mm``, or ``-march=armv8-a`` for its NEON-only path):
  ``ggml_vec_dot_q4_0_q8_0`` (decode, non-repacked), ``ggml_gemv_q4_0_4x4_q8_0`` / ``ggml_gemm_q4_0_4x4_q8_0``
  (dotprod, repacked) and ``ggml_gemv/gemm_q4_0_4x8_q8_0`` (i8mm, repacked); the hot loop is the function's loop
  with the most multiply-accumulates.

Work per loop iteration is counted from its multiply-accumulate instructions (sdot 16, smmla 32, smull/smlal per
destination lane, fmla per lane when the loop has no integer ones), so one formula serves every kernel: cycles per
iteration (llvm-mca, -iterations=200) x 32 / MACs per iteration. Core models: LLVM 16's scheduling models
(``apt-get install llvm-16``; LLVM 14's llvm-mca otherwise): cortex-a53 and cortex-a57 (ARMv8.0 little and big:
the phones where only the neon set runs; LLVM models A72/A73 with A57), cortex-a55 (little, in-order),
neoverse-n2 (the Cortex-A710 / X2 generation of big cores; LLVM uses it for cortex-a710) and exynos-m5 (a big
out-of-order core) are real models; cortex-a76/x1 fall back to the Cortex-A57 model and apple-* to Cyclone
(A7) - printed, marked.
Memory is not modelled (every load hits L1).

    python -m benchmarks.arm_cost [--json] [--k 2304 --n 2304]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "native" / "kernel_run.c"
LLAMA = "llama-cpp-python==0.3.36"
LLAMA_MARCH = "armv8.6-a+dotprod+fp16+i8mm"
PREFILL_TOKENS = 64  # the default prefill chunk
MATTR = {"neon": ["+neon"], "dotprod": ["+neon", "+v8.2a", "+dotprod"],
         "i8mm": ["+neon", "+v8.2a", "+dotprod", "+i8mm"]}
CORES = {  # llvm-mca -mcpu -> what its model is
    "cortex-a53": "real (ARMv8.0 little, in-order: where only the neon set runs)",
    "cortex-a57": "real (ARMv8.0 big; LLVM's model for A72/A73 too: neon-set phones)",
    "cortex-a55": "real (little, in-order)",
    "neoverse-n2": "real (big: Cortex-A710 / X2 generation)",
    "exynos-m5": "real (big, out-of-order)",
    "cortex-a76": "fallback: Cortex-A57 model",
    "apple-a14": "fallback: Cyclone (A7) model",
}
MAC_SIMPLE = {"sdot": 16, "udot": 16, "usdot": 16, "smmla": 32, "ummla": 32, "usmmla": 32}
LANES = {"16b": 16, "8h": 8, "4s": 4, "2d": 2, "8b": 8, "4h": 4, "2s": 2}
INT_WIDE = ("smull", "smull2", "smlal", "smlal2", "umull", "umull2", "umlal", "umlal2", "mla", "mul")


def cache_dir() -> Path:
    d = Path.home() / ".cache" / "mcpm" / "arm-cost"
    d.mkdir(parents=True, exist_ok=True)
    return d


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path:
            return path
    raise SystemExit(f"error: none of {', '.join(names)} found (make setup; apt-get install llvm-16 for llvm-mca)")


MCA = ("/usr/lib/llvm-16/bin/llvm-mca", "llvm-mca-16", "llvm-mca")
OBJDUMP = ("/usr/lib/llvm-16/bin/llvm-objdump", "llvm-objdump-16", "llvm-objdump")


# ---------------------------------------------------------------- disassembly, loops, work per iteration

def disassemble(obj: Path) -> dict[str, list[tuple[int, str, str]]]:
    """function -> [(address, mnemonic, operands)]."""
    out = subprocess.run([tool(*OBJDUMP), "-d", "--no-show-raw-insn", "--mattr=+dotprod,+i8mm,+fullfp16", str(obj)],
                         capture_output=True, text=True, check=True).stdout
    funcs: dict[str, list[tuple[int, str, str]]] = {}
    cur: list[tuple[int, str, str]] | None = None
    for line in out.splitlines():
        if head := re.match(r"^([0-9a-f]+) <(.+)>:$", line):
            cur = funcs.setdefault(head.group(2), [])
        elif cur is not None and (m := re.match(r"^\s+([0-9a-f]+):\s+(\S+)\s*(.*)$", line)):
            cur.append((int(m.group(1), 16), m.group(2), m.group(3).split("//")[0].strip()))
    return funcs


def branch_target(mnemonic: str, operands: str) -> int | None:
    if mnemonic.startswith(("b.", "cbz", "cbnz", "tbz", "tbnz")) or mnemonic == "b":
        m = re.search(r"(?:0x)?([0-9a-f]+)\s*<", operands)
        if m:
            return int(m.group(1), 16)
    return None


def loops(code: list[tuple[int, str, str]]) -> list[list[tuple[int, str, str]]]:
    """Every backward-branch loop [target .. branch] of a function."""
    found = []
    for i, (addr, mn, ops) in enumerate(code):
        t = branch_target(mn, ops)
        if t is not None and t <= addr:
            start = next((j for j, c in enumerate(code) if c[0] == t), None)
            if start is not None:
                found.append(code[start:i + 1])
    return found


def macs(body: list[tuple[int, str, str]]) -> int:
    """Multiply-accumulates of one pass through body (integer ones; float fmla only when there are none)."""
    total_int = total_fp = 0
    for _, mn, ops in body:
        if mn in MAC_SIMPLE:
            total_int += MAC_SIMPLE[mn]
        elif mn in INT_WIDE or mn in ("fmla",):
            arr = re.search(r"v\d+\.(\d+[bhsd])", ops)
            lanes = LANES.get(arr.group(1), 0) if arr else 1
            if mn == "fmla":
                total_fp += lanes
            else:
                total_int += lanes
    return total_int or total_fp


def mca_cycles(body: list[tuple[int, str, str]], cpu: str) -> float:
    """llvm-mca cycles per iteration of body (the closing branch dropped; operands as disassembled)."""
    asm = "\n".join(f"{mn} {ops}" for _, mn, ops in body if branch_target(mn, ops) is None) + "\n"
    res = subprocess.run([tool(*MCA), "-mtriple=aarch64", f"-mcpu={cpu}", "-mattr=+dotprod,+i8mm,+fullfp16",
                          "-iterations=200"], input=asm, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"error: llvm-mca failed on {cpu}: {res.stderr.strip().splitlines()[-1]}")
    total = int(re.search(r"Total Cycles:\s+(\d+)", res.stdout).group(1))  # type: ignore[union-attr]
    return total / 200


def describe(body: list[tuple[int, str, str]], cpus: list[str]) -> dict[str, Any]:
    work = macs(body)
    units = work / 32  # 32 weights x 1 token per unit
    hist = Counter(mn for _, mn, _ in body)
    return {"instructions": len(body), "macs": work, "units": units,
            "instructions_per_unit": round(len(body) / units, 2) if units else None,
            "top": dict(hist.most_common(6)),
            "cycles_per_unit": {c: round(mca_cycles(body, c) / units, 3) for c in cpus} if units else {}}


# ---------------------------------------------------------------- mcpm: build, trace under qemu, hot loop

def build_mcpm(kset: str, k: int, n: int, work: Path, act: str = "int8") -> tuple[Path, Path]:
    import tvm

    from mcpm.export.compiler import quant_kernels as qk
    from mcpm.runtime.build import C_DIR
    from mcpm.runtime.cross import CROSS_CC

    target = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": MATTR[kset]}
    with tvm.target.Target(target):  # a8: the rows4 weight order of Android / Linux ARM64 exports
        func = qk.linear_q4(k, n, 32, False, act=act, rows4=act == "int8")
    obj = work / f"mcpm-{kset}-{act}-{k}x{n}.o"
    tvm.compile(tvm.IRModule({"f": func.with_attr("global_symbol", "f")}), target=tvm.target.Target(target)) \
        .mod.write_to_file(str(obj))
    exe = obj.with_suffix("")
    subprocess.run([CROSS_CC, "-std=c11", "-O2", "-no-pie", "-I", str(C_DIR), "-o", str(exe), str(HARNESS), str(obj),
                    "-lm"], check=True, capture_output=True)
    return obj, exe


def trace_under_qemu(exe: Path, k: int, n: int, tokens: int, work: Path) -> tuple[list[tuple[int, str, str]], float]:
    """One kernel call of ``tokens`` tokens under qemu: the hot loop (the innermost loop around the most executed
    translation block among the loops that multiply) and the instructions executed by the whole call per unit
    (weight preparation, activation quantization and loop overheads included)."""
    from mcpm.export.compiler.layout import to_rows4
    from mcpm.quantize.packing import quantize
    from mcpm.quantize.schemes import get_scheme
    from mcpm.runtime.cross import QEMU, SYSROOT

    rng = np.random.default_rng(0)
    packed = quantize(rng.standard_normal((n, k)).astype(np.float32), get_scheme("q4g32-a8"))
    to_rows4(packed.tensors["qweight"]).tofile(work / "qw.bin")  # the order a8 kernels read (float ones: same cost)
    packed.tensors["scales"].tofile(work / "sc.bin")
    rng.standard_normal((tokens, k)).astype(np.float32).tofile(work / "x.bin")
    log = work / "trace.log"
    subprocess.run([QEMU, "-L", str(SYSROOT), "-d", "in_asm,exec,nochain", "-D", str(log), str(exe),
                    f"f32:{tokens},{k}:{work / 'x.bin'}", f"u32:{n},{k // 8}:{work / 'qw.bin'}",
                    f"f16:{n},{k // 32}:{work / 'sc.bin'}", f"out:f32:{tokens},{n}:{work / 'y.bin'}"],
                   check=True, capture_output=True)
    counts: Counter[int] = Counter()
    sizes: dict[int, int] = {}
    block: int | None = None
    with log.open() as f:
        for line in f:
            if m := re.search(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/", line):
                counts[int(m.group(1), 16)] += 1
                block = None
            elif m := re.match(r"^0x([0-9a-f]+):\s", line):
                addr = int(m.group(1), 16)
                if block is None:
                    block = addr
                    sizes[block] = 0
                sizes[block] += 1
            elif not line.strip():
                block = None
    funcs = disassemble(exe)
    kernel = {name: body for name, body in funcs.items() if name in disassemble(exe.with_suffix(".o"))}
    spans = [(body[0][0], body[-1][0]) for body in kernel.values() if body]
    executed = sum(c * sizes.get(a, 0) for a, c in counts.items() if any(lo <= a <= hi for lo, hi in spans))
    multiplying = [lp for body in kernel.values() for lp in loops(body) if macs(lp) > 0]
    for addr, _ in counts.most_common():
        around = [lp for lp in multiplying if lp[0][0] <= addr <= lp[-1][0]]
        if around:
            return min(around, key=len), executed / (tokens * n * (k // 32))
    raise SystemExit(f"error: no executed loop of {exe.name} multiplies")


# ---------------------------------------------------------------- llama.cpp: sources, build, hot loops

def llama_sources() -> Path:
    root = cache_dir() / "llama"
    ggml = next(root.glob("*/vendor/llama.cpp/ggml"), None) if root.is_dir() else None
    if ggml is None:
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["python3", "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA, "-d",
                        str(root), "-q"], check=True)
        sdist = next(root.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/ggml/" in m.name]
            tar.extractall(root, members=members, filter="data")
        ggml = next(root.glob("*/vendor/llama.cpp/ggml"))
    return ggml


def build_llama(work: Path) -> dict[str, Path]:
    ggml = llama_sources()
    inc = ["-I", str(ggml / "include"), "-I", str(ggml / "src"), "-I", str(ggml / "src" / "ggml-cpu")]
    arm = ggml / "src" / "ggml-cpu" / "arch" / "arm"
    objs = {"quants": work / "llama-quants.o", "quants-neon": work / "llama-quants-neon.o",
            "repack": work / "llama-repack.o"}
    clang, clangxx = tool("clang"), tool("clang++")
    base = ["--target=aarch64-linux-gnu", "-O3"]
    subprocess.run([clang, *base, f"-march={LLAMA_MARCH}", *inc, "-c", str(arm / "quants.c"), "-o",
                    str(objs["quants"])], check=True, capture_output=True)
    subprocess.run([clang, *base, "-march=armv8-a", *inc, "-c", str(arm / "quants.c"), "-o",
                    str(objs["quants-neon"])], check=True, capture_output=True)
    cxx_config = sorted(Path("/usr/include/x86_64-linux-gnu/c++").glob("*"))  # the cross libstdc++ lacks it
    subprocess.run([clangxx, *base, f"-march={LLAMA_MARCH}", "-std=c++17",
                    *([f"-isystem{cxx_config[-1]}"] if cxx_config else []), *inc, "-c", str(arm / "repack.cpp"),
                    "-o", str(objs["repack"])], check=True, capture_output=True)
    return objs


def llama_hot_loop(obj: Path, function: str) -> list[tuple[int, str, str]]:
    body = disassemble(obj).get(function)
    if not body:
        raise SystemExit(f"error: {function} not found in {obj.name}")
    return max(loops(body), key=macs)


# ---------------------------------------------------------------- the table

PAIRS = [  # (phase, mcpm kernel set, llama.cpp object, function)
    ("decode", "neon", "quants-neon", "ggml_vec_dot_q4_0_q8_0"),
    ("decode", "dotprod", "quants", "ggml_vec_dot_q4_0_q8_0"),
    ("decode", "dotprod", "repack", "ggml_gemv_q4_0_4x4_q8_0"),
    ("decode", "i8mm", "repack", "ggml_gemv_q4_0_4x8_q8_0"),
    ("prefill", "neon", "quants-neon", "ggml_vec_dot_q4_0_q8_0"),
    ("prefill", "dotprod", "repack", "ggml_gemm_q4_0_4x4_q8_0"),
    ("prefill", "i8mm", "repack", "ggml_gemm_q4_0_4x8_q8_0"),
]


def run(k: int, n: int, cpus: list[str]) -> dict[str, Any]:
    work = cache_dir() / "work"
    work.mkdir(exist_ok=True)
    llama = build_llama(work)
    mcpm: dict[tuple[str, str], dict[str, Any]] = {}
    for kset in ("neon", "dotprod", "i8mm"):
        _, exe = build_mcpm(kset, k, n, work)
        for phase, tokens in (("decode", 1), ("prefill", PREFILL_TOKENS)):
            loop, executed = trace_under_qemu(exe, k, n, tokens, work)
            mcpm[(phase, kset)] = {**describe(loop, cpus), "executed_instructions_per_unit": round(executed, 2)}
    schemes = {}  # q4g32 (float activations) vs q4g32-a8 on each set: why a8 is the ARM default
    for kset in ("neon", "dotprod", "i8mm"):
        _, exe = build_mcpm(kset, k, n, work, act="float")
        for phase, tokens in (("decode", 1), ("prefill", PREFILL_TOKENS)):
            loop, executed = trace_under_qemu(exe, k, n, tokens, work)
            plain = describe(loop, cpus)
            a8 = mcpm[(phase, kset)]
            schemes[f"{phase} {kset}"] = {c: [plain["cycles_per_unit"][c], a8["cycles_per_unit"][c]] for c in cpus}
    rows = []
    for phase, kset, obj, func in PAIRS:
        peer = describe(llama_hot_loop(llama[obj], func), cpus)
        mine = mcpm[(phase, kset)]
        ratio = {c: round(mine["cycles_per_unit"][c] / peer["cycles_per_unit"][c], 3) for c in cpus}
        rows.append({"phase": phase, "mcpm_set": kset, "llama": f"{func} ({obj})", "mcpm": mine, "llama_cpp": peer,
                     "ratio": ratio})
    return {"shape": {"k": k, "n": n, "prefill_tokens": PREFILL_TOKENS}, "cores": {c: CORES.get(c, "") for c in cpus},
            "mca": tool(*MCA), "unit": "32 weights x 1 token", "rows": rows, "q4g32_vs_a8": schemes}


def format_table(res: dict[str, Any]) -> str:
    cpus = list(res["cores"])
    head = f"{'phase':<8}{'mcpm set':<9}{'llama.cpp kernel':<44}" + "".join(f"{c:>26}" for c in cpus)
    lines = [f"cycles per {res['unit']} (mcpm / llama.cpp = ratio), llvm-mca {res['mca']}, K={res['shape']['k']} "
             f"N={res['shape']['n']}", head]
    for r in res["rows"]:
        cells = "".join(f"{r['mcpm']['cycles_per_unit'][c]:>8.2f} /{r['llama_cpp']['cycles_per_unit'][c]:>6.2f} = "
                        f"{r['ratio'][c]:<5.2f}   " for c in cpus)
        lines.append(f"{r['phase']:<8}{r['mcpm_set']:<9}{r['llama']:<44}{cells}")
    lines.append("model-free, instructions per unit: hot loop mcpm vs llama.cpp (mcpm's whole call, executed)")
    for r in res["rows"]:
        mine, peer = r["mcpm"], r["llama_cpp"]
        lines.append(f"  {r['phase']:<8}{r['mcpm_set']:<9}{mine['instructions_per_unit']:>6} vs "
                     f"{peer['instructions_per_unit']:<6} ({mine['executed_instructions_per_unit']})  {r['llama']}")
    lines.append("mcpm q4g32 (float activations) vs q4g32-a8, cycles per unit: " + ", ".join(cpus))
    for name, per in res["q4g32_vs_a8"].items():
        lines.append(f"  {name:<16}" + "".join(f"{per[c][0]:>8.2f} -> {per[c][1]:<6.2f}" for c in cpus))
    lines += [f"  {c}: {what}" for c, what in res["cores"].items()]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=2304, help="inputs (MiniCPM-2B hidden size by default)")
    ap.add_argument("--n", type=int, default=256, help="outputs (rows; the loops do not depend on it)")
    ap.add_argument("--cpus", default=",".join(CORES), help="llvm-mca -mcpu models, comma-separated")
    ap.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = ap.parse_args()
    res = run(args.k, args.n, args.cpus.split(","))
    print(format_table(res))
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
