"""The Swift package and the demo app, read as text (no Swift toolchain here): every C function the Swift code calls
exists in mcpm.h with as many parameters, the struct fields it sets exist, platform-only APIs stay inside
`#if canImport(...)` / `#if os(...)`, the app's Info.plist and the package manifest are what Xcode needs."""

from __future__ import annotations

import plistlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IOS = ROOT / "ios_app"
PKG = IOS / "MCPM"
SWIFT_LIB = sorted((PKG / "Sources" / "MCPM").glob("*.swift"))
SWIFT_APP = sorted((IOS / "App").glob("*.swift"))
HEADER = ROOT / "runtime_bindings" / "c" / "mcpm.h"
TABLE_HEADER = PKG / "Sources" / "CMCPM" / "include" / "mcpm_kernel_table.h"  # the generated table's function


# ---------------------------------------------------------------- parsing


def _strip_c_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", " ", text, flags=re.S)


def c_functions() -> dict[str, list[str]]:
    """mcpm.h (+ the package's mcpm_kernel_table.h): function name -> parameter declarations ([] for (void))."""
    text = _strip_c_comments(HEADER.read_text())
    table = _strip_c_comments(TABLE_HEADER.read_text()).replace("int mcpm_", "MCPM_API int mcpm_")
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"MCPM_API\s+[\w\s\*]+?\b(mcpm_\w+)\s*\(([^)]*)\)\s*;", text + table):
        params = [p.strip() for p in " ".join(m.group(2).split()).split(",")]
        out[m.group(1)] = [] if params == ["void"] else params
    return out


def c_struct_fields(name: str) -> set[str]:
    text = _strip_c_comments(HEADER.read_text())
    m = re.search(r"typedef struct " + name + r"\s*\{(.*?)\}\s*" + name + ";", text, re.S)
    assert m, name
    return {re.findall(r"(\w+)\s*(?:\[[^\]]*\])?\s*$", decl.strip())[0] for decl in m.group(1).split(";")
            if decl.strip()}


def c_typedefs() -> set[str]:
    text = _strip_c_comments(HEADER.read_text())
    return set(re.findall(r"\}\s*(mcpm_\w+)\s*;", text)) | set(re.findall(r"typedef struct \w+ (mcpm_\w+);", text)) \
        | set(re.findall(r"typedef \w+ \(\*(mcpm_\w+)\)", text))


def _strip_swift(text: str) -> str:
    """Comments and string literals blanked (so their words are not taken for code)."""
    text = re.sub(r'"""(.*?)"""', '""', text, flags=re.S)
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\\n])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def _split_args(s: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        args.append(cur.strip())
    return args


def swift_c_calls(files: list[Path]) -> list[tuple[str, str, list[str]]]:
    """(file, function, arguments) of every mcpm_*( call in files."""
    out = []
    for f in files:
        text = _strip_swift(f.read_text())
        for m in re.finditer(r"\b(mcpm_\w+)\s*\(", text):
            depth, i = 1, m.end()
            while depth and i < len(text):
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
            out.append((f.name, m.group(1), _split_args(text[m.end():i - 1])))
    return out


# ---------------------------------------------------------------- C API coverage


def test_swift_calls_only_functions_of_mcpm_h_with_matching_arity() -> None:
    funcs = c_functions()
    assert {"mcpm_model_load", "mcpm_session_chat", "mcpm_stats_json"} <= set(funcs)
    calls = swift_c_calls(SWIFT_LIB)
    used = {name for _, name, _ in calls}
    # what the wrapper must cover: load/free, sessions, chat/complete, cancel via callback, reset, stats, benchmark
    assert {"mcpm_default_params", "mcpm_model_load", "mcpm_last_error", "mcpm_model_free", "mcpm_vocab_size",
            "mcpm_context_length", "mcpm_default_sampling", "mcpm_session_new", "mcpm_session_chat",
            "mcpm_session_complete", "mcpm_session_reset", "mcpm_session_last_error", "mcpm_session_free",
            "mcpm_stats_json", "mcpm_generate", "mcpm_kernel_table_count"} <= used
    for file, name, args in calls:
        assert name in funcs, f"{file}: {name} is not declared in mcpm.h"
        assert len(args) == len(funcs[name]), f"{file}: {name} takes {len(funcs[name])} arguments, Swift passes " \
                                              f"{len(args)}: {args}"
    # simple type checks: C pointers get nil/&var/pointers, never a Swift literal number; callbacks are the
    # declared C callback types
    for file, name, args in calls:
        for decl, arg in zip(funcs[name], args, strict=True):
            if decl.endswith("*") or "*" in decl.split()[-1]:
                assert not re.fullmatch(r"-?\d+(\.\d+)?", arg), f"{file}: {name}: pointer {decl!r} given {arg}"
            if decl.startswith(("int ", "size_t ", "uint64_t ")) and "*" not in decl:
                assert arg != "nil", f"{file}: {name}: {decl!r} given nil"
    # no C function is called from the app: it goes through the MCPM Swift API only
    assert swift_c_calls(SWIFT_APP) == []


def test_swift_sets_only_existing_c_struct_fields_and_types() -> None:
    settings = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMSettings.swift").read_text())
    model = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMModel.swift").read_text())
    sampling_fields = set(re.findall(r"\bs\.(\w+)\s*=", settings))
    params_fields = set(re.findall(r"\bparams\.(\w+)\s*=", model))
    assert sampling_fields == c_struct_fields("mcpm_sampling")  # every field is mapped
    assert params_fields and params_fields <= c_struct_fields("mcpm_params")
    all_swift = "\n".join(_strip_swift(f.read_text()) for f in SWIFT_LIB)
    named_types = set(re.findall(r"\b(mcpm_\w+)\b(?!\s*\()", all_swift))
    assert named_types and named_types <= c_typedefs(), named_types - c_typedefs()


def test_stats_keys_match_the_runtime() -> None:
    """MCPMStats decodes every key mcpm_stats_json writes."""
    runtime = (ROOT / "runtime_bindings" / "c" / "mcpm_generate.c").read_text()
    fmt = runtime[runtime.index("int mcpm_stats_json"):]
    keys = set(re.findall(r'\\"(\w+)\\": ', fmt[:fmt.index("m->load_ms")]))
    stats = (PKG / "Sources" / "MCPM" / "MCPMStats.swift").read_text()
    swift_keys = set(re.findall(r'case \w+ = "(\w+)"', stats)) | set(re.findall(r"^\s*case (\w+)$", stats, re.M))
    assert keys <= swift_keys, keys - swift_keys
    # the keys Swift requires (non-optional properties) are all written by the runtime
    props = dict(re.findall(r"public var (\w+): (\w+\??)", stats))
    cases = dict(re.findall(r"case (\w+)(?: = \"(\w+)\")?", stats))
    required = {cases[p] or p for p, t in props.items() if not t.endswith("?") and p in cases}
    assert required and required <= keys, required - keys


# ---------------------------------------------------------------- platform guards

PLATFORM_ONLY = re.compile(r"\b(import\s+(UIKit|AppKit|SwiftUI|PhotosUI)|UIApplication|UIImage|UIDevice|UIScreen|"
                           r"UIViewController|NSImage|NSApplication|NSWorkspace)\b")
GUARD = re.compile(r"#(if|elseif)\b.*\b(canImport|os|targetEnvironment)\s*\(")


def unguarded_platform_uses(text: str) -> list[str]:
    """Lines using platform-only APIs outside a #if canImport(...)/os(...) branch (an #else branch is not a guard)."""
    stack: list[bool] = []  # per open #if: is the current branch a platform guard?
    bad = []
    for n, raw in enumerate(_strip_swift(text).splitlines(), 1):
        line = raw.strip()
        if line.startswith("#if"):
            stack.append(bool(GUARD.match(line)))
        elif line.startswith("#elseif"):
            stack[-1] = bool(GUARD.match(line))
        elif line.startswith("#else"):
            stack[-1] = False
        elif line.startswith("#endif"):
            stack.pop()
        elif PLATFORM_ONLY.search(line) and not any(stack):
            bad.append(f"{n}: {line}")
    return bad


def test_platform_only_apis_are_guarded_in_the_package() -> None:
    for f in SWIFT_LIB:
        assert unguarded_platform_uses(f.read_text()) == [], f.name
    # the checker itself
    assert unguarded_platform_uses("import UIKit\n") == ["1: import UIKit"]
    assert unguarded_platform_uses("#if canImport(UIKit)\nimport UIKit\n#else\nlet i = NSImage()\n#endif\n") == \
        ["4: let i = NSImage()"]
    assert unguarded_platform_uses("#if os(iOS)\nlet a = UIDevice.current\n#endif\n") == []


def test_gpu_hook_is_marked() -> None:
    settings = (PKG / "Sources" / "MCPM" / "MCPMSettings.swift").read_text()
    assert "METAL HOOK" in settings and "self == .cpu" in settings


def test_image_input_is_wired_to_the_runtime() -> None:
    """MiniCPM-V images: MCPMModel.hasVision asks the runtime, the session encodes RGB8 pixels drawn from a CGImage
    (alpha dropped) on the model's queue, UIKit stays guarded, the app shows the picker only for vision bundles."""
    image = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMImageInput.swift").read_text())
    model = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMModel.swift").read_text())
    assert "NOT WIRED" not in image and "notAvailable" not in image
    assert re.search(r"hasVision = mcpm_model_has_vision\(model\) == 1", model)
    calls = {name: args for _, name, args in swift_c_calls([PKG / "Sources" / "MCPM" / "MCPMImageInput.swift"])}
    assert calls["mcpm_encode_image"][:2] == ["session", "p.baseAddress"]
    assert "mcpm_session_clear_images" in calls and "mcpm_session_last_error" in calls
    assert "model.queue.async" in image  # the runtime's one-thread-per-model rule
    assert "CGImageAlphaInfo.noneSkipLast" in image and "bitsPerComponent: 8" in image
    assert re.search(r"rgb\[3 \* i \+ 2\] = rgba\[4 \* i \+ 2\]", image)  # RGBA8 -> RGB8
    assert "public func encodeImage(_ image: CGImage) async throws -> MCPMImageEncoding" in image
    assert "public func encodeImage(_ image: UIImage) async throws -> MCPMImageEncoding" in image
    # the image size limit is the bundle's vision.max_pixels, asked from the runtime: no literal in Swift
    session = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMSession.swift").read_text())
    assert re.search(r"maxImagePixels = Int\(model\.queue\.sync \{ mcpm_session_max_pixels\(session\) \}\)", session)
    assert "MCPMImagePixels(image, maxPixels: maxImagePixels)" in image and "4096" not in image
    stats = (PKG / "Sources" / "MCPM" / "MCPMStats.swift").read_text()
    for key in ("image_encode_ms", "image_slices", "image_patches"):
        assert f'"{key}"' in stats
    view = _strip_swift((IOS / "App" / "ChatView.swift").read_text())
    assert "if chat.model?.hasVision == true {" in view and ".photosPicker(" in view
    assert "UIImagePickerController" in view
    with open(IOS / "App" / "Info.plist", "rb") as f:
        info = plistlib.load(f)
    assert info["NSCameraUsageDescription"] and info["NSPhotoLibraryUsageDescription"]


# ---------------------------------------------------------------- manifest, module map, Info.plist


def test_package_manifest_declares_the_targets() -> None:
    text = (PKG / "Package.swift").read_text()
    assert text.startswith("// swift-tools-version:5.9")
    assert '.binaryTarget(name: "MCPMKernels", path: "MCPMKernels.xcframework")' in text
    assert re.search(r'name: "CMCPM",\s*dependencies: \["MCPMKernels"\],\s*path: "Sources/CMCPM",\s*'
                     r'publicHeadersPath: "include"', text)
    assert re.search(r'name: "MCPM",\s*dependencies: \["CMCPM"\]', text)
    assert ".library(name: \"MCPM\", targets: [\"MCPM\"])" in text and ".unsafeFlags(" not in text
    modulemap = (PKG / "Sources" / "CMCPM" / "include" / "module.modulemap").read_text()
    assert re.search(r'module CMCPM \{\s*header "mcpm.h"\s*header "mcpm_kernel_table.h"\s*export \*\s*\}', modulemap)
    for f in SWIFT_LIB:
        if "mcpm_" in _strip_swift(f.read_text()):
            assert "import CMCPM" in f.read_text(), f.name


def test_app_info_plist_is_valid() -> None:
    with open(IOS / "App" / "Info.plist", "rb") as f:
        info = plistlib.load(f)
    required = {"CFBundleIdentifier": "$(PRODUCT_BUNDLE_IDENTIFIER)", "CFBundleExecutable": "$(EXECUTABLE_NAME)",
                "CFBundlePackageType": "APPL", "CFBundleInfoDictionaryVersion": "6.0", "LSRequiresIPhoneOS": True,
                "UIFileSharingEnabled": True, "LSSupportsOpeningDocumentsInPlace": True}
    for key, value in required.items():
        assert info.get(key) == value, key
    assert info["CFBundleShortVersionString"] and info["CFBundleVersion"]
    assert isinstance(info["UILaunchScreen"], dict) and "arm64" in info["UIRequiredDeviceCapabilities"]


def test_app_uses_the_documented_benchmark_contract() -> None:
    text = "\n".join(f.read_text() for f in SWIFT_APP)
    for needle in ('"-benchmark"', '"-model"', '"-prompt-tokens"', '"-gen-tokens"', '"-threads"', '"latest.json"',
                   "MCPM_BENCH ", "MCPM_BENCH_ERROR ", ".fileImporter(", "PhotosPicker", '"Models"', '"-selftest"',
                   "MCPM_SELFTEST ", "selfTest()", "kernelVariants()", '"selftest"'):
        assert needle in text, needle
    readme = (IOS / "README.md").read_text()
    for needle in ("-benchmark", "latest.json", "decode_tok_s", "Verified here", "Only on a Mac", "-selftest",
                   "Documents/selftest/latest.json", "MCPM_SELFTEST"):
        assert needle in readme, needle


@pytest.mark.parametrize("swift", SWIFT_LIB + SWIFT_APP, ids=lambda p: p.name)
def test_swift_sources_are_balanced(swift: Path) -> None:
    """A cheap syntax sanity check: braces, brackets and parentheses balance, #if/#endif pair up."""
    text = _strip_swift(swift.read_text())
    for o, c in ("{}", "()", "[]"):
        assert text.count(o) == text.count(c), (swift.name, o)
    assert len(re.findall(r"^\s*#if\b", text, re.M)) == len(re.findall(r"^\s*#endif\b", text, re.M))


# ---------------------------------------------------------------- the GPU (Metal) wiring


def test_device_setting_reaches_mcpm_params_with_values_the_runtime_accepts() -> None:
    """MCPMDevice's raw values are the devices mcpm_model_load accepts, and MCPMModel passes the chosen one as
    params.device; .gpu/.auto are available exactly under the compilation condition GPU exports define."""
    from mcpm.export.ios.package import METAL_DEFINE, PACKAGE_GPU_EDITS

    settings = (PKG / "Sources" / "MCPM" / "MCPMSettings.swift").read_text()
    enum = re.search(r"public enum MCPMDevice\b.*?\{(.*?)\n\}", settings, re.S).group(1)
    cases = re.findall(r"^\s*case (\w+)\s*$", enum, re.M)
    runtime = (ROOT / "runtime_bindings" / "c" / "mcpm_runtime.c").read_text()
    accepted = set(re.findall(r'strcmp\(m->want_device, "(\w+)"\)', runtime))
    assert set(cases) == accepted == {"cpu", "gpu", "auto"}
    assert f"#if {METAL_DEFINE}" in _strip_swift(enum) and "self == .cpu" in enum
    assert any(f'.define("{METAL_DEFINE}")' in new for _, new in PACKAGE_GPU_EDITS)
    model = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMModel.swift").read_text())
    assert re.search(r"settings\.device\.rawValue\.withCString \{ cDevice in", model)
    assert re.search(r"params\.device = cDevice\b", model)
    assert "device" in c_struct_fields("mcpm_params")
    # the runtime's answer is surfaced (where it runs, why auto stayed on the CPU)
    assert {"mcpm_model_device", "mcpm_model_notice"} <= {n for _, n, _ in swift_c_calls(SWIFT_LIB)}


def test_gpu_package_manifest_edits_apply_to_the_template() -> None:
    """The anchors package_ios(device="gpu") edits exist once in Package.swift, and the result keeps the checks of
    test_package_manifest_declares_the_targets (no unsafeFlags) plus Metal.framework for the C target."""
    from mcpm.export.ios.package import PACKAGE_GPU_EDITS

    text = (PKG / "Package.swift").read_text()
    for anchor, new in PACKAGE_GPU_EDITS:
        assert text.count(anchor) == 1, anchor
        text = text.replace(anchor, new)
    assert '.linkedFramework("Metal")' in text and ".unsafeFlags(" not in text
    assert re.search(r'name: "MCPM",\s*dependencies: \["CMCPM"\],\s*path: "Sources/MCPM",\s*swiftSettings: '
                     r'\[\.define\("MCPM_METAL"\)\]', text)
    for o, c in ("{}", "()", "[]"):
        assert _strip_swift(text).count(o) == _strip_swift(text).count(c)


def test_chat_view_model_survives_new_chat_and_model_switches() -> None:
    """Issue-19 crashes of the chat screen, by construction: a streaming reply finds its message by id (New chat
    may empty the list meanwhile; the button is also disabled while a reply streams), and a model load that
    finishes after a newer one started drops its model, so the chat runs what the picker shows."""
    vm = _strip_swift((IOS / "App" / "ChatViewModel.swift").read_text())
    assert "messages[index]" not in vm
    assert re.search(r"messages\.firstIndex\(where: \{ \$0\.id == reply\.id \}\)", vm)
    assert re.search(r"let serial = unload\(\)", vm) and re.search(r"func unload\(\) -> Int \{\s*loadSerial \+= 1", vm)
    load = vm[vm.index("func load("):vm.index("func attachImage(")]
    assert load.count("guard serial == loadSerial else { return }") == 2  # after the load, success or error
    after_await = load[load.index("try await MCPMModel.load("):]
    assert after_await.index("guard serial == loadSerial") < after_await.index("session = try MCPMSession")
    view = (IOS / "App" / "ChatView.swift").read_text()
    assert re.search(r'Button\("New chat"\).*\.disabled\([^)]*chat\.isGenerating', view)
    # no queue.sync from the main actor for stats: the app asks the async variant
    assert ".stats()" not in vm and vm.count("await") >= 3 and "currentStats()" in vm
    model = _strip_swift((PKG / "Sources" / "MCPM" / "MCPMModel.swift").read_text())
    assert re.search(r"func currentStats\(\) async throws -> MCPMStats \{\s*try await withCheckedThrowingContinuation"
                     r" \{ continuation in\s*queue\.async \{", model)
