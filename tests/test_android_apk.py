"""mcpm.export.android.apk: the demo APK built from android_app/ with a placeholder libmcpm.so and a tiny bundle.

One APK is built per module (javac, dx, aapt, alignment, apksigner with a debug key in a temporary cache) and
read back: signature, badging, activities, assets, the stored 16 KiB-aligned .so, the JNI names; plus negative
controls (a flipped byte, a wrong keystore password, missing tools, a non-arm64 library).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from mcpm.errors import McpmError
from mcpm.export.android import apk as apkmod
from mcpm.export.android.apk import (
    APP_DIR,
    NATIVE_LIB_ENTRY,
    ApkReport,
    KeystoreOptions,
    build_apk,
    find_tools,
    java_native_methods,
    jni_mangle,
    sign_apk,
    verify_apk,
)

CONTRACT_METHODS = ("load", "chat", "complete", "reset", "stats", "bench", "kernelTimes", "free", "hasVision",
                    "maxImagePixels", "encodeImage", "clearImages", "stop", "selfTest", "kernelVariants")
CONTRACT_SYMBOLS = {f"Java_org_mcpm_demo_McpmNative_{m}" for m in CONTRACT_METHODS}
ACTIVITIES = {f"org.mcpm.demo.{a}" for a in ("MainActivity", "SettingsActivity", "BenchmarkActivity")}


def _tools_missing() -> str | None:
    try:
        find_tools()
    except McpmError as e:
        return str(e)
    return None


_missing = _tools_missing()
pytestmark = pytest.mark.skipif(_missing is not None, reason=f"Android build tools missing: {_missing}")


def _placeholder_so(tmp: Path, symbols: set[str]) -> Path:
    """A tiny aarch64 shared object exporting the JNI names (clang + lld without the NDK, else a gcc cross)."""
    src = tmp / "placeholder.c"
    src.write_text("".join(f"int {s}(void) {{ return {i}; }}\n" for i, s in enumerate(sorted(symbols))))
    out = tmp / "libmcpm.so"
    attempts = []
    if shutil.which("clang") and shutil.which("ld.lld"):
        attempts.append(
            ["clang", "--target=aarch64-linux-android24", "-nostdlib", "-shared", "-fPIC", "-fuse-ld=lld",
             "-Wl,-z,max-page-size=16384", "-Wl,-soname,libmcpm.so", "-o", str(out), str(src)]
        )  # fmt: skip
    if shutil.which("aarch64-linux-gnu-gcc"):
        attempts.append(["aarch64-linux-gnu-gcc", "-nostdlib", "-shared", "-fPIC", "-o", str(out), str(src)])
    for cmd in attempts:
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return out
    pytest.skip("no aarch64 compiler (clang + lld or aarch64-linux-gnu-gcc) for the placeholder library")


def _bundle(tmp: Path) -> Path:
    b = tmp / "tiny-bundle"
    (b / "tokenizer").mkdir(parents=True)
    (b / "mcpm-config.json").write_text('{"model_type": "minicpm"}\n')
    (b / "plan.json").write_text('{"steps": []}\n')
    (b / "weights.bin").write_bytes(bytes(range(256)) * 300)
    (b / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}\n')
    (b / "kernels.o").write_bytes(b"\x7fELF not shipped")  # *.o stays out of the APK
    (b / ".DS_Store").write_bytes(b"junk")  # dotfiles too
    return b


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(apk, placeholder .so, bundle folder, debug keystore), built once."""
    tmp = tmp_path_factory.mktemp("android-apk")
    so = _placeholder_so(tmp, CONTRACT_SYMBOLS)
    bundle = _bundle(tmp)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCPM_CACHE_DIR", str(tmp / "cache"))  # the debug keystore goes here, not into ~/.cache
        apk = build_apk(so, tmp / "out" / "mcpm-demo.apk", {"tiny": bundle})
    keystore = tmp / "cache" / "android" / "debug.keystore"
    assert keystore.is_file()
    return apk, so, bundle, keystore


@pytest.fixture(scope="module")
def report(built: tuple[Path, Path, Path, Path]) -> ApkReport:
    return verify_apk(built[0])


def test_signature_verifies(built: tuple[Path, Path, Path, Path], report: ApkReport) -> None:
    tools = find_tools()
    proc = subprocess.run([tools.apksigner, "verify", "--verbose", str(built[0])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert {"v2", "v3"} <= set(report.signature_schemes)
    assert report.size_bytes == built[0].stat().st_size > 0


def test_badging(report: ApkReport) -> None:
    assert report.package == "org.mcpm.demo"
    assert report.native_code == ["arm64-v8a"]
    assert report.launchable_activity == "org.mcpm.demo.MainActivity"
    assert set(report.activities) == ACTIVITIES
    assert (report.min_sdk, report.target_sdk) == (24, 34)
    badging = subprocess.run([find_tools().aapt, "dump", "badging", str(report.path)], capture_output=True, text=True)
    assert "native-code: 'arm64-v8a'" in badging.stdout


def test_manifest_contract(report: ApkReport) -> None:
    tree = subprocess.run(
        [find_tools().aapt, "dump", "xmltree", str(report.path), "AndroidManifest.xml"], capture_output=True, text=True
    ).stdout
    assert "extractNativeLibs" in tree
    # BenchmarkActivity is exported (adb starts it); exported=true is written as 0xffffffff.
    bench = tree[tree.index('BenchmarkActivity" (Raw') :].split("E: ", 1)[0]  # aapt keeps ".BenchmarkActivity"
    assert "android:exported(0x01010010)=(type 0x12)0xffffffff" in bench
    # ... but only for the shell: other apps cannot hold DUMP, so they cannot make mcpm read paths they choose
    assert 'android:permission(0x01010006)="android.permission.DUMP"' in bench
    # the chat screen handles dark mode, font size and locale changes itself (ChatEngine makes any recreation
    # harmless as well): uiMode 0x200, fontScale 0x40000000, locale 0x4, layoutDirection 0x2000
    main = tree[tree.index('MainActivity" (Raw') :].split("E: activity", 1)[0]
    flags = int(re.search(r"android:configChanges\(0x0101001f\)=\(type 0x11\)0x([0-9a-f]+)", main).group(1), 16)
    assert flags & 0x40002204 == 0x40002204, hex(flags)


def test_bundle_assets(built: tuple[Path, Path, Path, Path], report: ApkReport) -> None:
    apk, _, bundle, _ = built
    expected = {"mcpm-config.json", "plan.json", "weights.bin", "tokenizer/tokenizer.json"}
    assert set(report.assets) == {f"assets/models/tiny/{n}" for n in expected}
    with zipfile.ZipFile(apk) as z:
        for name in expected:
            assert z.read(f"assets/models/tiny/{name}") == (bundle / name).read_bytes()
        assert not [n for n in z.namelist() if n.endswith(".o") or "DS_Store" in n]


def test_native_lib_stored_and_page_aligned(built: tuple[Path, Path, Path, Path], report: ApkReport) -> None:
    apk, so, _, _ = built
    assert report.native_lib_stored and report.aligned
    assert report.native_lib_bytes == so.stat().st_size
    check = subprocess.run([find_tools().zipalign, "-c", "-p", "4", str(apk)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    with zipfile.ZipFile(apk) as z:
        info = z.getinfo(NATIVE_LIB_ENTRY)
        assert info.compress_type == zipfile.ZIP_STORED
        assert z.read(NATIVE_LIB_ENTRY) == so.read_bytes()
        assert z.getinfo("resources.arsc").compress_type == zipfile.ZIP_STORED  # required from targetSdk 30
    raw = apk.read_bytes()
    name_len = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    data_at = info.header_offset + 30 + name_len + extra_len
    assert data_at % 16384 == 0  # 16 KiB pages (Android 15+), which implies zipalign's 4 KiB
    assert raw[data_at : data_at + 4] == b"\x7fELF"


def test_dex_classes(built: tuple[Path, Path, Path, Path]) -> None:
    dexdump = shutil.which("dexdump") or "/usr/lib/android-sdk/build-tools/debian/dexdump"
    if not Path(dexdump).exists():
        pytest.skip("dexdump not installed")
    out = subprocess.run([dexdump, str(built[0])], capture_output=True, text=True).stdout
    for cls in ("MainActivity", "SettingsActivity", "BenchmarkActivity", "McpmNative", "McpmException", "ModelStore",
                "ImageLoader", "ChatEngine", "ImageIntake", "DecimalInput"):
        assert f"'Lorg/mcpm/demo/{cls};'" in out
    assert "'Lorg/mcpm/demo/McpmNative$TextSink;'" in out


def test_java_native_methods_match_contract() -> None:
    assert java_native_methods(APP_DIR / "src") == CONTRACT_SYMBOLS


def test_jni_mangling(tmp_path: Path) -> None:
    assert jni_mangle("org.mcpm.demo.Mcpm_Native") == "org_mcpm_demo_Mcpm_1Native"
    assert jni_mangle("a;[b$") == "a_2_3b_00024"
    src = tmp_path / "org" / "x"
    src.mkdir(parents=True)
    (src / "Na_tive.java").write_text(
        "package org.x;\n"
        "// static native int commented(int a);\n"
        "public class Na_tive {\n"
        '    String s = "native int inString(int a);";\n'
        "    interface Sink { boolean on(String s); }\n"
        "    public static native long open_it(String dir, int n) throws Exception;\n"
        "    native void over(int[] a, Sink s);\n"
        "    native void over(String s);\n"
        "    static int notNative(int a) { return a; }\n"
        "}\n"
    )
    assert java_native_methods(tmp_path) == {
        "Java_org_x_Na_1tive_open_1it",
        "Java_org_x_Na_1tive_over___3ILorg_x_Na_1tive_00024Sink_2",
        "Java_org_x_Na_1tive_over__Ljava_lang_String_2",
    }


def test_tampered_apk_fails_verification(built: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    apk = built[0]
    with zipfile.ZipFile(apk) as z:
        info = z.getinfo(NATIVE_LIB_ENTRY)
    bad = tmp_path / "tampered.apk"
    data = bytearray(apk.read_bytes())
    raw_at = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[raw_at + 100] ^= 0x01  # one bit of the stored .so
    bad.write_bytes(bytes(data))
    with pytest.raises(McpmError, match="does not verify"):
        verify_apk(bad)


def test_wrong_keystore_password(built: tuple[Path, Path, Path, Path], tmp_path: Path) -> None:
    apk, _, _, keystore = built
    wrong = KeystoreOptions(keystore, "androiddebugkey", "not-the-password")
    with pytest.raises(McpmError, match="password is wrong"):
        sign_apk(apk, tmp_path / "resigned.apk", wrong)
    with pytest.raises(McpmError, match="not found"):
        sign_apk(apk, tmp_path / "resigned.apk", KeystoreOptions(tmp_path / "none.keystore", "k", "pw"))


def test_missing_tools_say_make_setup(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT", "JAVA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(apkmod, "DEBIAN_SDK", tmp_path / "no-sdk")
    with pytest.raises(McpmError, match="make setup"):
        find_tools()


def test_rejects_non_arm64_library(tmp_path: Path) -> None:
    fake = tmp_path / "libmcpm.so"
    fake.write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00")  # an x86-64 shared object header
    with pytest.raises(McpmError, match="not an arm64"):
        build_apk(fake, tmp_path / "app.apk")


def test_javac_error_is_shown(
    built: tuple[Path, Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = tmp_path / "android_app"
    shutil.copytree(APP_DIR, app)
    prefs = app / "src" / "org" / "mcpm" / "demo" / "Prefs.java"
    prefs.write_text(prefs.read_text().replace("public final class Prefs {", 'public final class Prefs { int x = "s";'))
    monkeypatch.setattr(apkmod, "APP_DIR", app)
    monkeypatch.setenv("MCPM_CACHE_DIR", str(built[3].parents[1]))
    with pytest.raises(McpmError, match=r"javac failed: .*Prefs\.java:\d+: error: incompatible types"):
        build_apk(built[1], tmp_path / "broken.apk")
