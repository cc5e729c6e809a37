"""``mcpm android verify`` (docs/self-test.md) against a fake adb that plays a phone: exact argv, the app's result
files parsed (their "self_test" objects are real ones, from the C runtime's self-test of a host bundle), the report's
JSON, and its HTML rendered by headless Chromium (the screenshot must show the chart's bars)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.export.android.adb import BENCH_ACTIVITY, IMAGES_DIR, MODELS_DIR, RESULT_PATH
from mcpm.export.android.report import DECODE_COLOR, PREFILL_COLOR
from mcpm.export.android.verify import FREQ_SCRIPT, parse_cpuinfo, parse_getprop

GETPROP = """[ro.product.manufacturer]: [Google]
[ro.product.model]: [Pixel 8]
[ro.soc.manufacturer]: [Google]
[ro.soc.model]: [Tensor G3]
[ro.build.version.release]: [15]
[ro.build.version.sdk]: [35]
[ro.product.cpu.abi]: [arm64-v8a]
[ro.odd]: [with ] bracket]
"""
CPU_PARTS = ["0xd46"] * 4 + ["0xd4d"] * 4 + ["0xd4e"]  # 4x A510, 4x A715, X3
FEATURES = {"i8mm": "fp asimd aes crc32 atomics asimddp i8mm bf16", "dotprod": "fp asimd crc32 atomics asimddp"}

# The fake adb. Scenario from the environment: FAKE_PHONE = i8mm | dotprod (what the phone's CPU has),
# FAKE_FAIL = a kernel set whose self-test fails; FAKE_STATE = folder with log.jsonl and selftest.json (a real
# mcpm_self_test_json object of a host bundle, which the fake relabels per run).
FAKE_ADB = r'''
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
state = Path(os.environ["FAKE_STATE"])
with open(state / "log.jsonl", "a") as log:
    log.write(json.dumps(argv) + "\n")
if argv[:1] == ["-s"]:
    argv = argv[2:]
phone = os.environ.get("FAKE_PHONE", "i8mm")
sets = ["i8mm", "dotprod", "neon"] if phone == "i8mm" else ["dotprod", "neon"]
if argv == ["devices"]:
    print("List of devices attached\nSER1\tdevice\n")
elif argv[0] == "install":
    print("Performing Streamed Install\nSuccess")
elif argv[0] == "push":
    print(argv[1] + ": 1 file pushed")
elif argv[:2] == ["shell", "getprop"]:
    sys.stdout.write(GETPROP)
elif argv[:3] == ["shell", "cat", "/proc/cpuinfo"]:
    for i, part in enumerate(CPU_PARTS):
        print(f"processor\t: {i}\nBogoMIPS\t: 52.00\nFeatures\t: {FEATURES[phone]}\nCPU implementer\t: 0x41\n"
              f"CPU part\t: {part}\n")
elif argv[:2] == ["shell", FREQ_SCRIPT]:
    for i in range(len(CPU_PARTS)):
        print(f"cpu{i} {[1704000, 2367000, 2910000][0 if i < 4 else 1 if i < 8 else 2]}")
elif argv[:3] == ["shell", "mkdir", "-p"]:
    pass
elif argv[:3] == ["shell", "rm", "-f"]:
    (state / "run.json").unlink(missing_ok=True)
elif argv[:3] == ["shell", "am", "start"]:
    extras = {argv[i + 1]: argv[i + 2] for i in range(len(argv) - 2) if argv[i] in ("--es", "--ei", "--ez")}
    device = extras.get("device", "cpu")
    variant = extras.get("kernel_variant") or sets[0]
    if device == "gpu":
        run = {"error": "OpenCL: no platform (libOpenCL.so not found)"}
    else:
        test = json.loads((state / "selftest.json").read_text())
        test["kernel_variant"] = variant
        if variant == os.environ.get("FAKE_FAIL"):
            test.update({"pass": False, "reason": f"kernel set {variant} on the cpu: step 3: predicts token 9 where "
                                                  "the reference predicts 4 (logit gap 0.2 of max|logit|, tolerance "
                                                  "0.03) (1 of 16 steps off)"})
        speed = {"i8mm": 3.0, "dotprod": 2.0, "neon": 1.0}[variant]
        image = {"image_encode_ms": 2500.0, "image_slices": 3} if "image" in extras else {}
        run = {**image, "load_ms": 300.0, "prefill_tokens": int(extras["prompt_tokens"]), "prefill_tok_s": 40.0 * speed,
               "decode_tokens": int(extras["gen_tokens"]), "decode_tok_s": 5.0 * speed, "ttft_ms": 900.0 / speed,
               "peak_rss_kb": 512000, "threads": 4, "kernel_variant": variant, "device": "cpu", "kv_bytes": 2 ** 22,
               "thermal_status_before": "none", "thermal_status_after": "light", "self_test": test,
               "kernel_variants": [{"name": n, "supported": n in sets} for n in ("i8mm", "dotprod", "neon")]}
        assert extras.get("selftest") == "true", extras
    (state / "run.json").write_text(json.dumps(run))
    print("Starting: Intent { cmp=org.mcpm.demo/.BenchmarkActivity (has extras) }\nStatus: ok")
elif argv[:2] == ["shell", "cat"]:
    if not (state / "run.json").exists():
        sys.stderr.write("cat: No such file or directory\n")
        sys.exit(1)
    sys.stdout.write((state / "run.json").read_text())
else:
    sys.stderr.write("fake adb: unexpected " + json.dumps(argv) + "\n")
    sys.exit(1)
'''


@pytest.fixture
def phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_q4_bundle: Path) -> Path:
    """The fake adb on PATH; returns its state folder (log.jsonl = every argv)."""
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    with Model.load(default_q4_bundle, threads=2, library=build_library(default_q4_bundle)) as model, \
            Session(model) as session:
        (state / "selftest.json").write_text(json.dumps(session.self_test()))
    head = f"#!{sys.executable} -S\nGETPROP = {GETPROP!r}\nCPU_PARTS = {CPU_PARTS!r}\nFEATURES = {FEATURES!r}\n" \
           f"FREQ_SCRIPT = {FREQ_SCRIPT!r}\n"
    (bin_dir / "adb").write_text(head + FAKE_ADB)
    (bin_dir / "adb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_STATE", str(state))
    for name in ("ADB", "ANDROID_SERIAL", "FAKE_PHONE", "FAKE_FAIL"):
        monkeypatch.delenv(name, raising=False)
    return state


def android_export(tmp_path: Path, bundle: Path, embedded: bool, gpu: bool = False, vision: bool = False) -> Path:
    """An OUT folder shaped like `mcpm-export --target android -o OUT` (the bundle's config retargeted; the fake
    phone never opens the APK, which holds the model's config when embedded)."""
    out = tmp_path / "dist-a"
    shutil.copytree(bundle, out / "bundle")
    config = json.loads((out / "bundle" / "mcpm-config.json").read_text())
    config["target"] = {**config["target"], "name": "android", "platform": "android"}
    if vision:  # verify then benchmarks an image too (the fake phone only looks at the extra)
        config["vision"] = {"max_pixels": 4096 * 4096}
    (out / "bundle" / "mcpm-config.json").write_text(json.dumps(config))
    if gpu:
        plan = json.loads((out / "bundle" / "plan.json").read_text())
        (out / "bundle" / "plan.json").write_text(json.dumps({**plan, "gpu": {}}))
    with zipfile.ZipFile(out / "mcpm-demo.apk", "w") as apk:
        apk.writestr("classes.dex", b"dex")
        if embedded:
            apk.writestr("assets/models/default/mcpm-config.json", json.dumps(config))
    return out


def calls(state: Path) -> list[list[str]]:
    return [json.loads(line)[2:] for line in (state / "log.jsonl").read_text().splitlines()
            if json.loads(line)[:1] == ["-s"]]


def starts(state: Path) -> list[dict[str, str]]:
    return [{a[i + 1]: a[i + 2] for i in range(len(a) - 2) if a[i] in ("--es", "--ei", "--ez")}
            for a in calls(state) if a[1:3] == ["am", "start"]]


def test_parsers() -> None:
    props = parse_getprop(GETPROP)
    assert props["ro.soc.model"] == "Tensor G3" and props["ro.odd"] == "with ] bracket"
    text = "".join(f"processor\t: {i}\nFeatures\t: fp asimd asimddp\nCPU part\t: {p}\n\n"
                   for i, p in enumerate(CPU_PARTS))
    cpu = parse_cpuinfo(text)
    assert cpu["features"] == ["fp", "asimd", "asimddp"]
    assert [c["name"] for c in cpu["cores"]] == ["Cortex-A510"] * 4 + ["Cortex-A715"] * 4 + ["Cortex-X3"]


def test_verify_runs_every_kernel_set_and_writes_the_report(phone: Path, tmp_path: Path,
                                                            default_q4_bundle: Path) -> None:
    from mcpm.cli import cli

    out = android_export(tmp_path, default_q4_bundle, embedded=True, gpu=True)
    results = tmp_path / "results"
    res = CliRunner().invoke(cli, ["android", "verify", str(out), "-o", str(results), "-p", "32", "-n", "8"])
    assert res.exit_code == 0, res.output
    log = calls(phone)
    assert log[0] == ["install", "-r", str(out / "mcpm-demo.apk")]
    assert not any(a[0] == "push" for a in log)  # the model is inside the APK
    assert ["shell", "getprop"] in log and ["shell", FREQ_SCRIPT] in log
    runs = starts(phone)
    assert [(r.get("kernel_variant"), r["device"]) for r in runs] == [
        (None, "cpu"), ("dotprod", "cpu"), ("neon", "cpu"), (None, "gpu")]
    assert all(r["model_dir"] == "default" and r["selftest"] == "true" and r["prompt_tokens"] == "32" for r in runs)
    assert all(a[a.index("-n") + 1] == BENCH_ACTIVITY and "-S" in a for a in log if a[1:3] == ["am", "start"])

    report = json.loads((results / "google-pixel-8.json").read_text())
    assert report["pass"] is True
    assert [(r["kernel_variant"], r["device"], r["verdict"]) for r in report["runs"]] == [
        ("i8mm", "cpu", "PASS"), ("dotprod", "cpu", "PASS"), ("neon", "cpu", "PASS"), ("-", "gpu", "NOT RUN")]
    assert report["runs"][0]["decode_tok_s"] == 15.0 and report["runs"][0]["self_test"]["steps"] == 16
    assert "no platform" in report["runs"][3]["reason"]
    d = report["device"]
    assert (d["soc_model"], d["android"], d["cores"][8]["name"], d["cores"][8]["max_khz"]) == (
        "Tensor G3", "15", "Cortex-X3", 2910000)
    assert "i8mm" in d["cpu_features"] and report["bundle"]["golden_reference"].startswith("PyTorch reference")
    assert "i8mm      cpu     PASS" in res.output and "google-pixel-8.html" in res.output


def test_a_failing_kernel_set_fails_the_verification(phone: Path, tmp_path: Path, default_q4_bundle: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mcpm.cli import cli

    monkeypatch.setenv("FAKE_PHONE", "dotprod")
    monkeypatch.setenv("FAKE_FAIL", "dotprod")
    out = android_export(tmp_path, default_q4_bundle, embedded=False, vision=True)
    res = CliRunner().invoke(cli, ["android", "verify", str(out), "-o", str(tmp_path / "r"), "--no-install"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exc_info  # the verdict, not a crash
    log = calls(phone)
    assert not any(a[0] == "install" for a in log)
    pushed = [a for a in log if a[0] == "push"]
    models = [a for a in pushed if not a[1].endswith("verify-image.png")]
    assert models and all(a[2].startswith(f"{MODELS_DIR}/dist-a/") for a in models)  # not in the APK: pushed
    assert [(r.get("kernel_variant"), r["device"]) for r in starts(phone)] == [(None, "cpu"), ("neon", "cpu")]
    assert all(r["image"] == f"{IMAGES_DIR}/verify-image.png" for r in starts(phone))  # MiniCPM-V: an image too
    assert [a for a in pushed if a[1].endswith("verify-image.png")], pushed
    report = json.loads((tmp_path / "r" / "google-pixel-8.json").read_text())
    assert [r.get("image_encode_ms") for r in report["runs"]] == [2500.0, 2500.0]
    assert [r["verdict"] for r in report["runs"]] == ["FAIL", "PASS"] and report["pass"] is False
    assert "dotprod on the cpu: kernel set dotprod on the cpu: step 3: predicts token 9" in res.output
    assert res.output.rstrip().splitlines()[-1].startswith("FAIL: report ")
    assert RESULT_PATH in " ".join(" ".join(a) for a in log)


def test_not_an_android_export_is_refused(tmp_path: Path, default_q4_bundle: Path, phone: Path) -> None:
    from mcpm.cli import cli, main

    with pytest.raises(SystemExit) as exc:
        main(["android", "verify", str(default_q4_bundle)])
    assert exc.value.code == 2
    (tmp_path / "x").mkdir()
    shutil.copytree(default_q4_bundle, tmp_path / "x" / "bundle")
    with pytest.raises(SystemExit):
        main(["android", "verify", str(tmp_path / "x")])
    out = android_export(tmp_path, default_q4_bundle, embedded=True)
    config = json.loads((out / "bundle" / "mcpm-config.json").read_text())
    del config["golden"]
    (out / "bundle" / "mcpm-config.json").write_text(json.dumps(config))
    res = CliRunner().invoke(cli, ["android", "verify", str(out)])
    assert res.exit_code != 0 and "has no golden results" in str(res.exception)
    (out / "bundle" / "mcpm-config.json").write_text("{garbled")
    res = CliRunner().invoke(cli, ["android", "verify", str(out)])
    assert res.exit_code != 0 and "mcpm-config.json cannot be read" in str(res.exception)
    assert not (phone / "log.jsonl").exists() or not any(a[0] == "install" for a in calls(phone))  # refused first


def test_html_report_renders_in_chromium(phone: Path, tmp_path: Path, default_q4_bundle: Path) -> None:
    """The page is self-contained; headless Chromium's screenshot shows both bar colors, the decode bars in the
    order of the speeds (i8mm longest)."""
    import numpy as np
    from PIL import Image

    from mcpm.cli import cli

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not found (apt-get install chromium; make setup installs it)")
    out = android_export(tmp_path, default_q4_bundle, embedded=True)
    res = CliRunner().invoke(cli, ["android", "verify", str(out), "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    page = tmp_path / "r" / "google-pixel-8.html"
    html = page.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    shot = tmp_path / "shot.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # [H, W, 3]

    def mask(color: str) -> np.ndarray:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return np.abs(pixels - rgb).sum(axis=2) < 30  # [H, W]

    decode, prefill = mask(DECODE_COLOR), mask(PREFILL_COLOR)
    assert decode.sum() > 2000 and prefill.sum() > 2000, (decode.sum(), prefill.sum())
    rows = np.flatnonzero(decode.any(axis=1))  # three bars (i8mm, dotprod, neon) from top to bottom
    bars = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1)
    widths = [int(decode[b].sum(axis=1).max()) for b in bars]
    assert len(widths) == 3 and widths[0] > widths[1] > widths[2] > 0, widths
    assert abs(widths[0] / widths[2] - 3.0) < 0.2  # 15 vs 5 tok/s


def test_report_of_an_iphone_selftest_json(tmp_path: Path, default_q4_bundle: Path) -> None:
    """`mcpm report` on what the iOS app's -selftest writes (SelfTestRunner: Documents/selftest/latest.json)."""
    from mcpm.cli import cli
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    with Model.load(default_q4_bundle, threads=2, library=build_library(default_q4_bundle)) as model, \
            Session(model) as session:
        test = session.self_test()
        stats = model.stats()
    ios = {"device": {"manufacturer": "Apple", "model": "iPhone15,2", "system": "iOS", "version": "17.5", "cores": 6,
                      "performance_cores": 2, "memory_bytes": 6 << 30},
           "model": "default", "pass": False, "settings": {"prompt_tokens": 128, "gen_tokens": 64, "threads": 0},
           "runs": [{**stats, "kernel_variant": "i8mm", "self_test": {**test, "kernel_variant": "i8mm"},
                     "thermal_state_before": "nominal", "thermal_state_after": "fair"},
                    {"kernel_variant": "neon", "device": "cpu", "error": "the model could not be loaded"}]}
    (tmp_path / "selftest.json").write_text(json.dumps(ios))
    res = CliRunner().invoke(cli, ["report", str(tmp_path / "selftest.json"), "-o", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Apple iPhone15,2 (iPhone15,2, iOS 17.5), model default"), res.output
    report = json.loads((tmp_path / "r" / "apple-iphone15-2.json").read_text())
    assert [(r["kernel_variant"], r["verdict"]) for r in report["runs"]] == [("i8mm", "PASS"), ("neon", "FAIL")]
    assert report["pass"] is False and "the model could not be loaded" in res.output
    html = (tmp_path / "r" / "apple-iphone15-2.html").read_text()
    assert "nominal / fair" in html and "iOS 17.5" in html and "PyTorch reference of q4g32" in html
    bad = CliRunner().invoke(cli, ["report", str(default_q4_bundle / "plan.json")])
    assert bad.exit_code != 0 and "is not a self-test report" in str(bad.exception)
