"""``mcpm.export.android.adb`` and ``mcpm android`` against a fake ``adb`` that logs its argv and plays a scenario."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mcpm.errors import McpmError
from mcpm.export.android.adb import (
    BENCH_ACTIVITY,
    BENCH_DIR,
    IMAGES_DIR,
    MODELS_DIR,
    RESULT_PATH,
    Adb,
    parse_devices,
)

STATS = {"load_ms": 812.5, "prefill_tokens": 128, "prefill_tok_s": 95.25, "decode_tokens": 64,
         "decode_tok_s": 12.5, "ttft_ms": 1343.0, "peak_rss_kb": 1048576, "threads": 4}

# The fake adb. Scenario from the environment:
#   FAKE_ADB_DEVICES  none | one | two | unauthorized | offline
#   FAKE_ADB_RESULT   ok | partial (first read is half-written) | error | never
#   FAKE_ADB_FAIL     push | pull | install | install-old | no-activity
FAKE_ADB = r'''
import json, os, sys
from pathlib import Path

argv = sys.argv[1:]
state = Path(os.environ["FAKE_ADB_STATE"])
with open(state / "log.jsonl", "a") as log:
    log.write(json.dumps(argv) + "\n")
fail = os.environ.get("FAKE_ADB_FAIL", "")
if argv[:1] == ["-s"]:
    argv = argv[2:]
if argv == ["devices"]:
    print("List of devices attached")
    listing = {"none": [], "one": ["SER1\tdevice"], "two": ["SER1\tdevice", "SER2\tdevice"],
               "unauthorized": ["SER1\tunauthorized"], "offline": ["SER1\toffline"]}
    for line in listing[os.environ.get("FAKE_ADB_DEVICES", "one")]:
        print(line)
    print()
    sys.exit(0)
cmd = argv[0]
if cmd == "shell" and argv[1:3] == ["rm", "-f"]:
    for f in ("started", "reads"):
        (state / f).unlink(missing_ok=True)
elif cmd == "shell" and argv[1:3] == ["am", "start"]:
    if fail == "no-activity":
        print("Starting: Intent { cmp=org.mcpm.demo/.BenchmarkActivity }")
        print("Error type 3")
        print("Error: Activity class {org.mcpm.demo/org.mcpm.demo.BenchmarkActivity} does not exist.")
    else:
        (state / "started").touch()
        print("Starting: Intent { cmp=org.mcpm.demo/.BenchmarkActivity (has extras) }\nStatus: ok")
elif cmd == "shell" and argv[1] == "cat":
    result = os.environ.get("FAKE_ADB_RESULT", "ok")
    if not (state / "started").exists() or result == "never":
        sys.stderr.write("cat: " + argv[2] + ": No such file or directory\n")
        sys.exit(1)
    reads = state / "reads"
    n = int(reads.read_text()) if reads.exists() else 0
    reads.write_text(str(n + 1))
    if result == "partial" and n == 0:
        sys.stdout.write('{"load_ms": 81')
    elif result == "error":
        print(json.dumps({"error": "model not found: nope"}))
    else:
        print(json.dumps(STATS))
elif cmd == "push":
    if fail == "push":
        sys.stderr.write("adb: error: failed to copy '" + argv[1] + "' to '" + argv[2]
                         + "': remote couldn't create file: Permission denied\n")
        sys.exit(1)
    print(argv[1] + ": 1 file pushed, 0 skipped.")
elif cmd == "pull":
    if fail == "pull":
        sys.stderr.write("adb: error: remote object '" + argv[1] + "' does not exist\n")
        sys.exit(1)
    out = Path(argv[2]) / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(STATS))
    print(argv[1] + ": 2 files pulled, 0 skipped.")
elif cmd == "install":
    if fail == "install":
        sys.stderr.write("adb: failed to install " + argv[-1] + ": Failure [INSTALL_FAILED_UPDATE_INCOMPATIBLE: "
                         "Package org.mcpm.demo signatures do not match previously installed version]\n")
        sys.exit(1)
    print("Performing Streamed Install")
    print("Failure [INSTALL_FAILED_OLDER_SDK]" if fail == "install-old" else "Success")
'''


@pytest.fixture
def fake_adb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the fake adb first on PATH; returns its state folder (log.jsonl holds every argv)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "adb-state"
    bin_dir.mkdir()
    state.mkdir()
    script = bin_dir / "adb"
    script.write_text(f"#!{sys.executable} -S\nSTATS = {STATS!r}\n{FAKE_ADB}")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_STATE", str(state))
    for name in ("ADB", "ANDROID_SERIAL", "FAKE_ADB_DEVICES", "FAKE_ADB_RESULT", "FAKE_ADB_FAIL"):
        monkeypatch.delenv(name, raising=False)
    return state


def calls(state: Path) -> list[list[str]]:
    log = state / "log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("mcpm-config.json", "plan.json", "weights.bin", "tokenizer.model", "kernels.o"):
        (folder / name).write_bytes(b"x" * 16)
    return folder


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from mcpm.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


# -- device selection --------------------------------------------------------------------------------------------


def test_parse_devices_skips_header_and_daemon_lines() -> None:
    text = ("* daemon not running; starting now at tcp:5037\n* daemon started successfully\n"
            "List of devices attached\nSER1\tdevice\n10.0.0.5:5555\toffline\nSER3\tno permissions (user x)\n\n")
    assert [(d.serial, d.state) for d in parse_devices(text)] == [
        ("SER1", "device"), ("10.0.0.5:5555", "offline"), ("SER3", "no permissions (user x)")]


def test_single_device_is_chosen_and_passed_first(fake_adb: Path) -> None:
    adb = Adb()
    adb.shell("true")
    adb.shell("true")
    assert calls(fake_adb) == [["devices"], ["-s", "SER1", "shell", "true"], ["-s", "SER1", "shell", "true"]]


def test_no_device(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_DEVICES", "none")
    with pytest.raises(McpmError, match=r"no Android device is connected \(adb devices lists none\)") as info:
        _ = Adb().serial
    assert "USB debugging" in str(info.value.fix)


def test_several_devices_need_a_serial(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_DEVICES", "two")
    with pytest.raises(McpmError, match=r"2 Android devices are connected: SER1 \(device\), SER2 \(device\)") as info:
        _ = Adb().serial
    assert "--serial" in str(info.value.fix)
    assert Adb(serial="SER2").serial == "SER2"
    monkeypatch.setenv("ANDROID_SERIAL", "SER1")
    adb = Adb()
    adb.shell("true")
    assert calls(fake_adb)[-1] == ["-s", "SER1", "shell", "true"]


def test_unknown_serial(fake_adb: Path) -> None:
    with pytest.raises(McpmError, match=r"device NOPE is not connected \(adb devices lists: SER1 \(device\)\)"):
        _ = Adb(serial="NOPE").serial


@pytest.mark.parametrize(("scenario", "message", "fix"), [
    ("unauthorized", "SER1 is unauthorized", "Allow USB debugging"),
    ("offline", "SER1 is offline", "replug"),
])
def test_device_not_ready(fake_adb: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, message: str,
                          fix: str) -> None:
    monkeypatch.setenv("FAKE_ADB_DEVICES", scenario)
    with pytest.raises(McpmError, match=message) as info:
        _ = Adb().serial
    assert fix in str(info.value.fix)


def test_adb_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("ADB", raising=False)
    with pytest.raises(McpmError, match="^adb not found") as info:
        Adb()
    assert info.value.fix == "apt-get install adb (or set ADB=/path/to/adb)"
    monkeypatch.setenv("ADB", str(tmp_path / "no-such-adb"))
    with pytest.raises(McpmError, match="adb not found at ADB="):
        Adb()


def test_adb_env_var_is_used(fake_adb: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "bin" / "adb"
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("ADB", str(script))
    assert Adb().exe == str(script)


# -- operations ----------------------------------------------------------------------------------------------------


def test_install(fake_adb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    apk = tmp_path / "mcpm-demo.apk"
    apk.write_bytes(b"PK")
    Adb().install(apk)
    assert calls(fake_adb)[-1] == ["-s", "SER1", "install", "-r", str(apk)]
    monkeypatch.setenv("FAKE_ADB_FAIL", "install")
    with pytest.raises(McpmError, match=r"^adb install failed: adb: failed to install .*signatures do not match") as i:
        Adb().install(apk)
    assert "adb uninstall org.mcpm.demo" in str(i.value)
    monkeypatch.setenv("FAKE_ADB_FAIL", "install-old")
    with pytest.raises(McpmError, match=r"adb install failed: Failure \[INSTALL_FAILED_OLDER_SDK\]"):
        Adb().install(apk)
    with pytest.raises(McpmError, match="is not a file"):
        Adb().install(tmp_path / "missing.apk")


def test_push_model_skips_kernel_objects(fake_adb: Path, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "minicpm-q4")
    (bundle / "extra").mkdir()
    (bundle / "extra" / "notes.txt").write_text("hi")
    remote = Adb().push_model(bundle)
    assert remote == f"{MODELS_DIR}/minicpm-q4"
    got = calls(fake_adb)[1:]
    assert got[0] == ["-s", "SER1", "shell", "mkdir", "-p", remote, f"{remote}/extra"]
    pushed = sorted(c[3:] for c in got[1:])
    assert all(c[2] == "push" for c in got[1:])
    assert pushed == sorted([str(bundle / n), f"{remote}/{n}"] for n in (
        "mcpm-config.json", "plan.json", "weights.bin", "tokenizer.model", "extra/notes.txt"))


def test_push_model_name_and_refusals(fake_adb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = make_bundle(tmp_path / "b")
    assert Adb().push_model(bundle, "minicpm-1b") == f"{MODELS_DIR}/minicpm-1b"
    not_bundle = tmp_path / "checkpoint"
    not_bundle.mkdir()
    (not_bundle / "config.json").write_text("{}")
    with pytest.raises(McpmError, match=r"is not a bundle \(no mcpm-config.json\)"):
        Adb().push_model(not_bundle)
    with pytest.raises(McpmError, match="is not a folder"):
        Adb().push_model(tmp_path / "missing")
    with pytest.raises(McpmError, match="not a plain folder name"):
        Adb().push_model(bundle, "a b/c")
    monkeypatch.setenv("FAKE_ADB_FAIL", "push")
    with pytest.raises(McpmError, match=r"^adb push failed: adb: error: failed to copy .*Permission denied"):
        Adb().push_model(bundle)


def test_bench_commands_and_result(fake_adb: Path) -> None:
    stats = Adb(poll_interval=0.01).bench("minicpm-1b", 256, 32, 8, device="gpu", timeout=5)
    assert stats == STATS
    got = calls(fake_adb)
    assert got[:4] == [
        ["devices"],
        ["-s", "SER1", "shell", "rm", "-f", RESULT_PATH],
        ["-s", "SER1", "shell", "am", "start", "-S", "-W", "-n", BENCH_ACTIVITY, "--es", "model_dir", "minicpm-1b",
         "--ei", "prompt_tokens", "256", "--ei", "gen_tokens", "32", "--ei", "threads", "8", "--es", "device", "gpu"],
        ["-s", "SER1", "shell", "cat", RESULT_PATH],
    ]
    assert len(got) == 4


def test_bench_kernel_variant_extra(fake_adb: Path) -> None:
    Adb(poll_interval=0.01).bench("minicpm-1b", 16, 8, 0, timeout=5, kernel_variant="dotprod")
    start = calls(fake_adb)[2]
    assert start[-9:] == ["--ei", "threads", "0", "--es", "device", "cpu", "--es", "kernel_variant", "dotprod"]


def test_bench_waits_for_a_complete_file(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_RESULT", "partial")
    assert Adb(poll_interval=0.01).bench("/data/local/tmp/m", timeout=5) == STATS
    assert [c[3] for c in calls(fake_adb)[1:]] == ["rm", "am", "cat", "cat"]


def test_bench_model_is_quoted_for_the_phone_shell(fake_adb: Path) -> None:
    Adb(poll_interval=0.01).bench("my model", timeout=5)
    assert "'my model'" in calls(fake_adb)[2]


def test_bench_error_result(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_RESULT", "error")
    with pytest.raises(McpmError, match="^benchmark failed on the phone: model not found: nope"):
        Adb(poll_interval=0.01).bench("nope", timeout=5)


def test_bench_timeout(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_RESULT", "never")
    with pytest.raises(McpmError, match=r"no benchmark result in .*latest.json after 0.2 s") as info:
        Adb(poll_interval=0.01).bench("m", timeout=0.2)
    assert "logcat" in str(info.value.fix)


def test_bench_without_the_app(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_ADB_FAIL", "no-activity")
    with pytest.raises(McpmError, match=r"cannot start the benchmark: Error: Activity class .* does not exist") as i:
        Adb(poll_interval=0.01).bench("m", timeout=5)
    assert "mcpm android install" in str(i.value.fix)


def test_pull_results(fake_adb: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "results"
    assert Adb().pull_results(out) == out / "bench"
    assert calls(fake_adb)[-1] == ["-s", "SER1", "pull", f"{BENCH_DIR}/", str(out)]
    assert json.loads((out / "bench" / "latest.json").read_text()) == STATS
    monkeypatch.setenv("FAKE_ADB_FAIL", "pull")
    with pytest.raises(McpmError, match=r"^adb pull failed: adb: error: remote object .* does not exist"):
        Adb().pull_results(out)


# -- CLI -------------------------------------------------------------------------------------------------------------


def test_cli_bench_table_and_json(fake_adb: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["android", "-s", "SER1", "bench", "--model", "minicpm-1b", "-p", "128", "-n", "64",
                              "-t", "4"], capsys)
    assert code == 0, err
    assert "pp128" in out and "95.25 tok/s" in out and "12.50 tok/s" in out
    assert "1343.0 ms" in out and "812.5 ms" in out and "1024.0 MiB" in out and "4 threads" in out
    assert calls(fake_adb)[0] == ["devices"]
    assert calls(fake_adb)[2][-2:] == ["device", "cpu"]
    code, out, err = run_cli(["android", "bench", "--model", "minicpm-1b", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == STATS


def test_cli_errors_are_one_line(fake_adb: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FAKE_ADB_DEVICES", "none")
    code, out, err = run_cli(["android", "bench", "--model", "m"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: no Android device is connected")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "two")
    code, _, err = run_cli(["android", "push-model", str(make_bundle(tmp_path / "b"))], capsys)
    assert code == 2 and err.startswith("error: 2 Android devices are connected") and err.count("\n") == 1
    monkeypatch.setenv("FAKE_ADB_DEVICES", "one")
    monkeypatch.setenv("FAKE_ADB_RESULT", "error")
    code, _, err = run_cli(["android", "bench", "--model", "nope"], capsys)
    assert code == 2 and err == ("error: benchmark failed on the phone: model not found: nope (check the model "
                                 "name (mcpm android push-model) and `adb logcat -s mcpm`)\n")
    code, _, err = run_cli(["android", "bench", "--model", "m", "-t", "-1"], capsys)
    assert code == 2 and err.startswith("error: Invalid value for '-t' / '--threads': -1 is not in the range 0<=x<=256")


def test_cli_install_push_pull(fake_adb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    apk = tmp_path / "app.apk"
    apk.write_bytes(b"PK")
    assert run_cli(["android", "install", str(apk)], capsys)[:2] == (0, f"installed {apk}\n")
    code, out, err = run_cli(["android", "push-model", str(make_bundle(tmp_path / "b")), "--name", "m1"], capsys)
    assert code == 0 and out == f"pushed {tmp_path / 'b'} to {MODELS_DIR}/m1\n"
    assert "pushing weights.bin" in err
    code, out, _ = run_cli(["android", "pull-results", "-o", str(tmp_path / "r")], capsys)
    assert code == 0 and out == f"pulled results to {tmp_path / 'r' / 'bench'}\n"


def test_cli_as_a_process(fake_adb: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env: dict[str, Any] = {**os.environ, "FAKE_ADB_DEVICES": "unauthorized"}
    proc = subprocess.run([sys.executable, "-m", "mcpm.cli", "android", "pull-results"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: Android device SER1 is unauthorized") and proc.stderr.count("\n") == 1
    assert proc.stdout == ""


IMAGE_STATS = {**STATS, "image_encode_ms": 431.5, "image_slices": 3, "image_patches": 2304, "image_width": 1024,
               "image_height": 768, "image_path": f"{IMAGES_DIR}/photo.jpg"}


def test_bench_with_an_image_pushes_it_and_passes_the_extra(fake_adb: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 jpeg")
    Adb(poll_interval=0.01).bench("minicpm-v2", 8, 4, 2, timeout=5, image=photo)
    got = calls(fake_adb)
    assert ["-s", "SER1", "shell", "mkdir", "-p", IMAGES_DIR] in got
    assert ["-s", "SER1", "push", str(photo), f"{IMAGES_DIR}/photo.jpg"] in got
    start = next(c for c in got if c[3:5] == ["am", "start"])
    assert start[-2:] == ["image", f"{IMAGES_DIR}/photo.jpg"] and start[-3] == "--es"
    # an odd file name gets a plain one on the phone
    odd = tmp_path / "my photo (1).png"
    odd.write_bytes(b"png")
    Adb(poll_interval=0.01).bench("m", timeout=5, image=odd)
    assert ["-s", "SER1", "push", str(odd), f"{IMAGES_DIR}/bench-image.png"] in calls(fake_adb)


def test_cli_bench_image_row_and_missing_file(fake_adb: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from mcpm.android_cli import format_stats

    table = format_stats(IMAGE_STATS, "minicpm-v2")
    assert "image" in table and "431.5 ms" in table and "1024x768: 3 vision runs, 2304 patches" in table
    assert "image" not in format_stats(STATS, "m").split("\n", 1)[1]
    code, _, err = run_cli(["android", "bench", "--model", "m", "--image", str(tmp_path / "none.jpg")], capsys)
    assert code == 2 and err.startswith("error: image") and "does not exist" in err and err.count("\n") == 1
    assert calls(fake_adb) == []  # refused before adb runs
    photo = tmp_path / "p.png"
    photo.write_bytes(b"png")
    code, out, err = run_cli(["android", "bench", "--model", "m", "--image", str(photo)], capsys)
    assert code == 0, err
    assert any(c[-2:] == ["image", f"{IMAGES_DIR}/p.png"] for c in calls(fake_adb))
