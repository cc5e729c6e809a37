"""Build, sign and check the Android demo APK (android_app/) without Gradle, the Android SDK or the NDK.

The pipeline is the one in android_app/README.md: ``aapt package`` (manifest, res, R.java, assets/models/<name>/)
→ ``javac -source 8 -target 8 -bootclasspath android.jar`` → ``dx --dex --min-sdk-version=24`` (or the SDK's
``d8``) → classes.dex and ``lib/arm64-v8a/libmcpm.so`` (stored uncompressed, so the phone maps it straight from the
APK: ``android:extractNativeLibs="false"``) → alignment (stored entries on 4 bytes like ``zipalign -p -f 4``, the
.so on 16 KiB for 16 KiB-page phones, checked with ``zipalign -c -p 4``) → ``apksigner sign`` (v2 + v3 schemes).

Tools come from ``$ANDROID_HOME`` (or ``$ANDROID_SDK_ROOT``) when it has build-tools and a platform, else from
Debian's packages (``make setup``). The debug key is generated once with keytool under
``<cache>/android/debug.keystore`` (the cache of :func:`mcpm.runtime.build.default_cache_dir`), never in the repo.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mcpm.errors import McpmError
from mcpm.runtime.build import default_cache_dir

APP_DIR = Path(__file__).resolve().parents[2] / "android_app"
PACKAGE = "org.mcpm.demo"
NATIVE_CLASS = "org.mcpm.demo.McpmNative"
ABI = "arm64-v8a"
NATIVE_LIB_ENTRY = f"lib/{ABI}/libmcpm.so"
MIN_SDK = 24
DEBIAN_SDK = Path("/usr/lib/android-sdk")
DEBUG_ALIAS = "androiddebugkey"
DEBUG_PASSWORD = "android"
SETUP_FIX = (
    "run `make setup` (Debian: openjdk-17-jdk-headless aapt zipalign apksigner, android.jar and dx), "
    "or set ANDROID_HOME to an Android SDK"
)
# aapt's default --ignore-assets also drops "_folders" and dotfiles; bundles are staged without dotfiles, so keep
# only the version-control patterns.
IGNORE_ASSETS = "!.svn:!.git:!.ds_store:!*.scc:!CVS:!thumbs.db:!*~"
SKIPPED_BUNDLE_SUFFIXES = (".o",)
SO_ALIGN = 16384  # Android 15+ devices with 16 KiB pages map uncompressed .so files from the APK
ALIGN_EXTRA_ID = 0xD935  # zip extra field Android's zipalign/apksigner use for alignment padding
ZIP_DATE = (2008, 1, 1, 0, 0, 0)  # fixed timestamps: the same inputs give the same unsigned APK


@dataclass(frozen=True)
class KeystoreOptions:
    """A signing key: keystore file, key alias and passwords (key_password defaults to store_password)."""

    path: Path
    alias: str
    store_password: str
    key_password: str | None = None


@dataclass(frozen=True)
class AndroidTools:
    """The command-line tools the build uses; ``dexer`` is ``dx`` (Debian) or ``d8`` (SDK build-tools ≥ 28)."""

    javac: str
    android_jar: Path
    dexer: str
    aapt: str
    zipalign: str
    apksigner: str
    keytool: str
    source: str  # "ANDROID_HOME=<path>" or "debian"

    @property
    def dexer_is_d8(self) -> bool:
        return Path(self.dexer).name.startswith("d8")


@dataclass
class ApkReport:
    """What :func:`verify_apk` read back from an APK."""

    path: Path
    package: str
    version_code: str
    version_name: str
    min_sdk: int | None
    target_sdk: int | None
    native_code: list[str]
    launchable_activity: str | None
    activities: list[str]
    signature_schemes: list[str]  # e.g. ["v2", "v3"]
    size_bytes: int
    dex_bytes: int
    native_lib_bytes: int
    native_lib_stored: bool  # stored uncompressed (needed with extractNativeLibs="false")
    aligned: bool  # zipalign -c -p 4
    assets: dict[str, int] = field(default_factory=dict)  # assets/... entry → uncompressed size

    @property
    def assets_bytes(self) -> int:
        return sum(self.assets.values())


# ----------------------------------------------------------------------------------------------------------- tools


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name)) or (0,)


def _sdk_tools() -> tuple[dict[str, str], Path, str] | None:
    """build-tools, android.jar and a label from $ANDROID_HOME / $ANDROID_SDK_ROOT, if it has both."""
    for var in ("ANDROID_HOME", "ANDROID_SDK_ROOT"):
        root = os.environ.get(var)
        if not root:
            continue
        sdk = Path(root)
        builds = sorted((p for p in (sdk / "build-tools").glob("*") if p.is_dir()), key=lambda p: _version_key(p.name))
        jars = sorted(
            (p / "android.jar" for p in (sdk / "platforms").glob("android-*") if (p / "android.jar").is_file()),
            key=lambda p: _version_key(p.parent.name),
        )
        for bt in reversed(builds):
            found = {t: str(bt / t) for t in ("aapt", "zipalign", "apksigner", "d8", "dx") if (bt / t).is_file()}
            if {"aapt", "zipalign", "apksigner"} <= found.keys() and ({"d8", "dx"} & found.keys()) and jars:
                return found, jars[-1], f"{var}={sdk}"
    return None


def _which(name: str, *fallbacks: Path) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for f in fallbacks:
        if f.is_file() and os.access(f, os.X_OK):
            return str(f)
    return None


def find_tools() -> AndroidTools:
    """The Android SDK's tools when ANDROID_HOME has build-tools and a platform, else Debian's; McpmError if any
    is missing."""
    java_home = os.environ.get("JAVA_HOME")
    java_bins = [Path(java_home) / "bin"] if java_home else []
    javac = _which("javac", *(b / "javac" for b in java_bins))
    keytool = _which("keytool", *(b / "keytool" for b in java_bins))
    sdk = _sdk_tools()
    if sdk is not None:
        found, jar, source = sdk
        dexer = found.get("d8") or found["dx"]
        aapt, zipalign, apksigner = found["aapt"], found["zipalign"], found["apksigner"]
        android_jar: Path | None = jar
    else:
        debian_bt = DEBIAN_SDK / "build-tools" / "debian"
        jars = sorted(
            (p / "android.jar" for p in (DEBIAN_SDK / "platforms").glob("android-*") if (p / "android.jar").is_file()),
            key=lambda p: _version_key(p.parent.name),
        )
        android_jar = jars[-1] if jars else None
        dexer = _which("dx", debian_bt / "dx") or _which("d8", debian_bt / "d8") or ""
        aapt = _which("aapt", debian_bt / "aapt") or ""
        zipalign = _which("zipalign", debian_bt / "zipalign") or ""
        apksigner = _which("apksigner", debian_bt / "apksigner") or ""
        source = "debian"
    missing = [
        name
        for name, value in (
            ("javac", javac),
            ("keytool", keytool),
            ("android.jar", android_jar),
            ("dx", dexer),
            ("aapt", aapt),
            ("zipalign", zipalign),
            ("apksigner", apksigner),
        )
        if not value
    ]
    if missing:
        raise McpmError(f"cannot build the Android app: {', '.join(missing)} not found", SETUP_FIX)
    assert javac and keytool and android_jar
    return AndroidTools(javac, android_jar, dexer, aapt, zipalign, apksigner, keytool, source)


def _run(cmd: list[str], what: str, fix: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Runs a tool; McpmError with its first error line when it fails."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
    except FileNotFoundError as e:
        raise McpmError(f"{what}: {cmd[0]} not found", SETUP_FIX) from e
    if proc.returncode != 0:
        raise McpmError(f"{what} failed: {_first_error_line(proc.stderr + proc.stdout)}", fix)
    return proc.stdout


def _first_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("ERROR", "error:")) or re.match(r"^\S+:\d+: error:", ln):  # apksigner, javac, aapt
            return ln
    for ln in lines:
        if re.search(r"error|exception|failed|cannot|invalid|not found|incorrect|does not", ln, re.IGNORECASE):
            return ln
    return lines[0] if lines else "no output"


# ------------------------------------------------------------------------------------------------------ keystores


def debug_keystore(tools: AndroidTools | None = None) -> KeystoreOptions:
    """The debug key (alias androiddebugkey, password "android"), created once under <cache>/android/."""
    path = default_cache_dir() / "android" / "debug.keystore"
    options = KeystoreOptions(path, DEBUG_ALIAS, DEBUG_PASSWORD, DEBUG_PASSWORD)
    if path.is_file():
        return options
    tools = tools or find_tools()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".keystore-") as tmp:
        partial = Path(tmp) / "debug.keystore"  # keytool refuses to overwrite; a fresh name, renamed atomically
        _run(
            [
                tools.keytool, "-genkeypair", "-noprompt", "-keystore", str(partial), "-storetype", "PKCS12",
                "-storepass", DEBUG_PASSWORD, "-keypass", DEBUG_PASSWORD, "-alias", DEBUG_ALIAS,
                "-keyalg", "RSA", "-keysize", "2048", "-validity", "10000",
                "-dname", "CN=Android Debug,O=Android,C=US",
            ],
            "generating the debug keystore",
            f"check that {path.parent} is writable (or set MCPM_CACHE_DIR)",
        )  # fmt: skip
        os.replace(partial, path)
    return options


def sign_apk(
    aligned_apk: Path, out_apk: Path, keystore: KeystoreOptions | None = None, tools: AndroidTools | None = None
) -> Path:
    """apksigner sign (v2 + v3; v1 is unnecessary at minSdk 24) with the given or the debug key."""
    tools = tools or find_tools()
    ks = keystore or debug_keystore(tools)
    if not Path(ks.path).is_file():
        raise McpmError(
            f"keystore {ks.path} not found", "pass the path of an existing keystore (or none for the debug key)"
        )
    env = dict(os.environ, MCPM_KS_PASS=ks.store_password, MCPM_KEY_PASS=ks.key_password or ks.store_password)
    cmd = [
        tools.apksigner, "sign", "--ks", str(ks.path), "--ks-key-alias", ks.alias,
        "--ks-pass", "env:MCPM_KS_PASS", "--key-pass", "env:MCPM_KEY_PASS",
        "--v1-signing-enabled", "false", "--v2-signing-enabled", "true", "--v3-signing-enabled", "true",
        "--out", str(out_apk), str(aligned_apk),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace")
    if proc.returncode != 0:
        output = proc.stderr + proc.stdout
        low = output.lower()
        if "password" in low or "keystore was tampered" in low or "final block not properly padded" in low:
            raise McpmError(
                f"cannot open keystore {ks.path} (alias {ks.alias}): the keystore or key password is wrong",
                "check the store and key passwords of your keystore",
            )
        if "alias" in low or "no key" in low or "entry" in low:
            raise McpmError(
                f"keystore {ks.path} has no key named {ks.alias!r}: {_first_error_line(output)}",
                "list its aliases with `keytool -list -keystore FILE`",
            )
        raise McpmError(f"apksigner sign failed: {_first_error_line(output)}", "check the keystore options")
    return out_apk


# ------------------------------------------------------------------------------------------------------- building


def _stage_bundles(bundles: dict[str, Path], assets_dir: Path) -> list[str]:
    """Links (or copies) each bundle into assets/models/<name>/, skipping *.o files and dotfiles; returns the
    asset paths expected in the APK."""
    expected: list[str] = []
    for name, folder in bundles.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise McpmError(f"model name {name!r} cannot be an asset folder", "use letters, digits, '.', '_' and '-'")
        folder = Path(folder)
        if not folder.is_dir():
            raise McpmError(f"bundle folder {folder} not found", "export the model first with mcpm-export")
        for src in sorted(folder.rglob("*")):
            rel = src.relative_to(folder)
            if not src.is_file() or src.name.endswith(SKIPPED_BUNDLE_SUFFIXES):
                continue
            if any(part.startswith(".") for part in rel.parts):
                continue
            dst = assets_dir / "models" / name / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
            expected.append(f"assets/models/{name}/{rel.as_posix()}")
    return expected


def _aligned_extra(offset: int, name: str, align: int) -> bytes:
    """An Android alignment extra field (ID 0xD935, as zipalign/apksigner write it) that puts the data of an entry
    whose local header starts at ``offset`` on a multiple of ``align``."""
    base = offset + 30 + len(name.encode("utf-8")) + 6  # local header + name + the extra's id/size/alignment
    pad = (-base) % align
    return struct.pack("<HHH", ALIGN_EXTRA_ID, 2 + pad, align) + b"\0" * pad


def _reader(path: Path) -> Callable[[], IO[bytes]]:
    def open_binary() -> IO[bytes]:
        return path.open("rb")

    return open_binary


def _write_aligned_apk(aapt_apk: Path, dex: Path, native_lib: Path, out: Path) -> None:
    """Writes aapt's APK plus classes.dex (deflated) and lib/arm64-v8a/libmcpm.so (stored) to ``out`` with stored
    entries 4-byte aligned and the .so on a 16 KiB boundary (so it maps from the APK on 4 KiB and 16 KiB page
    devices; ``zipalign -p`` only aligns to 4 KiB). Entries keep their compression; timestamps are fixed."""
    with zipfile.ZipFile(aapt_apk) as src:
        names = set(src.namelist())
        for entry in ("classes.dex", NATIVE_LIB_ENTRY):
            if entry in names:
                raise McpmError(f"{entry} is already in the aapt output", "remove it from android_app/")
        items: list[tuple[str, int, Callable[[], IO[bytes]], int]] = [
            (i.filename, i.compress_type, functools.partial(src.open, i), i.file_size)
            for i in src.infolist()
            if not i.is_dir()
        ]
        items.append(("classes.dex", zipfile.ZIP_DEFLATED, _reader(dex), dex.stat().st_size))
        items.append((NATIVE_LIB_ENTRY, zipfile.ZIP_STORED, _reader(native_lib), native_lib.stat().st_size))
        with open(out, "wb") as raw, zipfile.ZipFile(raw, "w") as dst:
            for name, method, opener, size in items:
                info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
                info.compress_type = method
                info.file_size = size
                info.external_attr = 0o644 << 16
                if method == zipfile.ZIP_STORED:
                    align = SO_ALIGN if name.endswith(".so") else 4
                    info.extra = _aligned_extra(raw.tell(), name, align)
                with opener() as fin, dst.open(info, "w", force_zip64=False) as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                if method == zipfile.ZIP_STORED:
                    data_at = info.header_offset + 30 + len(name.encode("utf-8")) + len(info.extra)
                    if data_at % align:
                        raise McpmError(f"could not align {name} in the APK (a zip64 entry?)", "keep the APK < 2 GiB")


def _check_native_lib(native_lib: Path) -> None:
    if not native_lib.is_file():
        raise McpmError(f"native library {native_lib} not found", "build it first (mcpm.export.android.native)")
    head = native_lib.read_bytes()[:20]
    # ELF magic, 64-bit, little endian, ET_DYN, EM_AARCH64 (183)
    if (
        head[:4] != b"\x7fELF"
        or head[4] != 2
        or head[5] != 1
        or head[16:18] != b"\x03\x00"
        or head[18:20] != b"\xb7\x00"
    ):
        raise McpmError(
            f"{native_lib} is not an arm64 (aarch64) shared library",
            "build libmcpm.so for aarch64-linux-android24 (mcpm.export.android.native)",
        )


def build_apk(
    native_lib: Path,
    out_apk: Path,
    bundles: dict[str, Path] | None = None,
    keystore: KeystoreOptions | None = None,
    work_dir: Path | None = None,
) -> Path:
    """Builds, aligns and signs android_app/ with ``native_lib`` as lib/arm64-v8a/libmcpm.so and each bundle
    folder as assets/models/<name>/ (without its *.o files). Returns ``out_apk``."""
    native_lib, out_apk = Path(native_lib), Path(out_apk)
    _check_native_lib(native_lib)
    tools = find_tools()
    ks = keystore or debug_keystore(tools)
    out_apk.parent.mkdir(parents=True, exist_ok=True)
    own_tmp = work_dir is None
    work = Path(tempfile.mkdtemp(prefix="mcpm-apk-")) if work_dir is None else Path(work_dir)
    try:
        if not own_tmp:
            for sub in ("gen", "classes", "dex", "assets"):
                shutil.rmtree(work / sub, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        gen, classes, dex_dir, assets = work / "gen", work / "classes", work / "dex", work / "assets"
        for d in (gen, classes, dex_dir):
            d.mkdir(parents=True)
        fix_app = f"fix the Java sources or resources in {APP_DIR}"

        # 1. Resources, manifest and assets → unsigned APK + R.java.
        expected_assets = _stage_bundles(bundles or {}, assets)
        unsigned = work / "app.unsigned.apk"
        unsigned.unlink(missing_ok=True)
        cmd = [
            tools.aapt, "package", "-f", "-m", "-J", str(gen), "-M", str(APP_DIR / "AndroidManifest.xml"),
            "-S", str(APP_DIR / "res"), "-I", str(tools.android_jar), "-F", str(unsigned),
            "-0", "bin", "--ignore-assets", IGNORE_ASSETS,
        ]  # fmt: skip
        if expected_assets:
            cmd += ["-A", str(assets)]
        _run(cmd, "aapt package", fix_app)

        # 2. Java → classes → classes.dex.
        sources = sorted(str(p) for p in (APP_DIR / "src").rglob("*.java")) + sorted(
            str(p) for p in gen.rglob("*.java")
        )
        _run(
            [
                tools.javac, "-source", "8", "-target", "8", "-bootclasspath", str(tools.android_jar),
                "-encoding", "UTF-8", "-nowarn", "-Xlint:-options", "-g:source,lines", "-d", str(classes), *sources,
            ],
            "javac",
            fix_app,
        )  # fmt: skip
        if tools.dexer_is_d8:
            class_files = sorted(str(p) for p in classes.rglob("*.class"))
            dex_cmd = [tools.dexer, "--release", "--min-api", str(MIN_SDK), "--lib", str(tools.android_jar),
                       "--output", str(dex_dir), *class_files]  # fmt: skip
        else:
            dex_cmd = [tools.dexer, "--dex", f"--min-sdk-version={MIN_SDK}", f"--output={dex_dir / 'classes.dex'}",
                       str(classes)]  # fmt: skip
        _run(dex_cmd, Path(tools.dexer).name, fix_app)

        with zipfile.ZipFile(unsigned) as z:
            missing = sorted(set(expected_assets) - set(z.namelist()))
        if missing:
            raise McpmError(f"aapt left bundle files out of the APK: {', '.join(missing[:5])}", "rename those files")

        # 3. + classes.dex and lib/arm64-v8a/libmcpm.so, aligned (what `zipalign -p -f 4` does, but with the .so on
        # 16 KiB pages), checked with `zipalign -c -p 4`, then signed.
        aligned = work / "app.aligned.apk"
        _write_aligned_apk(unsigned, dex_dir / "classes.dex", native_lib, aligned)
        _run([tools.zipalign, "-c", "-p", "4", str(aligned)], "zipalign -c -p 4 (alignment check)", SETUP_FIX)
        tmp_out = out_apk.with_name(f".{out_apk.name}.partial")
        try:
            sign_apk(aligned, tmp_out, ks, tools)
            os.replace(tmp_out, out_apk)
        finally:
            tmp_out.unlink(missing_ok=True)
            Path(f"{tmp_out}.idsig").unlink(missing_ok=True)
    finally:
        if own_tmp:
            shutil.rmtree(work, ignore_errors=True)
    return out_apk


# ------------------------------------------------------------------------------------------------------- checking


def _badging_value(line: str, key: str) -> str | None:
    m = re.search(rf"\b{key}='([^']*)'", line)
    return m.group(1) if m else None


def _manifest_activities(aapt: str, apk: Path, package: str) -> list[str]:
    """Activity names from ``aapt dump xmltree APK AndroidManifest.xml`` (relative names made absolute)."""
    out = _run([aapt, "dump", "xmltree", str(apk), "AndroidManifest.xml"], "aapt dump xmltree", "rebuild the APK")
    activities: list[str] = []
    in_activity: int | None = None
    for line in out.splitlines():
        indent = len(line) - len(line.lstrip())
        text = line.strip()
        if text.startswith("E: "):
            in_activity = indent if text.startswith(("E: activity ", "E: activity-alias ")) else None
            continue
        if in_activity is not None and text.startswith("A: android:name("):
            m = re.search(r'="([^"]*)"', text)
            if m:
                name = m.group(1)
                activities.append(package + name if name.startswith(".") else name)
            in_activity = None
    return activities


def verify_apk(apk: Path) -> ApkReport:
    """``apksigner verify --verbose`` + ``aapt dump badging``/``xmltree`` + zip checks; McpmError when the
    signature does not verify."""
    apk = Path(apk)
    if not apk.is_file():
        raise McpmError(f"APK {apk} not found", "build it with `mcpm-export MODEL --target android -o OUT`")
    tools = find_tools()
    proc = subprocess.run([tools.apksigner, "verify", "--verbose", str(apk)], capture_output=True, text=True,
                          errors="replace")  # fmt: skip
    if proc.returncode != 0:
        raise McpmError(
            f"{apk} does not verify (apksigner): {_first_error_line(proc.stdout + proc.stderr)}",
            "the APK was modified or badly signed; rebuild it",
        )
    schemes = [
        f"v{m.group(1)}" for m in re.finditer(r"Verified using v(\d+(?:\.\d+)?) scheme[^:]*:\s*true", proc.stdout)
    ]
    badging = _run([tools.aapt, "dump", "badging", str(apk)], "aapt dump badging", "rebuild the APK")
    package = version_code = version_name = ""
    min_sdk = target_sdk = None
    native: list[str] = []
    launchable: str | None = None
    for line in badging.splitlines():
        if line.startswith("package:"):
            package = _badging_value(line, "name") or ""
            version_code = _badging_value(line, "versionCode") or ""
            version_name = _badging_value(line, "versionName") or ""
        elif line.startswith("sdkVersion:"):
            min_sdk = int(line.split("'")[1])
        elif line.startswith("targetSdkVersion:"):
            target_sdk = int(line.split("'")[1])
        elif line.startswith("native-code:"):
            native = re.findall(r"'([^']*)'", line)
        elif line.startswith("launchable-activity:"):
            launchable = _badging_value(line, "name")
    activities = _manifest_activities(tools.aapt, apk, package)
    aligned = subprocess.run([tools.zipalign, "-c", "-p", "4", str(apk)], capture_output=True).returncode == 0
    dex_bytes = native_bytes = 0
    stored = False
    assets: dict[str, int] = {}
    with zipfile.ZipFile(apk) as z:
        for info in z.infolist():
            if info.filename == "classes.dex":
                dex_bytes = info.file_size
            elif info.filename == NATIVE_LIB_ENTRY:
                native_bytes = info.file_size
                stored = info.compress_type == zipfile.ZIP_STORED
            elif info.filename.startswith("assets/"):
                assets[info.filename] = info.file_size
    return ApkReport(
        path=apk,
        package=package,
        version_code=version_code,
        version_name=version_name,
        min_sdk=min_sdk,
        target_sdk=target_sdk,
        native_code=native,
        launchable_activity=launchable,
        activities=activities,
        signature_schemes=schemes,
        size_bytes=apk.stat().st_size,
        dex_bytes=dex_bytes,
        native_lib_bytes=native_bytes,
        native_lib_stored=stored,
        aligned=aligned,
        assets=assets,
    )


# ---------------------------------------------------------------------------------------------------- JNI symbols


def jni_mangle(name: str) -> str:
    """JNI name mangling of a class or method name: '.'/'/' → '_', '_' → '_1', ';' → '_2', '[' → '_3',
    non-alphanumeric ASCII and non-ASCII → '_0xxxx' (UTF-16 code units)."""
    out: list[str] = []
    for ch in name:
        if ch in "./":
            out.append("_")
        elif ch == "_":
            out.append("_1")
        elif ch == ";":
            out.append("_2")
        elif ch == "[":
            out.append("_3")
        elif ch.isascii() and ch.isalnum():
            out.append(ch)
        else:
            data = ch.encode("utf-16-be")
            out.extend(f"_0{int.from_bytes(data[i : i + 2], 'big'):04x}" for i in range(0, len(data), 2))
    return "".join(out)


_PRIMITIVES = {"boolean": "Z", "byte": "B", "char": "C", "short": "S", "int": "I", "long": "J", "float": "F",
               "double": "D", "void": "V"}  # fmt: skip
_DECL_RE = re.compile(r"(\w+)\s*\(([^()]*)\)\s*(?:throws\s+[\w.,\s]+)?$")


def _strip_java(text: str) -> str:
    """Java source without comments, string and char literals (so 'native' in them is not matched)."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.DOTALL)
    return pattern.sub(" ", text)


def _descriptor(param_type: str, package: str, outer: str, nested: set[str]) -> str:
    t = re.sub(r"\s+", "", re.sub(r"<.*>", "", param_type))
    t = re.sub(r"\b(final)\b", "", t)
    dims = t.count("[]") + (1 if t.endswith("...") else 0)
    base = t.replace("[]", "").replace("...", "")
    if base in _PRIMITIVES:
        desc = _PRIMITIVES[base]
    else:
        if base in nested:
            cls = f"{package}.{outer}${base}".replace(".", "/")
        elif base.startswith(f"{outer}.") and base.split(".", 1)[1] in nested:
            cls = f"{package}.{outer}${base.split('.', 1)[1]}".replace(".", "/")
        elif "." in base:
            cls = base.replace(".", "/")
        elif base in {"String", "Object", "Class", "Throwable"}:
            cls = f"java/lang/{base}"
        else:
            cls = f"{package}.{base}".replace(".", "/")
        desc = f"L{cls};"
    return "[" * dims + desc


def java_native_methods(src_dir: Path) -> set[str]:
    """The JNI symbols (``Java_<class>_<method>``, mangled per the JNI spec) that the ``native`` methods of the Java
    sources under ``src_dir`` bind to. Overloaded native methods get the long form ``..._<method>__<args>``."""
    symbols: set[str] = set()
    for path in sorted(Path(src_dir).rglob("*.java")):
        text = _strip_java(path.read_text(encoding="utf-8"))
        pkg = re.search(r"^\s*package\s+([\w.]+)\s*;", text, re.MULTILINE)
        package = pkg.group(1) if pkg else ""
        outer = path.stem
        nested = set(re.findall(r"\b(?:class|interface|enum)\s+(\w+)", text)) - {outer}
        methods: list[tuple[str, str]] = []
        for statement in re.split(r"[;{}]", text):  # a native method declaration is one statement ending in ';'
            if re.search(r"\bnative\b", statement):
                m = _DECL_RE.search(statement.strip())
                if m:
                    methods.append((m.group(1), m.group(2)))
        counts: dict[str, int] = {}
        for name, _ in methods:
            counts[name] = counts.get(name, 0) + 1
        prefix = "Java_" + jni_mangle(f"{package}.{outer}" if package else outer)
        for name, params in methods:
            symbol = f"{prefix}_{jni_mangle(name)}"
            if counts[name] > 1:
                args = []
                for p in filter(None, (p.strip() for p in params.split(","))):
                    type_part = p.rsplit(None, 1)[0] if " " in p else p
                    args.append(_descriptor(type_part, package, outer, nested))
                symbol += "__" + jni_mangle("".join(args))
            symbols.add(symbol)
    return symbols
