"""`mcpm-export default --target android` end to end: bundle, libmcpm.so and a signed APK that Android accepts
(as far as this machine can tell without a phone: apksigner, aapt badging, ELF imports, JNI names)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.export.android.apk import java_native_methods, verify_apk
from mcpm.export.android.native import allowed_symbols, check_android_library
from mcpm.export_cli import export

APP_SRC = Path(__file__).resolve().parents[1] / "android_app" / "src"
TOOLS = ("clang", "ld.lld", "llvm-readelf", "javac", "aapt", "apksigner", "zipalign")
pytestmark = pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                                reason=f"Android build tools missing ({', '.join(TOOLS)}): run make setup")


@pytest.fixture(scope="module")
def android_out(default_android_out: tuple[Path, str]) -> tuple[Path, str]:
    return default_android_out


def test_layout_and_next_steps(android_out: tuple[Path, str]) -> None:
    out, output = android_out
    assert (out / "bundle" / "mcpm-config.json").is_file()
    assert (out / "lib" / "arm64-v8a" / "libmcpm.so").is_file()
    assert f"mcpm android install {out / 'mcpm-demo.apk'}" in output
    assert "mcpm android bench --model default" in output
    assert "push-model" not in output  # the small default model is inside the APK
    assert f"mcpm android verify {out}" in output  # all of it in one command (docs/self-test.md)
    cfg = json.loads((out / "bundle" / "mcpm-config.json").read_text())
    assert cfg["target"]["platform"] == "android" and cfg["target"]["kernel_variants"] == ["i8mm", "dotprod", "neon"]


def test_apk_verifies_and_declares_the_app(android_out: tuple[Path, str]) -> None:
    out, _ = android_out
    r = verify_apk(out / "mcpm-demo.apk")
    assert r.package == "org.mcpm.demo" and r.native_code == ["arm64-v8a"]
    assert r.launchable_activity == "org.mcpm.demo.MainActivity"
    assert {"org.mcpm.demo.MainActivity", "org.mcpm.demo.SettingsActivity",
            "org.mcpm.demo.BenchmarkActivity"} <= set(r.activities)
    assert {"v2", "v3"} <= set(r.signature_schemes) and r.native_lib_stored and r.aligned
    names = {Path(a).name for a in r.assets}
    assert {"mcpm-config.json", "plan.json", "weights.bin", "tokenizer.model"} <= names
    assert not any(a.endswith(".o") for a in r.assets)
    with zipfile.ZipFile(out / "mcpm-demo.apk") as z:
        assert z.read("lib/arm64-v8a/libmcpm.so") == (out / "lib" / "arm64-v8a" / "libmcpm.so").read_bytes()
        weights = next(n for n in z.namelist() if n.endswith("models/default/weights.bin"))
        assert z.read(weights) == (out / "bundle" / "weights.bin").read_bytes()


def test_native_library_imports_and_jni_names(android_out: tuple[Path, str]) -> None:
    out, _ = android_out
    r = check_android_library(out / "lib" / "arm64-v8a" / "libmcpm.so")
    assert r.ok, r.problems
    assert set(r.needed) <= {"libc.so", "libm.so", "libdl.so", "liblog.so"} and r.soname == "libmcpm.so"
    assert r.machine == "AArch64" and all(a == 16384 for a in r.load_alignments)
    allowed = set().union(*(allowed_symbols(lib) for lib in ("libc", "libm", "libdl", "liblog")))
    assert set(r.undefined) <= allowed
    # every `native` method of the Java sources has its JNI function in the library, and nothing more
    assert set(r.jni_exports) == java_native_methods(APP_SRC)


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    res = CliRunner().invoke(export, ["default", "--target", "android", "-o", str(tmp_path)])
    assert res.exit_code != 0 and "not empty and was not written by mcpm-export" in str(res.exception or res.output)
    assert (tmp_path / "keep.txt").read_text() == "mine"
