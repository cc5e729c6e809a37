"""The Android stage of ``mcpm-export --target android``: libmcpm.so (runtime + the bundle's kernels + JNI) and
the signed demo APK, with the bundle in the APK's assets when it is small enough.

Output layout (OUT = ``-o``)::

    OUT/bundle/                     the bundle (what ``mcpm android push-model`` copies to a phone)
    OUT/lib/arm64-v8a/libmcpm.so    the native library (also inside the APK)
    OUT/mcpm-demo.apk               signed demo app
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mcpm.errors import McpmError

APK_NAME = "mcpm-demo.apk"
EMBED_LIMIT_BYTES = 256 << 20  # bundles up to this size go into the APK's assets by default


@dataclass
class AndroidPackage:
    bundle: Path
    library: Path
    apk: Path
    model_name: str
    embedded: bool
    apk_bytes: int

    def next_steps(self) -> str:
        lines = ["next, with a phone connected over USB (developer options: USB debugging on):",
                 f"  mcpm android install {self.apk}"]
        if not self.embedded:
            lines.append(f"  mcpm android push-model {self.bundle} --name {self.model_name}")
        lines += [f"  mcpm android bench --model {self.model_name} -p 128 -n 64 -t 4",
                  "  then open the 'mcpm' app on the phone to chat",
                  "or all at once (install, self-test and benchmark of every kernel set, results/<phone>.html):",
                  f"  mcpm android verify {self.apk.parent}"]
        return "\n".join(lines)


def model_name_for(model_dir: Path) -> str:
    """A folder-safe model name from the checkpoint folder (the shipped model is 'default')."""
    name = Path(model_dir).resolve().name
    if name == "default_model":
        return "default"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return safe or "model"


def embed_decision(bundle: Path, embed: bool | None) -> bool:
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and p.suffix != ".o")
    return size <= EMBED_LIMIT_BYTES if embed is None else embed


def package_android(bundle: Path, out_dir: Path, model_name: str, embed: bool | None = None,
                    keystore: object | None = None) -> AndroidPackage:
    """libmcpm.so from the bundle's kernel objects, then the signed APK (bundle in assets when embedded)."""
    from mcpm.export.android.apk import KeystoreOptions, build_apk
    from mcpm.export.android.native import build_android_library, check_android_library
    from mcpm.export.compiler.plan import kernel_object_files

    if keystore is not None and not isinstance(keystore, KeystoreOptions):
        raise McpmError("internal: keystore must be KeystoreOptions")
    lib = build_android_library(kernel_object_files(bundle), out_dir / "lib" / "arm64-v8a" / "libmcpm.so")
    report = check_android_library(lib)
    if not report.ok:
        raise McpmError(f"the built {lib.name} breaks the Android rules: {'; '.join(report.problems)}",
                        "report this as a bug in mcpm")
    embedded = embed_decision(bundle, embed)
    apk = build_apk(lib, out_dir / APK_NAME, {model_name: bundle} if embedded else None, keystore)
    return AndroidPackage(bundle, lib, apk, model_name, embedded, apk.stat().st_size)
