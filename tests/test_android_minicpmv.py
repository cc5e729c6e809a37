"""`mcpm-export --target android` on a tiny MiniCPM-V 2.0 checkpoint: the APK carries a bundle with the vision
entries, a libmcpm.so that exports the image API and its JNI entry points, and the app's image picker."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.export.android.apk import verify_apk
from mcpm.export_cli import export
from tests.conftest import write_tiny
from tests.test_minicpmv import tiny_minicpmv

TOOLS = ("clang", "ld.lld", "llvm-readelf", "javac", "aapt", "apksigner", "zipalign", "dexdump")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"Android build tools missing ({', '.join(TOOLS)}): run make setup")


@pytest.fixture(scope="module")
def v_android(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v-android")
    ckpt = write_tiny(root / "ckpt", tiny_minicpmv(), seed=11)
    out = root / "out"
    res = CliRunner().invoke(export, [str(ckpt), "--target", "android", "-o", str(out), "--context-length", "128",
                                      "--prefill-chunk", "16"])
    assert res.exit_code == 0, res.output
    return out


def test_apk_holds_a_vision_bundle(v_android: Path) -> None:
    r = verify_apk(v_android / "mcpm-demo.apk")
    assert r.package == "org.mcpm.demo" and r.native_code == ["arm64-v8a"] and r.aligned
    with zipfile.ZipFile(v_android / "mcpm-demo.apk") as z:
        plan_name = next(n for n in z.namelist() if n.endswith("/plan.json") and "/models/" in n)
        plan = json.loads(z.read(plan_name))
        cfg = json.loads(z.read(plan_name.replace("plan.json", "mcpm-config.json")))
    assert {"prefill", "decode", "embed", "prefill_embeds", "vision"} == set(plan["entries"])
    assert plan["vision"]["max_patches"] == 18 and plan["vision"]["query_num"] == 16  # tiny: ceil(1.125 * 4 * 4)
    assert plan["target"]["mtriple"].startswith("aarch64") and cfg["target"]["platform"] == "android"
    tokens = cfg["vision"]["image_tokens"]
    assert len(set(tokens.values())) == 6 and all(0 <= t < 4128 for t in tokens.values())


def test_library_exports_the_image_api(v_android: Path) -> None:
    lib = v_android / "lib" / "arm64-v8a" / "libmcpm.so"
    syms = subprocess.run(["llvm-readelf", "--dyn-syms", "-W", str(lib)], capture_output=True, text=True,
                          check=True).stdout
    for name in ("mcpm_encode_image", "mcpm_model_has_vision", "mcpm_session_clear_images",
                 "Java_org_mcpm_demo_McpmNative_encodeImage", "Java_org_mcpm_demo_McpmNative_hasVision"):
        assert f" {name}\n" in syms, f"{name} is not exported by {lib.name}"


def test_app_has_the_image_picker(v_android: Path) -> None:
    with zipfile.ZipFile(v_android / "mcpm-demo.apk") as z:
        dex = v_android / "classes.dex"
        dex.write_bytes(z.read("classes.dex"))
    dump = subprocess.run(["dexdump", "-d", str(dex)], capture_output=True, text=True, check=True).stdout
    assert "Lorg/mcpm/demo/ImageLoader;" in dump
    for action in ("android.intent.action.GET_CONTENT", "android.media.action.IMAGE_CAPTURE"):
        assert action in dump, f"the app never starts {action}"


def test_self_test_with_the_golden_image_in_each_arm_kernel_set(v_android: Path) -> None:
    """The APK's bundle (vision tower, resampler and LM in the android kernel objects) passes its own self-test,
    the golden image turn included, under qemu in every kernel set: the runtime's pick on each emulated CPU."""
    from mcpm.export.compiler.plan import kernel_object_files
    from mcpm.runtime.cross import build_linux_arm64, missing_cross_tools, run_qemu
    from tests.test_arm64_qemu import CPUS, last_json

    if missing_cross_tools():
        pytest.skip(f"ARM64 cross tools missing: {', '.join(missing_cross_tools())} (make setup installs them)")
    bundle = v_android / "bundle"
    _, exe = build_linux_arm64(kernel_object_files(bundle), v_android / "arm64-build")
    for cpu, variant in CPUS.items():
        res = run_qemu(exe, [str(bundle), "--self-test", "--threads", "2"], cpu=cpu, timeout=300)
        result = last_json(res.stdout)["self_test"]
        assert res.returncode == 0 and result["pass"] is True, (cpu, result)
        assert result["kernel_variant"] == variant and result["image"]["pass"] is True, (cpu, result)
        assert result["image"]["slices"] == 3 and result["image"]["prompt"] == "pass"
