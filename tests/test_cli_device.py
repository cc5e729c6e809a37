"""`mcpm bench | generate | chat --device cpu|gpu|auto` on tiny host bundles: the GPU runs for real on PoCL (the
OpenCL platform that runs kernels on this CPU; the numbers are for correctness, not speed).

A tiny model exported once per module with `--device gpu` (CPU kernels + kernels.cl + the "gpu" launch
records), and the session's default bundle as one without GPU kernels. The GPU tests skip when no OpenCL
platform answers (apt: pocl-opencl-icd).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpm.cli import cli, main
from tests.conftest import opencl_unavailable

NO_OPENCL = opencl_unavailable()
needs_opencl = pytest.mark.skipif(bool(NO_OPENCL), reason=NO_OPENCL or "OpenCL present")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, default_q4_bundle: Path) -> Iterator[dict[str, Path]]:
    """{"gpu": a tiny model's bundle with GPU kernels, "cpu": a bundle without (the session's default bundle);
    MCPM_CACHE_DIR (runtime libraries, the compiled OpenCL program) in a temporary folder for the whole module."""
    from mcpm.export.exporter import ExportOptions, run_export
    from tests.conftest import tiny_minicpm, write_tiny

    base = tmp_path_factory.mktemp("cli-device")
    # untied embeddings: a random tiny model with tied ones repeats its last token, which would make the text
    # comparisons below weak
    ckpt = write_tiny(base / "tiny", tiny_minicpm(num_hidden_layers=1, tie_word_embeddings=False), seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MCPM_CACHE_DIR", str(base / "cache"))
        out = {"gpu": base / "bundle-gpu", "cpu": default_q4_bundle}
        run_export(ExportOptions(ckpt, out["gpu"], "host", "q4g32", (), 64, 8, progress=False, device="gpu"))
        yield out


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The real entry point (McpmError -> one line on stderr, exit 2)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def bench_json(bundle: Path, *extra: str) -> dict:
    res = CliRunner().invoke(cli, ["bench", str(bundle), "-p", "8", "-n", "4", "-r", "2", "-t", "1", "--json",
                                   *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_opencl
def test_bench_gpu_json_has_device_and_kernel_times(bundles: dict[str, Path]) -> None:
    cpu = bench_json(bundles["gpu"])
    gpu = bench_json(bundles["gpu"], "--device", "gpu")
    assert set(cpu) <= set(gpu) and set(cpu["summary"]) == set(gpu["summary"])  # the CPU's JSON, plus
    assert cpu["device"] == "cpu" and cpu["gpu_device"] == "" and "kernel_times" not in cpu
    assert gpu["device"] == "gpu" and gpu["requested_device"] == "gpu" and gpu["profiled"] is True
    assert gpu["gpu_device"].startswith("OpenCL: ") and gpu["notice"] == ""
    assert all(r["device"] == "gpu" and r["decode_tokens"] >= 3 for r in gpu["runs"])
    times = gpu["kernel_times"]
    assert times and {"kernel", "count", "launches", "ms", "ms_per_run", "share"} <= set(times[0])
    ms = [t["ms"] for t in times]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    assert abs(sum(t["share"] for t in times) - 1) < 0.01
    assert all(t["count"] >= 2 and t["launches"] >= t["count"] for t in times)  # >= 1 call per run, 2 runs
    assert {t["kernel"] for t in times} <= set(json.loads((bundles["gpu"] / "plan.json").read_text())["kernels"])
    again = bench_json(bundles["gpu"], "--device", "gpu", "--no-kernel-times")
    assert again["device"] == "gpu" and again["profiled"] is False and "kernel_times" not in again
    assert again["runs"][0]["gpu_program"] == "cached"  # an earlier load built it into $MCPM_CACHE_DIR/opencl


@needs_opencl
def test_bench_gpu_table_lists_the_slowest_kernels(bundles: dict[str, Path]) -> None:
    res = CliRunner().invoke(cli, ["bench", str(bundles["gpu"]), "-p", "8", "-n", "4", "-r", "1", "--device", "gpu"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    lines = res.stdout.splitlines()
    assert "GPU OpenCL: " in lines[0] and "(profiled)" in lines[0]
    head = next(i for i, line in enumerate(lines) if line.startswith("kernel") and "ms/run" in line)
    assert len(lines) > head + 1 and "%" in lines[head + 1]


def test_bench_gpu_on_a_cpu_only_bundle_is_a_one_line_error(bundles: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bench", str(bundles["cpu"]), "-p", "8", "-n", "4", "-r", "1", "--device", "gpu"],
                             capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "has no GPU kernels" in err
    assert "--device gpu" in err  # the fix: re-export with it
    code, _, err = run_cli(["generate", str(bundles["cpu"]), "-p", "Hi", "-n", "2", "--device", "gpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and "has no GPU kernels" in err


def test_auto_on_a_cpu_only_bundle_says_why_on_stderr(bundles: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["bench", str(bundles["cpu"]), "-p", "8", "-n", "4", "-r", "1", "--device", "auto",
                              "--json"], capsys)
    assert code == 0, err
    notice = [line for line in err.splitlines() if line.startswith("notice: ")]
    assert len(notice) == 1 and "no GPU kernels" in notice[0] and "running on the CPU" in notice[0]
    r = json.loads(out)
    assert r["device"] == "cpu" and r["requested_device"] == "auto" and r["notice"] in notice[0]
    assert r["kernel_times"] == []


@needs_opencl
def test_generate_and_chat_on_the_gpu_give_the_cpu_text(bundles: dict[str, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    texts = {}
    for device in ("cpu", "gpu", "auto"):
        code, out, err = run_cli(["generate", str(bundles["gpu"]), "-p", "Once upon a time", "-n", "12", "-t", "1",
                                  "--device", device, "--json"], capsys)
        assert code == 0, err
        *text, stats_line = out.splitlines()
        texts[device] = "\n".join(text)
        stats = json.loads(stats_line)
        if device != "cpu":
            assert stats["device"] == "gpu" and "GPU" in stats["engine"] and "notice" not in err
    assert texts["gpu"] == texts["cpu"] == texts["auto"]  # greedy: the OpenCL kernels pick the same tokens
    assert len(set(texts["cpu"].split())) > 6  # varied text, not one token repeated
    replies = {}
    for device in ("cpu", "gpu"):
        res = CliRunner().invoke(cli, ["chat", str(bundles["gpu"]), "-n", "8", "-t", "1", "--device", device],
                                 input="Hello there\n/quit\n")
        assert res.exit_code == 0, res.output + repr(res.exception)
        replies[device] = res.stdout
    assert replies["gpu"] == replies["cpu"] and len(set(replies["cpu"].split())) > 3


def test_reference_refuses_a_gpu_device(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["generate", "default", "--reference", "-p", "Hi", "-n", "1", "--device", "gpu"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--device gpu runs bundles in the C runtime" in err


@needs_opencl
def test_selftest_checks_the_cpu_and_the_gpu_kernels(bundles: dict[str, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """docs/self-test.md: the GPU kernels (PoCL here) against the same golden record as the CPU's."""
    code, out, err = run_cli(["selftest", str(bundles["gpu"]), "--gpu", "--json", "-t", "1"], capsys)
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert [(r["device"], r["pass"], r["tokenizer"]) for r in runs] == [("cpu", True, "pass"), ("gpu", True, "pass")]
    assert all(r["steps"] == 16 and r["max_logit_diff"] < r["tolerance"] for r in runs), runs
    code, out, err = run_cli(["selftest", str(bundles["cpu"]), "--gpu"], capsys)
    assert code == 2 and "has no GPU kernels" in err
