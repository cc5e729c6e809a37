"""ARM64 kernels under qemu-user: bundles exported with --target linux-arm64, the C runtime cross-built with
aarch64-linux-gnu-gcc (mcpm.runtime.cross), run through mcpm_run (runtime_bindings/c/tools) against the host.

qemu's default CPU has dotprod and i8mm (the runtime must pick the i8mm kernels), cortex-a76 has dotprod only,
cortex-a53 neither (the plain NEON fallback). Emulation is 6-8x slower than native: small models, few tokens.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mcpm.runtime.cross import missing_cross_tools
from tests.conftest import tiny_minicpm, write_tiny

_missing = missing_cross_tools() + ([] if shutil.which("gcc") else ["gcc"])
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"ARM64 cross tools missing: {', '.join(_missing)} "
                                                       "(make setup installs them)")

PROMPT = "The Congress of the United States"
N_TEXT = 24
# qemu CPU model -> the kernel variant the runtime must pick on it (None = qemu's default CPU)
CPUS: dict[str | None, str] = {None: "i8mm", "cortex-a76": "dotprod", "cortex-a53": "neon"}
# tiny f32 model: chunk 4, an odd prompt of 11 tokens (chunks 4 + 4 + 3)
TINY_CTX, TINY_CHUNK, TINY_PROMPT = 32, 4, 11
LOGITS_TOL = 1e-5  # max |a - b| / max |reference logit| (observed: 3e-7)


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1])


def run_arm(exe: Path, args: list[str], cpu: str | None = None) -> dict[str, Any]:
    from mcpm.runtime.cross import run_qemu

    res = run_qemu(exe, args, cpu=cpu, timeout=300)
    assert res.returncode == 0, f"mcpm_run under qemu (cpu {cpu or 'default'}) failed: {res.stderr}"
    return last_json(res.stdout)


def run_host(exe: Path, args: list[str]) -> dict[str, Any]:
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"host mcpm_run failed: {res.stderr}"
    return last_json(res.stdout)


def export(model_dir: Path, out: Path, target: str, quant: str, ctx: int, chunk: int) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export

    run_export(ExportOptions(model_dir, out, target, quant, (), ctx, chunk, progress=False))
    return out


def build(bundle: Path, out: Path, arm: bool) -> Path:
    """mcpm_run (+ libmcpm.so beside it) for the bundle's kernel objects."""
    from mcpm.export.compiler.plan import kernel_object_files
    from mcpm.runtime.cross import build_host_tool, build_linux_arm64

    return (build_linux_arm64 if arm else build_host_tool)(kernel_object_files(bundle), out)[1]


@pytest.fixture(scope="module")
def default_arm(tmp_path_factory: pytest.TempPathFactory, default_arm64_bundle: Path) -> tuple[Path, Path]:
    """The default model exported for linux-arm64 like default_q4_bundle (q4g32, context 128, chunk 16) and its
    cross-built mcpm_run."""
    return default_arm64_bundle, build(default_arm64_bundle, tmp_path_factory.mktemp("arm64-default"), arm=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny f32 MiniCPM exported for the host and for linux-arm64, both mcpm_run builds and an odd prompt."""
    root = tmp_path_factory.mktemp("arm64-tiny")
    model_dir = write_tiny(root / "m", tiny_minicpm(tie_word_embeddings=False, max_position_embeddings=TINY_CTX),
                           seed=7)
    host = export(model_dir, root / "host", "host", "f32", TINY_CTX, TINY_CHUNK)
    arm = export(model_dir, root / "arm", "linux-arm64", "f32", TINY_CTX, TINY_CHUNK)
    ids = torch.randint(3, 4096, (TINY_PROMPT,), generator=torch.Generator().manual_seed(3)).tolist()
    return {"model_dir": model_dir, "host": host, "arm": arm, "ids": ids, "root": root,
            "host_exe": build(host, root / "build-host", arm=False),
            "arm_exe": build(arm, root / "build-arm", arm=True)}


def test_bundle_has_three_kernel_variants(default_arm: tuple[Path, Path]) -> None:
    bundle, _ = default_arm
    plan = json.loads((bundle / "plan.json").read_text())
    assert [v["name"] for v in plan["kernel_variants"]] == ["i8mm", "dotprod", "neon"]
    for v in plan["kernel_variants"]:
        head = (bundle / v["object_file"]).read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # e_machine EM_AARCH64


@pytest.mark.parametrize("cpu", list(CPUS), ids=[c or "default" for c in CPUS])
def test_greedy_text_equals_host(cpu: str | None, default_arm: tuple[Path, Path], default_q4_bundle: Path) -> None:
    """24 greedy tokens of text under qemu == the host runtime's (ctypes binding), with each CPU's own variant."""
    from mcpm.runtime.binding import Session
    from mcpm.runtime.host import load_host_bundle

    bundle, exe = default_arm
    _, model, _ = load_host_bundle(default_q4_bundle, threads=2)
    with model, Session(model) as session:
        n_host, host_text = session.complete(PROMPT, N_TEXT)
    got = run_arm(exe, [str(bundle), "-p", PROMPT, "-n", str(N_TEXT), "--threads", "2"], cpu)
    assert got["stats"]["kernel_variant"] == CPUS[cpu]
    assert (got["n_generated"], got["text"]) == (n_host, host_text)
    assert n_host == N_TEXT and len(set(host_text.split())) > 5


# qemu CPU model -> the kernel sets the runtime reports as supported (mcpm_kernel_variants_json)
SUPPORTED = {None: ["i8mm", "dotprod", "neon"], "cortex-a76": ["dotprod", "neon"], "cortex-a53": ["neon"]}


@pytest.mark.parametrize("cpu", list(CPUS), ids=[c or "default" for c in CPUS])
def test_self_test_passes_in_each_kernel_set(cpu: str | None, default_arm: tuple[Path, Path]) -> None:
    """docs/self-test.md: the export's golden record (PyTorch reference) checked by the ARM kernels themselves."""
    bundle, exe = default_arm
    got = run_arm(exe, [str(bundle), "--self-test", "--threads", "2"], cpu)
    result = got["self_test"]
    assert result["pass"] is True and result["kernel_variant"] == CPUS[cpu], result
    assert result["tokenizer"] == "pass" and result["steps"] == 16 and result["prompt_tokens"] > 64
    assert [v["name"] for v in got["kernel_variants"] if v["supported"]] == SUPPORTED[cpu]


def test_self_test_fails_naming_the_kernel_set(default_arm: tuple[Path, Path], tmp_path: Path) -> None:
    from mcpm.runtime.cross import run_qemu

    bundle, exe = default_arm
    copy = Path(shutil.copytree(bundle, tmp_path / "altered"))
    config = json.loads((copy / "mcpm-config.json").read_text())
    golden = config["golden"]
    golden["top5"][7] = [[i, v + 0.5 * golden["scale"][7]] for i, v in golden["top5"][7]]  # every logit at step 7
    (copy / "mcpm-config.json").write_text(json.dumps(config))
    res = run_qemu(exe, [str(copy), "--self-test", "--variant", "dotprod"], cpu="cortex-a76", timeout=300)
    assert res.returncode == 2, res.stderr
    reason = last_json(res.stdout)["self_test"]["reason"]
    assert reason.startswith("kernel set dotprod on the cpu: step 7: the logit of token "), reason


def test_tiny_f32_logits_match_host_and_reference(tiny: dict[str, Any]) -> None:
    """Prefill logits of an 11-token prompt (chunks 4+4+3) under qemu (i8mm and neon kernels) == host mcpm_run ==
    PyTorch within LOGITS_TOL of the logit scale; the greedy tokens after it are identical. The reference rounds K
    and V to the bundles' KV cache dtype (float16 by default), as the caches store them."""
    from mcpm.export.loading import load_model
    from mcpm.export.models.minicpm.model import with_kv_dtype

    ids, root = tiny["ids"], tiny["root"]
    kv_dtype = json.loads((tiny["host"] / "plan.json").read_text())["cache"]["dtype"]
    assert kv_dtype == "float16"  # the export default
    with torch.no_grad():
        model = with_kv_dtype(load_model(tiny["model_dir"], tokenizer=False).model, kv_dtype)
        ref = model(torch.tensor([ids]))[0, -1].numpy()  # [V]
    scale = float(np.abs(ref).max())
    args = ["--tokens", ",".join(map(str, ids)), "-n", "4", "--threads", "2"]
    host = run_host(tiny["host_exe"], [str(tiny["host"]), *args, "--logits", str(root / "host.f32")])
    host_logits = np.fromfile(root / "host.f32", dtype="<f4")
    assert host_logits.shape == ref.shape
    assert np.abs(host_logits - ref).max() / scale < LOGITS_TOL
    for cpu in (None, "cortex-a53"):
        out = root / f"arm-{cpu}.f32"
        got = run_arm(tiny["arm_exe"], [str(tiny["arm"]), *args, "--logits", str(out)], cpu)
        assert got["stats"]["kernel_variant"] == CPUS[cpu]
        arm_logits = np.fromfile(out, dtype="<f4")  # [V]
        vs_host = np.abs(arm_logits - host_logits).max() / scale
        vs_ref = np.abs(arm_logits - ref).max() / scale
        assert vs_host < LOGITS_TOL and vs_ref < LOGITS_TOL, (cpu, vs_host, vs_ref)
        assert got["tokens"] == host["tokens"] and len(got["tokens"]) == 4


def test_tiny_under_address_and_ub_sanitizers(tiny: dict[str, Any]) -> None:
    """The cross-built runtime + mcpm_run with ASan/UBSan under qemu (i8mm kernels): clean, same tokens/logits."""
    from mcpm.export.compiler.plan import kernel_object_files
    from mcpm.runtime.cross import build_linux_arm64, run_qemu

    root, bundle = tiny["root"], tiny["arm"]
    _, exe = build_linux_arm64(kernel_object_files(bundle), root / "build-asan", sanitize=True)
    args = ["--tokens", ",".join(map(str, tiny["ids"])), "-n", "4", "--threads", "2"]
    plain = run_arm(tiny["arm_exe"], [str(bundle), *args, "--logits", str(root / "plain.f32")])
    res = run_qemu(exe, [str(bundle), *args, "--logits", str(root / "asan.f32")], timeout=300)
    assert res.returncode == 0 and "runtime error" not in res.stderr and "Sanitizer" not in res.stderr, res.stderr
    assert last_json(res.stdout)["tokens"] == plain["tokens"]
    assert np.array_equal(np.fromfile(root / "asan.f32", "<f4"), np.fromfile(root / "plain.f32", "<f4"))


def test_forcing_a_variant_the_cpu_lacks_is_an_error(default_arm: tuple[Path, Path]) -> None:
    """--variant i8mm on a Cortex-A53 is refused at load with a clear message: no SIGILL."""
    from mcpm.runtime.cross import run_qemu

    bundle, exe = default_arm
    res = run_qemu(exe, [str(bundle), "--tokens", "1,2,3", "-n", "1", "--variant", "i8mm"], cpu="cortex-a53",
                   timeout=120)
    assert res.returncode == 1, (res.returncode, res.stderr)
    assert res.stderr.strip().splitlines() == [
        "mcpm_run: kernel variant 'i8mm' needs the CPU feature 'dotprod', which this CPU lacks: "
        "leave the kernel variant unset to pick one automatically"]
    assert res.stdout == ""
    # the same variant where the CPU has it works; an unknown name lists the bundle's variants
    assert run_arm(exe, [str(bundle), "--tokens", "1,2,3", "-n", "1", "--variant", "i8mm"])["stats"][
        "kernel_variant"] == "i8mm"
    res = run_qemu(exe, [str(bundle), "--tokens", "1,2,3", "--variant", "sve"], timeout=120)
    assert res.returncode == 1 and "unknown kernel variant 'sve' (this bundle has: i8mm, dotprod, neon)" in res.stderr


def test_host_mcpm_run_text_equals_binding(tiny: dict[str, Any]) -> None:
    """mcpm_run -p streams the same text as the ctypes session, and its JSON line carries it escaped (a random
    tiny model emits arbitrary pieces)."""
    from mcpm.runtime.binding import Session
    from mcpm.runtime.host import load_host_bundle

    _, model, _ = load_host_bundle(tiny["host"], threads=1)
    with model, Session(model) as session:
        n, text = session.complete(PROMPT, 20)
    res = subprocess.run([str(tiny["host_exe"]), str(tiny["host"]), "-p", PROMPT, "-n", "20", "--threads", "1"],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.splitlines()[-1])
    assert (got["n_generated"], got["text"], got["tokens"]) == (n, text, [])
    assert res.stdout.decode() == text + "\n" + res.stdout.decode().splitlines()[-1] + "\n"


def test_mcpm_run_usage_errors(tiny: dict[str, Any]) -> None:
    """Bad command lines: one line on stderr, exit status 1 (host build of the same tool)."""
    exe, bundle = tiny["host_exe"], str(tiny["host"])
    cases = {
        (bundle,): "give exactly one of --tokens, -p and --self-test",
        (bundle, "--tokens", "1,x"): "--tokens: expected comma-separated non-negative ids",
        (bundle, "-p", "hi", "--logits", "/tmp/x"): "--logits needs --tokens",
        (bundle, "--tokens", "1", "-n"): "-n needs a value",
        (bundle, "--tokens", "1", "--frobnicate"): "unknown option --frobnicate",
        (bundle, "--tokens", "999999"): "999999",
        (str(tiny["root"] / "nowhere"), "--tokens", "1"): "is missing",
    }
    for args, message in cases.items():
        res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60)
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1 and len(lines) == 1 and message in lines[0], (args, res.stderr)


def test_tiny_a8_logits_match_host(tiny: dict[str, Any]) -> None:
    """q4g32-a8 (int8 activations): the ARM kernels (i8mm: SMMLA prefill, SDOT decode; dotprod: SDOT; neon: q * dx
    floats for prefill, int16 dots of the same q for decode) give the host's AVX2 int8 results: prefill logits
    within LOGITS_TOL of the logit scale (all are exact integer dots of the same q; only float summation order
    differs), same greedy tokens."""
    ids, root = tiny["ids"], tiny["root"]
    host = export(tiny["model_dir"], root / "host-a8", "host", "q4g32-a8", TINY_CTX, TINY_CHUNK)
    arm = export(tiny["model_dir"], root / "arm-a8", "linux-arm64", "q4g32-a8", TINY_CTX, TINY_CHUNK)
    args = ["--tokens", ",".join(map(str, ids)), "-n", "6", "--threads", "2"]
    got_host = run_host(build(host, root / "build-host-a8", arm=False), [str(host), *args, "--logits",
                                                                         str(root / "host-a8.f32")])
    host_logits = np.fromfile(root / "host-a8.f32", dtype="<f4")  # [V]
    scale = float(np.abs(host_logits).max())
    arm_exe = build(arm, root / "build-arm-a8", arm=True)
    for cpu in CPUS:
        out = root / f"arm-a8-{cpu}.f32"
        got = run_arm(arm_exe, [str(arm), *args, "--logits", str(out)], cpu)
        assert got["stats"]["kernel_variant"] == CPUS[cpu]
        diff = np.abs(np.fromfile(out, dtype="<f4") - host_logits).max() / scale
        assert diff < LOGITS_TOL, (cpu, diff)
        assert got["tokens"] == got_host["tokens"] and len(got["tokens"]) == 6
        result = run_arm(arm_exe, [str(arm), "--self-test"], cpu)["self_test"]  # the a8 tolerance (docs/self-test.md)
        assert result["pass"] is True and result["kernel_variant"] == CPUS[cpu] and result["tolerance"] == 0.03, result


def test_cmake_cross_build_chats_like_the_host(default_arm: tuple[Path, Path], default_q4_bundle: Path,
                                               tmp_path: Path) -> None:
    """runtime_bindings/c/CMakeLists.txt with cmake/aarch64-linux-gnu.cmake over the linux-arm64 bundle (three kernel
    sets in libmcpm.a, found through the generated kernel table): examples/c/chat.c under qemu (i8mm kernels)
    replies like the Python chat session over the host bundle."""
    from mcpm.runtime.build import C_DIR
    from tests.test_cmake_build import MESSAGES, chat, python_replies, run

    if shutil.which("cmake") is None:
        pytest.skip("cmake not found (make setup installs it)")
    bundle, _ = default_arm
    build = tmp_path / "build"
    run(["cmake", "-S", C_DIR, "-B", build, f"-DMCPM_BUNDLE={bundle}",
         f"-DCMAKE_TOOLCHAIN_FILE={C_DIR / 'cmake' / 'aarch64-linux-gnu.cmake'}"])
    run(["cmake", "--build", build, "-j", "2", "--target", "mcpm-chat"])
    assert "AArch64" in run(["readelf", "-h", build / "mcpm-chat"]).stdout
    replies, stats = chat(build / "mcpm-chat", bundle, runner=("qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"))
    assert stats["kernel_variant"] == "i8mm"
    assert replies == python_replies(default_q4_bundle) and len(replies) == len(MESSAGES)
