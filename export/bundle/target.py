"""Named export targets (TVM target, triple, kernel variants) and the host CPU's features.

A host bundle records the CPU features its kernels were built for and is refused on a machine that lacks them.
ARM64 targets compile three kernel sets and the C runtime picks one at load time from the CPU's features
(getauxval HWCAP): i8mm, then dotprod, then the plain NEON fallback that every ARMv8-A CPU runs.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError
from mcpm.export.compiler.plan import VariantTarget

# x86 features the host kernels may use; a bundle records the ones its machine had
X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")

# (name, LLVM attributes, CPU features the runtime must find) in preference order; the last is the fallback
ARM64_KERNEL_SETS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("i8mm", ("+neon", "+v8.2a", "+dotprod", "+i8mm"), ("dotprod", "i8mm")),
    ("dotprod", ("+neon", "+v8.2a", "+dotprod"), ("dotprod",)),
    ("neon", ("+neon",), ()),
)


@dataclass(frozen=True)
class Target:
    name: str
    tvm_target: dict[str, Any]  # the fallback kernel set's
    triple: str
    features: tuple[str, ...] = ()
    variants: tuple[VariantTarget, ...] = ()  # preference order; empty = one kernel set (tvm_target)
    platform: str = "host"  # host | linux | android | ios: how the runtime library is built

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "triple": self.triple, "tvm_target": self.tvm_target,
                "features": list(self.features), "platform": self.platform,
                "kernel_variants": [v.name for v in self.variants]}


def cpu_flags() -> set[str]:
    """Feature flags of this machine's CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return set()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def host_target() -> Target:
    from tvm.target import codegen

    mcpu = codegen.llvm_get_system_cpu()
    flags = cpu_flags()
    features = tuple(f for f in X86_FEATURES if f in flags)
    return Target("host", {"kind": "llvm", "mcpu": mcpu}, f"{platform.machine()}-linux-gnu", features)


def arm64_target(name: str, triple: str, plat: str) -> Target:
    variants = tuple(VariantTarget(v, {"kind": "llvm", "mtriple": triple, "mattr": list(mattr)}, req)
                     for v, mattr, req in ARM64_KERNEL_SETS)
    return Target(name, variants[-1].tvm_target, triple, (), variants, plat)


# iOS (Mach-O; the runtime reads the CPU's features with sysctlbyname("hw.optional.arm.FEAT_*")). iOS 14 still
# runs on A9-A12, which lack dotprod: the plain NEON set stays the fallback; A13+ take dotprod, A15+ i8mm.
IOS_TRIPLE = "arm64-apple-ios14.0"
# The simulator slice's kernels (compiled by mcpm.export.ios.package from the same plan): arm64 Macs get every
# kernel set (their CPUs report FEAT_DotProd/FEAT_I8MM through the same sysctl), x86_64 Macs the fallback only.
IOS_SIMULATOR_TRIPLES = {"arm64": "arm64-apple-ios14.0-simulator", "x86_64": "x86_64-apple-ios14.0-simulator"}


def ios_simulator_variants(arch: str) -> tuple[VariantTarget, ...]:
    """Kernel sets of the iOS simulator slice for arch ("arm64": all of ARM64_KERNEL_SETS; "x86_64": one
    fallback set, which the runtime's picker chooses there since no ARM feature is found)."""
    triple = IOS_SIMULATOR_TRIPLES[arch]
    if arch == "x86_64":
        return (VariantTarget("neon", {"kind": "llvm", "mtriple": triple}, ()),)
    return arm64_target(f"ios-simulator-{arch}", triple, "ios").variants


# --target names; android-arm64 is also accepted for android
TARGET_NAMES = ("host", "linux-arm64", "android", "ios")
ALIASES = {"android-arm64": "android", "ios-arm64": "ios"}


def get_target(name: str) -> Target:
    name = ALIASES.get(name, name)
    if name == "host":
        return host_target()
    if name == "linux-arm64":
        return arm64_target(name, "aarch64-linux-gnu", "linux")
    if name == "android":
        return arm64_target(name, "aarch64-linux-android", "android")
    if name == "ios":
        return arm64_target(name, IOS_TRIPLE, "ios")
    raise McpmError(f"unknown target {name!r}", f"use one of {', '.join(TARGET_NAMES)}")


def check_runs_here(record: dict[str, Any]) -> None:
    """Refuse a host bundle whose CPU features this machine lacks."""
    if record.get("name") != "host":
        raise McpmError(f"this bundle was built for {record.get('name')!r}, not for this host",
                        "export it again with --target host")
    arch = str(record.get("triple", "")).split("-")[0]
    if arch and arch != platform.machine():
        raise McpmError(f"this bundle was built for {arch}, this machine is {platform.machine()}",
                        "export it again on this machine")
    missing = sorted(set(record.get("features", [])) - cpu_flags())
    if missing:
        raise McpmError(f"this bundle's kernels use CPU features this machine lacks: {', '.join(missing)}",
                        "export it again on (or for) this machine")
