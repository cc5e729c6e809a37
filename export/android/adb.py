"""A small wrapper of the ``adb`` executable: pick a device, install the app, push bundles, run the benchmark.

The names shared with the app (package, activity, extras, folders, result file) are the contract in
``android_app/README.md``. Every adb failure becomes a one-line :class:`McpmError` that quotes adb's own message.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcpm.errors import McpmError
from mcpm.export.output_dir import MANIFEST

PACKAGE = "org.mcpm.demo"
BENCH_ACTIVITY = f"{PACKAGE}/.BenchmarkActivity"
APP_FILES_DIR = f"/sdcard/Android/data/{PACKAGE}/files"
MODELS_DIR = f"{APP_FILES_DIR}/models"
BENCH_DIR = f"{APP_FILES_DIR}/bench"
IMAGES_DIR = f"{APP_FILES_DIR}/images"  # bench --image pushes the image here (the app may read its own files)
RESULT_PATH = f"{BENCH_DIR}/latest.json"
BUNDLE_CONFIG = "mcpm-config.json"  # = mcpm.export.bundle.reader.CONFIG_NAME (not imported: keeps this module light)

ADB_MISSING_FIX = "apt-get install adb (or set ADB=/path/to/adb)"
USB_DEBUGGING_FIX = (
    "connect the phone by USB, turn on Developer options > USB debugging and accept the 'Allow USB debugging?' prompt"
)
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")
_COMMAND_TIMEOUT_S = 120.0  # any adb call but push/pull/install, which may move gigabytes


@dataclass(frozen=True)
class Device:
    """One line of ``adb devices``: serial and state (``device``, ``unauthorized``, ``offline``, ...)."""

    serial: str
    state: str


def find_adb() -> str:
    """The adb executable: $ADB if set, else ``adb`` on PATH."""
    configured = os.environ.get("ADB")
    if configured:
        found = shutil.which(configured)
        if found is None:
            raise McpmError(f"adb not found at ADB={configured}", ADB_MISSING_FIX)
        return found
    found = shutil.which("adb")
    if found is None:
        raise McpmError("adb not found", ADB_MISSING_FIX)
    return found


def parse_devices(output: str) -> list[Device]:
    """Devices listed by ``adb devices`` (the header and daemon start-up lines are skipped)."""
    devices = []
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.startswith("List of devices"):
            continue
        serial, _, state = line.partition("\t")
        if not state:  # some adb versions separate with spaces
            serial, _, state = line.partition(" ")
        devices.append(Device(serial.strip(), state.strip() or "unknown"))
    return devices


def _adb_message(proc: subprocess.CompletedProcess[str]) -> str:
    """adb's own message, on one line: the last non-empty line of stderr (or stdout)."""
    for text in (proc.stderr, proc.stdout):
        lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return f"exit status {proc.returncode}"


def _state_error(device: Device) -> McpmError:
    if device.state == "unauthorized":
        return McpmError(f"Android device {device.serial} is unauthorized",
                         "unlock the phone and accept the 'Allow USB debugging?' prompt, then try again")
    if device.state == "offline":
        return McpmError(f"Android device {device.serial} is offline",
                         "unplug and replug the USB cable, or run `adb kill-server` and try again")
    if device.state.startswith("no permissions"):
        return McpmError(f"Android device {device.serial} cannot be opened: {device.state}",
                         "add a udev rule for the phone (Debian: apt-get install android-sdk-platform-tools-common) "
                         "and replug it")
    return McpmError(f"Android device {device.serial} is in state '{device.state}', not ready",
                     "boot the phone normally with USB debugging on")


def _listing(devices: Sequence[Device]) -> str:
    return ", ".join(f"{d.serial} ({d.state})" for d in devices)


class Adb:
    """One Android device reached through adb.

    ``serial`` (or $ANDROID_SERIAL) picks the device; without one, exactly one device must be connected.
    The device is chosen on the first command that needs it.
    """

    def __init__(self, serial: str | None = None, adb: str | None = None, poll_interval: float = 1.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.exe = adb or find_adb()
        self.requested_serial = serial or os.environ.get("ANDROID_SERIAL") or None
        self.poll_interval = poll_interval
        self.log = log or (lambda message: None)
        self._serial: str | None = None

    # -- running adb -------------------------------------------------------------------------------------------

    def _run(self, args: Sequence[str], timeout: float | None) -> subprocess.CompletedProcess[str]:
        argv = [self.exe, *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout,
                                  check=False)
        except FileNotFoundError:
            raise McpmError(f"adb not found at {self.exe}", ADB_MISSING_FIX) from None
        except subprocess.TimeoutExpired:
            raise McpmError(f"`adb {' '.join(args)}` did not finish within {timeout:.0f} s",
                            "check the phone is connected and unlocked") from None

    def run(self, *args: str, timeout: float | None = _COMMAND_TIMEOUT_S, check: bool = True,
            fix: str | None = None) -> subprocess.CompletedProcess[str]:
        """``adb -s SERIAL ARGS``; a non-zero exit becomes a McpmError with adb's message (unless ``check=False``)."""
        proc = self._run(["-s", self.serial, *args], timeout)
        if check and proc.returncode != 0:
            raise McpmError(f"adb {args[0]} failed: {_adb_message(proc)}",
                            fix or "check the phone is connected and unlocked (adb devices)")
        return proc

    def shell(self, *args: str, check: bool = True, timeout: float | None = _COMMAND_TIMEOUT_S,
              fix: str | None = None) -> subprocess.CompletedProcess[str]:
        """``adb shell ARGS``; each argument is quoted for the phone's shell."""
        return self.run("shell", *(shlex.quote(a) for a in args), check=check, timeout=timeout, fix=fix)

    # -- device selection --------------------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        proc = self._run(["devices"], _COMMAND_TIMEOUT_S)
        if proc.returncode != 0:
            raise McpmError(f"adb devices failed: {_adb_message(proc)}", "run `adb kill-server` and try again")
        return parse_devices(proc.stdout)

    @property
    def serial(self) -> str:
        """The chosen device's serial (checked against ``adb devices`` once)."""
        if self._serial is None:
            self._serial = self._select(self.devices())
        return self._serial

    def _select(self, devices: list[Device]) -> str:
        if self.requested_serial is not None:
            matches = [d for d in devices if d.serial == self.requested_serial]
            if not matches:
                listed = _listing(devices) if devices else "none"
                raise McpmError(f"Android device {self.requested_serial} is not connected (adb devices lists: "
                                f"{listed})", "check --serial / ANDROID_SERIAL, or connect that phone")
            device = matches[0]
        elif not devices:
            raise McpmError("no Android device is connected (adb devices lists none)", USB_DEBUGGING_FIX)
        elif len(devices) > 1:
            raise McpmError(f"{len(devices)} Android devices are connected: {_listing(devices)}",
                            "pick one with --serial SERIAL (or ANDROID_SERIAL=SERIAL)")
        else:
            device = devices[0]
        if device.state != "device":
            raise _state_error(device)
        return device.serial

    # -- operations --------------------------------------------------------------------------------------------

    def install(self, apk: Path) -> None:
        """``adb install -r APK`` (replaces an installed app, keeping its data and pushed models)."""
        apk = Path(apk)
        if not apk.is_file():
            raise McpmError(f"{apk} is not a file", "build the APK with `mcpm-export MODEL --target android -o OUT`")
        fix = ("if the installed app was signed with another key, uninstall it first: "
               f"adb uninstall {PACKAGE}")
        proc = self.run("install", "-r", str(apk), timeout=None, fix=fix)
        output = f"{proc.stdout}\n{proc.stderr}"
        if "Failure" in output:  # older adb versions exit 0 on a failed install
            failure = next(line.strip() for line in output.splitlines() if "Failure" in line)
            raise McpmError(f"adb install failed: {failure}", fix)

    def push_model(self, bundle_dir: Path, name: str | None = None) -> str:
        """Copy a bundle folder to ``MODELS_DIR/NAME`` on the phone (kernel objects ``*.o`` are skipped:
        the app's ``libmcpm.so`` already holds them). Returns the folder on the phone."""
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():
            raise McpmError(f"{bundle_dir} is not a folder", "give a bundle folder written by mcpm-export")
        if not (bundle_dir / BUNDLE_CONFIG).is_file():
            raise McpmError(f"{bundle_dir} is not a bundle (no {BUNDLE_CONFIG})",
                            "export the checkpoint first: mcpm-export MODEL --target android -o OUT")
        name = name or bundle_dir.resolve().name
        if not _MODEL_NAME.fullmatch(name):
            raise McpmError(f"model name {name!r} is not a plain folder name",
                            "use letters, digits, '.', '_', '+', '-' (--name NAME)")
        remote = f"{MODELS_DIR}/{name}"
        files = sorted(p for p in bundle_dir.rglob("*") if p.is_file() and p.suffix != ".o" and p.name != MANIFEST)
        folders = sorted({p.parent.relative_to(bundle_dir).as_posix() for p in files} - {"."})
        self.shell("mkdir", "-p", remote, *(f"{remote}/{f}" for f in folders))
        for path in files:
            rel = path.relative_to(bundle_dir).as_posix()
            self.log(f"pushing {rel} ({path.stat().st_size / 2**20:.1f} MiB)")
            self.run("push", str(path), f"{remote}/{rel}", timeout=None,
                     fix="check the phone has enough free storage and is still connected")
        return remote

    def bench(self, model: str, prompt_tokens: int = 128, gen_tokens: int = 64, threads: int = 4,
              device: str = "cpu", timeout: float = 600.0, image: Path | None = None,
              kernel_variant: str | None = None, self_test: bool = False) -> dict[str, Any]:
        """Run ``.BenchmarkActivity`` on MODEL (a name under MODELS_DIR or a folder on the phone) and return the
        runtime's stats JSON that it writes to RESULT_PATH. image: a local image file, pushed to IMAGES_DIR and
        passed as the ``image`` extra (MiniCPM-V models: the JSON then has image_encode_ms, image_slices, ...).
        self_test: the app runs the bundle's self-test first (the JSON's "self_test", docs/self-test.md)."""
        if not model.strip():
            raise McpmError("no model given", "pass a model name (see push-model) or an absolute folder on the phone")
        remote_image = self.push_image(Path(image)) if image is not None else None
        self.shell("rm", "-f", RESULT_PATH)
        start = ["am", "start", "-S", "-W", "-n", BENCH_ACTIVITY, "--es", "model_dir", model,
                 "--ei", "prompt_tokens", str(prompt_tokens), "--ei", "gen_tokens", str(gen_tokens),
                 "--ei", "threads", str(threads), "--es", "device", device]
        if remote_image is not None:
            start += ["--es", "image", remote_image]
        if kernel_variant:
            start += ["--es", "kernel_variant", kernel_variant]
        if self_test:
            start += ["--ez", "selftest", "true"]
        proc = self.shell(*start)
        started = f"{proc.stdout}\n{proc.stderr}"
        if re.search(r"^\s*Error", started, re.MULTILINE):  # `am start` exits 0 when the activity is unknown
            message = [line.strip() for line in started.splitlines() if line.strip().startswith("Error")][-1]
            raise McpmError(f"cannot start the benchmark: {message}",
                            "install the app first: mcpm android install APK")
        deadline = time.monotonic() + timeout
        while True:
            result = self._read_result()
            if result is not None:
                break
            if time.monotonic() >= deadline:
                raise McpmError(f"no benchmark result in {RESULT_PATH} after {timeout:g} s",
                                "see `adb logcat -s mcpm` for MCPM_BENCH_ERROR, or raise --timeout for large models")
            time.sleep(self.poll_interval)
        if "error" in result:
            raise McpmError(f"benchmark failed on the phone: {result['error']}",
                            "check the model name (mcpm android push-model) and `adb logcat -s mcpm`")
        return result

    def push_image(self, image: Path) -> str:
        """Copy a local image file to IMAGES_DIR on the phone (the app's own files: no storage permission needed);
        returns its path there."""
        if not image.is_file():
            raise McpmError(f"image {image} does not exist", "give a JPEG or PNG file")
        name = image.name if _MODEL_NAME.fullmatch(image.name) else "bench-image" + "".join(
            c for c in image.suffix if c.isalnum() or c == ".")
        remote = f"{IMAGES_DIR}/{name}"
        self.shell("mkdir", "-p", IMAGES_DIR)
        self.run("push", str(image), remote, timeout=None,
                 fix="check the phone has enough free storage and is still connected")
        return remote

    def _read_result(self) -> dict[str, Any] | None:
        """The result file's JSON object, or None while it is missing or being written."""
        proc = self.shell("cat", RESULT_PATH, check=False)
        if proc.returncode != 0:
            if "No such file" in proc.stdout + proc.stderr:
                return None
            raise McpmError(f"adb shell cat failed: {_adb_message(proc)}",
                            "check the phone is still connected (adb devices)")
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def pull_results(self, out_dir: Path) -> Path:
        """Copy every benchmark result (``bench/latest.json`` and ``bench/<unix-millis>.json``) to OUT_DIR/bench."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.run("pull", f"{BENCH_DIR}/", str(out_dir), timeout=None,
                 fix="run a benchmark first: mcpm android bench --model NAME")
        return out_dir / "bench"
