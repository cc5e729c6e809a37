"""`mcpm-export --target android --device gpu`: the APK carries the OpenCL kernels and still verifies.

One tiny model (one layer, 32 tokens of context) is exported once per module with its GPU kernels; the checks read
the APK back: apksigner, the assets (kernels.cl next to plan.json, whose "gpu" launch records the runtime needs),
and libmcpm.so, which holds the OpenCL dispatcher but must still import only allowed libc/libdl symbols (libOpenCL
is opened with dlopen at run time on the phone, never linked).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.export.android.apk import java_native_methods, verify_apk
from mcpm.export.android.native import SYSTEM_LIBS, allowed_symbols, check_android_library
from mcpm.export_cli import export
from tests.conftest import tiny_minicpm, write_tiny

APP_SRC = Path(__file__).resolve().parents[1] / "android_app" / "src"
TOOLS = ("clang", "ld.lld", "llvm-readelf", "javac", "aapt", "apksigner", "zipalign")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"Android build tools missing ({', '.join(TOOLS)}): run make setup")
NAME = "tiny-gpu"  # the model's name in the app: the checkpoint folder's name


@pytest.fixture(scope="module")
def gpu_apk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("android-gpu")
    ckpt = write_tiny(base / NAME, tiny_minicpm(num_hidden_layers=1))
    out = base / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCPM_CACHE_DIR", str(base / "cache"))  # the debug keystore goes here, not into ~/.cache
        res = CliRunner().invoke(export, [str(ckpt), "--target", "android", "--device", "gpu", "-o", str(out),
                                          "--context-length", "32", "--prefill-chunk", "8"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return out


def test_apk_verifies_with_the_opencl_kernels_in_its_assets(gpu_apk: Path) -> None:
    r = verify_apk(gpu_apk / "mcpm-demo.apk")
    assert r.package == "org.mcpm.demo" and r.native_code == ["arm64-v8a"]
    assert {"v2", "v3"} <= set(r.signature_schemes) and r.native_lib_stored and r.aligned
    prefix = f"assets/models/{NAME}/"
    assert {f"{prefix}{f}" for f in ("kernels.cl", "plan.json", "weights.bin", "mcpm-config.json")} <= set(r.assets)
    assert not any(a.endswith(".o") for a in r.assets)
    with zipfile.ZipFile(gpu_apk / "mcpm-demo.apk") as z:
        cl = z.read(f"{prefix}kernels.cl")
        assert cl == (gpu_apk / "bundle" / "kernels.cl").read_bytes() and b"__kernel" in cl
        plan = json.loads(z.read(f"{prefix}plan.json"))
    assert plan == json.loads((gpu_apk / "bundle" / "plan.json").read_text())
    gpu = plan["gpu"]  # the launch records the OpenCL dispatcher runs (docs/gpu-plan.md)
    assert gpu["opencl_source"] == "kernels.cl"
    launched = {launch["kernel"] for launches in gpu["launches"].values() for launch in launches}
    assert set(gpu["launches"]) == set(plan["kernels"])  # every plan kernel has its launch records
    assert launched <= set(re.findall(r"__kernel void (\w+)\(", cl.decode()))


def test_library_links_no_opencl(gpu_apk: Path) -> None:
    lib = gpu_apk / "lib" / "arm64-v8a" / "libmcpm.so"
    r = check_android_library(lib)
    assert r.ok, r.problems
    assert set(r.needed) <= set(SYSTEM_LIBS) and "libOpenCL.so" not in r.needed
    allowed = set().union(*(allowed_symbols(name) for name in SYSTEM_LIBS))
    assert set(r.undefined) <= allowed
    assert {"dlopen", "dlsym"} <= set(r.undefined)  # how the dispatcher reaches libOpenCL.so on the phone
    assert not any(s.startswith("cl") and s[2:3].isupper() for s in r.undefined)  # no clGetPlatformIDs & co.
    assert b"libOpenCL.so" in lib.read_bytes()
    assert set(r.jni_exports) == java_native_methods(APP_SRC)  # load(..., device, ...) and kernelTimes included
    with zipfile.ZipFile(gpu_apk / "mcpm-demo.apk") as z:
        assert z.read("lib/arm64-v8a/libmcpm.so") == lib.read_bytes()


def test_manifest_asks_for_the_vendor_opencl_library(gpu_apk: Path) -> None:
    """Android 12+ lets an app dlopen the vendor's libOpenCL.so only when the manifest names it (optional)."""
    from mcpm.export.android.apk import find_tools

    aapt = find_tools().aapt
    out = subprocess.run([aapt, "dump", "xmltree", str(gpu_apk / "mcpm-demo.apk"), "AndroidManifest.xml"],
                         capture_output=True, text=True, check=True).stdout
    block = out.split("E: uses-native-library", 1)[1].split("E: ", 1)[0]
    assert '"libOpenCL.so"' in block and "required" in block
