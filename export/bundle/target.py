"""Named export targets and the host CPU's features (a host bundle records them and refuses other CPUs)."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError

# x86 features the host kernels may use; a bundle records the ones its machine had
X86_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


@dataclass(frozen=True)
class Target:
    name: str
    tvm_target: dict[str, Any]
    triple: str
    features: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "triple": self.triple, "tvm_target": self.tvm_target,
                "features": list(self.features)}


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


TARGET_NAMES = ("host", "linux-arm64", "android", "ios")


def get_target(name: str) -> Target:
    if name == "host":
        return host_target()
    if name in TARGET_NAMES:
        raise McpmError(f"target {name!r} is not available yet (only 'host' is)", "use --target host for now")
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
