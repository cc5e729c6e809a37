"""``mcpm android verify``: one command that turns a phone into a complete report (docs/self-test.md).

For an ``mcpm-export --target android`` output folder: install the APK, put the model on the phone (it is inside the
APK, or pushed), collect the device's facts over adb, then run BenchmarkActivity with the self-test once per CPU
kernel set the phone supports (i8mm, dotprod, neon) and on the GPU when the bundle has GPU kernels. Every run checks
the bundle's golden results (mcpm_self_test_json) and measures prefill/decode tok/s, TTFT, load time, peak RSS and the
KV cache. The report is ``results/<device>.json`` and a self-contained ``results/<device>.html``.
"""

from __future__ import annotations

import json
import re
import time
import zipfile
from pathlib import Path
from typing import Any

from mcpm import __version__
from mcpm.errors import McpmError
from mcpm.export.android.adb import BUNDLE_CONFIG, Adb
from mcpm.export.android.package import APK_NAME, model_name_for

# getprop keys of the report's "device" section (absent keys are left out)
PROPS = {"manufacturer": "ro.product.manufacturer", "model": "ro.product.model", "device": "ro.product.device",
         "soc_manufacturer": "ro.soc.manufacturer", "soc_model": "ro.soc.model", "board": "ro.board.platform",
         "hardware": "ro.hardware", "android": "ro.build.version.release", "sdk": "ro.build.version.sdk",
         "abi": "ro.product.cpu.abi", "build": "ro.build.fingerprint"}
# /proc/cpuinfo "CPU part" of the cores phones have (ARM's and a few vendors' ids)
CPU_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
             "0xd47": "Cortex-A710", "0xd48": "Cortex-X2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3",
             "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xd85": "Cortex-X925",
             "0xd87": "Cortex-A725", "0x800": "Kryo 2xx Gold", "0x801": "Kryo 2xx Silver", "0x802": "Kryo 3xx Gold",
             "0x803": "Kryo 3xx Silver", "0x804": "Kryo 4xx Gold", "0x805": "Kryo 4xx Silver", "0x001": "Oryon"}
# the CPU kernel sets, best first, and the /proc/cpuinfo Features they need (the app asks HWCAP itself)
KERNEL_SETS = (("i8mm", ("asimddp", "i8mm")), ("dotprod", ("asimddp",)), ("neon", ()))
FREQ_SCRIPT = ("for c in /sys/devices/system/cpu/cpu[0-9]*; do "
               "echo ${c##*/} $(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null); done")


def parse_getprop(text: str) -> dict[str, str]:
    """``adb shell getprop`` output ("[key]: [value]" lines) as a dict."""
    return dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.MULTILINE))


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """/proc/cpuinfo of an ARM64 Linux kernel: {"features": [...], "cores": [{"cpu", "part", "name"}, ...]}."""
    features: list[str] = []
    cores: list[dict[str, Any]] = []
    for block in re.split(r"\n\s*\n", text):
        fields = dict((k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in block.splitlines()
                                                           if ":" in line))
        if "Features" in fields and not features:
            features = fields["Features"].split()
        if "processor" in fields and fields["processor"].isdigit():
            part = fields.get("CPU part", "").lower()
            cores.append({"cpu": int(fields["processor"]), "part": part, "name": CPU_PARTS.get(part, part or "?"),
                          "implementer": fields.get("CPU implementer", "")})
    return {"features": features, "cores": cores}


def parse_max_freqs(text: str) -> dict[int, int]:
    """FREQ_SCRIPT's lines "cpuN KHZ" -> {N: kHz} (cores without cpufreq left out)."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"cpu(\d+) (\d+)", line.strip())
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def device_facts(adb: Adb) -> dict[str, Any]:
    """Model, SoC, Android version, CPU cores (part, name, max kHz) and features of the connected phone."""
    props = parse_getprop(adb.shell("getprop").stdout)
    cpu = parse_cpuinfo(adb.shell("cat", "/proc/cpuinfo").stdout)
    freqs = parse_max_freqs(adb.run("shell", FREQ_SCRIPT).stdout)
    for core in cpu["cores"]:
        core["max_khz"] = freqs.get(core["cpu"])
    facts: dict[str, Any] = {key: props[prop] for key, prop in PROPS.items() if props.get(prop)}
    facts.update(serial=adb.serial, cpu_features=cpu["features"], cores=cpu["cores"])
    return facts


def device_slug(facts: dict[str, Any]) -> str:
    """A file name for the report: manufacturer-model, lower case (the serial when the phone names neither)."""
    name = f"{facts.get('manufacturer', '')}-{facts.get('model', '')}".strip("-") or str(facts.get("serial", "phone"))
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.") or "phone"


def resolve_export(path: Path) -> tuple[Path | None, Path, str | None, dict[str, Any]]:
    """(APK or None, bundle folder, model name inside the APK or None, the bundle's mcpm-config.json) of an
    ``mcpm-export --target android`` output folder (or of its bundle/ folder)."""
    path = Path(path)
    if (path / BUNDLE_CONFIG).is_file() and (path.parent / APK_NAME).is_file():
        path = path.parent
    bundle = path / "bundle"
    if not (bundle / BUNDLE_CONFIG).is_file():
        raise McpmError(f"{path} is not an Android export (no bundle/{BUNDLE_CONFIG})",
                        "give the folder of `mcpm-export MODEL --target android -o OUT`")
    try:
        config = json.loads((bundle / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise McpmError(f"{bundle / BUNDLE_CONFIG} cannot be read: {exc}", "export the model again") from None
    if not isinstance(config, dict) or not isinstance(config.get("target"), dict):
        raise McpmError(f"{bundle / BUNDLE_CONFIG} is not an mcpm bundle config", "export the model again")
    if config["target"].get("platform") != "android":
        raise McpmError(f"{bundle} was exported for {config['target'].get('name')!r}, not for Android",
                        "export it with --target android")
    apk = path / APK_NAME
    if not apk.is_file():
        return None, bundle, None, config
    try:
        with zipfile.ZipFile(apk) as z:
            names = {n.split("/")[2] for n in z.namelist()
                     if n.startswith("assets/models/") and n.endswith(f"/{BUNDLE_CONFIG}") and n.count("/") == 3}
    except zipfile.BadZipFile:
        raise McpmError(f"{apk} is not a valid APK", "export it again") from None
    return apk, bundle, (sorted(names)[0] if len(names) == 1 else None), config


def run_verify(adb: Adb, export_dir: Path, results_dir: Path, prompt_tokens: int = 128, gen_tokens: int = 64,
               threads: int = 0, timeout: float = 900.0, install: bool = True, model: str | None = None,
               progress: Any = None) -> tuple[dict[str, Any], Path, Path]:
    """The whole verification; returns (report, its JSON path, its HTML path)."""
    from mcpm.export.android.report import write_html
    from mcpm.runtime.bench import has_gpu_kernels

    say = progress or (lambda message: None)
    apk, bundle, embedded, config = resolve_export(export_dir)
    if "golden" not in config:  # before any slow step
        raise McpmError(f"{bundle} has no golden results (mcpm-config.json \"golden\")",
                        "export it again with this mcpm (without --no-golden)")
    if install:
        if apk is None:
            raise McpmError(f"{export_dir} has no {APK_NAME}", "export with --target android, or pass --no-install")
        say(f"installing {apk.name}")
        adb.install(apk)
    if model is None:
        if embedded is None:
            model = model_name_for(Path(export_dir))
            say(f"pushing the model as {model}")
            adb.push_model(bundle, model)
        else:
            model = embedded
    facts = device_facts(adb)
    image = _test_image(results_dir) if "vision" in config else None  # MiniCPM-V: the image encode time too

    def run(device: str, variant: str | None) -> dict[str, Any]:
        say(f"self-test and benchmark: kernels {variant or 'best'} on the {device}")
        try:
            result = adb.bench(model, prompt_tokens, gen_tokens, threads, device, timeout, kernel_variant=variant,
                               self_test=True, image=image)
        except McpmError as exc:
            return {"requested_device": device, "kernel_variant": variant or "-", "error": str(exc)}
        return result

    runs = [run("cpu", None)]
    supported = [v["name"] for v in runs[0].get("kernel_variants", []) if v.get("supported")]
    if not supported and "error" in runs[0]:  # fall back on /proc/cpuinfo when the first run said nothing
        have = set(facts["cpu_features"])
        supported = [name for name, needs in KERNEL_SETS if set(needs) <= have]
    runs += [run("cpu", v) for v in supported if v != runs[0].get("kernel_variant")]
    if has_gpu_kernels(bundle):
        runs.append(run("gpu", None))
    gpu = next((r.get("gpu_device") for r in runs if r.get("gpu_device")), "")
    if gpu:
        facts["gpu"] = gpu
    report: dict[str, Any] = {
        "mcpm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": facts,
        "bundle": {"path": str(bundle), "model": model, "family": config.get("family"),
                   "quantization": config.get("quantization"), "context_length": config.get("context_length"),
                   "golden_reference": config["golden"].get("reference")},
        "settings": {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "threads": threads,
                     **({"image": f"{TEST_IMAGE[0]}x{TEST_IMAGE[1]} generated ({image.name})"} if image else {})},
        "runs": [summarize(r) for r in runs],
    }
    report["pass"] = all(r["verdict"] == "PASS" for r in report["runs"] if r["verdict"] != "NOT RUN")
    results_dir.mkdir(parents=True, exist_ok=True)
    slug = device_slug(facts)
    json_path, html_path = results_dir / f"{slug}.json", results_dir / f"{slug}.html"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    write_html(report, html_path)
    return report, json_path, html_path


TEST_IMAGE = (896, 448)  # width, height: MiniCPM-V 2.0 slices it (overview + 2 slices at scale_resolution 448)


def _test_image(results_dir: Path) -> Path:
    """A fixed, generated PNG (the self-test's gradients and checkerboard at 896x448, the same bytes every time) for
    the image-encode benchmark of MiniCPM-V bundles; written beside the reports."""
    from PIL import Image

    from mcpm.export.golden import golden_image

    path = results_dir / "verify-image.png"
    results_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(golden_image(*TEST_IMAGE)).save(path)
    return path


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """One run of the report: the verdict (PASS / FAIL / NOT RUN) and its reason first, then the numbers."""
    self_test = result.get("self_test") or {}
    if "error" in result:
        gpu_missing = result.get("requested_device") == "gpu"
        verdict, reason = ("NOT RUN" if gpu_missing else "FAIL"), result["error"]
    elif self_test.get("pass") is True:
        verdict, reason = "PASS", ""
    elif self_test.get("pass") is False:
        verdict, reason = "FAIL", self_test.get("reason", "")
    else:
        verdict, reason = "FAIL", f"the self-test did not run: {self_test.get('error', 'no result')}"
    keys = ("prefill_tok_s", "decode_tok_s", "ttft_ms", "load_ms", "peak_rss_kb", "kv_bytes", "threads",
            "image_encode_ms", "image_slices", "thermal_status_before", "thermal_status_after", "gpu_device", "notice",
            "thermal_state_before", "thermal_state_after")  # thermal_state_*: the iOS app's (ProcessInfo)
    return {"kernel_variant": result.get("kernel_variant", "-"),
            "device": result.get("device", result.get("requested_device", "cpu")), "verdict": verdict,
            "reason": reason, **{k: result[k] for k in keys if k in result}, "self_test": self_test}


def report_from_file(path: Path) -> dict[str, Any]:
    """A report from a JSON file: one `mcpm android verify` wrote (as it is), or the iOS app's
    Documents/selftest/latest.json (`-selftest`: its runs summarized like the phone's)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise McpmError(f"cannot read {path}: {exc}", "give a results/<device>.json or the iOS app's "
                        "selftest/latest.json") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list) or not isinstance(data.get("device"),
                                                                                                 dict):
        raise McpmError(f"{path} is not a self-test report (no \"runs\" list and \"device\" object)",
                        "give a results/<device>.json or the iOS app's selftest/latest.json")
    if all(isinstance(r, dict) and "verdict" in r for r in data["runs"]):
        return data  # mcpm android verify's own
    runs = [summarize(r) for r in data["runs"] if isinstance(r, dict)]
    device = data["device"]
    settings: dict[str, Any] = data["settings"] if isinstance(data.get("settings"), dict) else {}
    return {
        "mcpm_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": {**{k: v for k, v in device.items() if k not in ("cores",)}, "manufacturer": "Apple",
                   "model": device.get("model", "iPhone"), "soc_model": device.get("model"),
                   "os": f"{device.get('system', 'iOS')} {device.get('version', '?')}", "cores": [],
                   "cpu_features": []},
        "bundle": {"model": data.get("model", "?"), "quantization": "?", "family": "?", "context_length": "?",
                   "golden_reference": next((r["self_test"].get("reference") for r in runs if r["self_test"]), "?")},
        "settings": {"prompt_tokens": settings.get("prompt_tokens", "?"), "gen_tokens": settings.get("gen_tokens", "?"),
                     "threads": settings.get("threads", 0)},
        "runs": runs,
        "pass": bool(runs) and all(r["verdict"] == "PASS" for r in runs if r["verdict"] != "NOT RUN"),
    }


def format_verify(report: dict[str, Any], json_path: Path, html_path: Path) -> str:
    """The runs as a table (PASS/FAIL and speeds), the reasons, and where the report is."""
    d = report["device"]
    lines = [f"{d.get('manufacturer', '?')} {d.get('model', '?')} ({d.get('soc_model') or d.get('board', '?')}, "
             f"{d.get('os') or 'Android ' + str(d.get('android', '?'))}), model {report['bundle']['model']} "
             f"({report['bundle']['quantization']})",
             f"{'kernels':<10}{'device':<8}{'result':<9}{'prefill tok/s':>14}{'decode tok/s':>13}{'ttft ms':>9}"
             f"{'peak MiB':>10}"]

    def num(r: dict[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
        return format(r[key] / scale, fmt) if isinstance(r.get(key), int | float) else "-"

    for r in report["runs"]:
        lines.append(f"{r['kernel_variant']:<10}{r['device']:<8}{r['verdict']:<9}{num(r, 'prefill_tok_s', '.2f'):>14}"
                     f"{num(r, 'decode_tok_s', '.2f'):>13}{num(r, 'ttft_ms', '.0f'):>9}"
                     f"{num(r, 'peak_rss_kb', '.0f', 1024):>10}")
    lines += [f"{r['kernel_variant']} on the {r['device']}: {r['reason']}" for r in report["runs"] if r["reason"]]
    lines.append(f"{'PASS' if report['pass'] else 'FAIL'}: report {json_path} and {html_path}")
    return "\n".join(lines)
