"""The self-test (docs/self-test.md): golden results recorded at export (export/golden.py) and the C runtime's check
of a loaded model against them (mcpm_self_test_json), on host bundles. ARM kernel sets: tests/test_arm64_qemu.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from mcpm.errors import McpmError
from mcpm.export.golden import GOLDEN_STEPS, TOLERANCE_FLOAT


def self_test(bundle: Path) -> dict[str, Any]:
    from mcpm.runtime.binding import Model, Session
    from mcpm.runtime.build import build_library

    with Model.load(bundle, threads=2, library=build_library(bundle)) as model, Session(model) as session:
        result = session.self_test()
        assert model.position == 0  # the conversation is forgotten afterwards
        return result


def altered(bundle: Path, tmp_path: Path, change: Any) -> Path:
    """A copy of bundle whose mcpm-config.json "golden" went through change(golden)."""
    copy = tmp_path / "altered"
    shutil.copytree(bundle, copy)
    config = json.loads((copy / "mcpm-config.json").read_text())
    change(config["golden"])
    (copy / "mcpm-config.json").write_text(json.dumps(config))
    return copy


def test_golden_record_is_the_reference_greedy_continuation(default_q4_bundle: Path) -> None:
    """Recomputed here from a fresh load with reference_for's copy (the export turns its model into the reference
    in place): the same ids, and top-5 logits equal to float32 rounding."""
    import torch

    from mcpm.export.golden import GOLDEN_PROMPT
    from mcpm.export.loading import DEFAULT_MODEL_DIR, load_model
    from mcpm.export.reference_generate import TorchStepper
    from mcpm.quantize.apply import reference_for
    from mcpm.quantize.recipe import Recipe

    golden = json.loads((default_q4_bundle / "mcpm-config.json").read_text())["golden"]
    loaded = load_model(DEFAULT_MODEL_DIR)
    prompt = loaded.tokenizer.encode(GOLDEN_PROMPT, add_bos=True)
    assert golden["prompt_ids"] == prompt and len(prompt) > 16 * 4  # crosses the bundle's prefill chunks (16)
    assert golden["tolerance"] == TOLERANCE_FLOAT and len(golden["ids"]) == GOLDEN_STEPS
    stepper = TorchStepper(reference_for(loaded.model, Recipe.parse("q4g32"), "float16"))
    logits = stepper.prefill(prompt)
    for step, token in enumerate(golden["ids"]):
        if step:
            logits = stepper.decode(golden["ids"][step - 1])
        assert int(torch.argmax(logits)) == token
        ids, values = zip(*golden["top5"][step], strict=True)
        assert list(ids) == torch.topk(logits, 5).indices.tolist()
        assert torch.allclose(torch.tensor(values), logits[list(ids)], atol=1e-5)
        assert golden["scale"][step] == pytest.approx(float(logits.abs().max()), rel=1e-6)
    assert len(set(golden["ids"])) > 5


def test_host_bundle_passes(default_q4_bundle: Path) -> None:
    result = self_test(default_q4_bundle)
    assert result["pass"] is True and result["reason"] == "", result
    assert result["steps"] == GOLDEN_STEPS and result["argmax_equal"] + result["near_ties"] == GOLDEN_STEPS
    assert result["near_ties"] <= 1  # float activations: summation order only
    assert result["max_logit_diff"] < result["tolerance"] / 4
    assert result["tokenizer"] == "pass" and result["device"] == "cpu" and result["kernel_variant"] == "default"
    assert result["prompt_tokens"] > 64 and result["ms"] > 0


def test_an_altered_token_fails_naming_the_kernel_set(default_q4_bundle: Path, tmp_path: Path) -> None:
    def swap_step_5(golden: dict[str, Any]) -> None:  # the reference's 2nd choice as if it were its greedy pick
        second = golden["top5"][5][1][0]
        golden["ids"][5] = second
        golden["top5"][5][0], golden["top5"][5][1] = golden["top5"][5][1], golden["top5"][5][0]

    result = self_test(altered(default_q4_bundle, tmp_path, swap_step_5))
    assert result["pass"] is False
    assert result["reason"].startswith("kernel set default on the cpu: step 5: "), result["reason"]
    assert "\n" not in result["reason"] and "tolerance" in result["reason"]


def test_a_logit_off_by_more_than_the_tolerance_fails(default_q4_bundle: Path, tmp_path: Path) -> None:
    def nudge(golden: dict[str, Any]) -> None:  # the 4th-largest logit at step 9, by 3 tolerances
        golden["top5"][9][3][1] += 3 * golden["tolerance"] * golden["scale"][9]

    result = self_test(altered(default_q4_bundle, tmp_path, nudge))
    assert result["pass"] is False
    token = json.loads((tmp_path / "altered" / "mcpm-config.json").read_text())["golden"]["top5"][9][3][0]
    assert f"step 9: the logit of token {token} is " in result["reason"], result["reason"]


def test_a_different_tokenizer_result_fails(default_q4_bundle: Path, tmp_path: Path) -> None:
    def other_prompt(golden: dict[str, Any]) -> None:
        golden["prompt"] = "A different text entirely. " + golden["prompt"]

    result = self_test(altered(default_q4_bundle, tmp_path, other_prompt))
    assert result["pass"] is False and result["tokenizer"].startswith("fail: id 1 of the golden prompt is ")
    assert result["reason"].startswith("tokenizer: id 1 "), result["reason"]


@pytest.mark.parametrize("change, message", [
    (lambda g: g.clear(), "mcpm-config.json \"golden\" is damaged"),
    (lambda g: g["ids"].append(7), "is damaged"),
    (lambda g: g["top5"][2].pop(), "top5/scale step 2 is damaged"),
    (lambda g: g["ids"].__setitem__(0, 10**6), "token id outside the vocabulary"),
    (lambda g: g.update(prompt_ids=[1] * 200), "more than the context of 128"),
])
def test_damaged_golden_records_are_refused(default_q4_bundle: Path, tmp_path: Path, change: Any,
                                            message: str) -> None:
    with pytest.raises(McpmError, match="re-export the bundle") as err:
        self_test(altered(default_q4_bundle, tmp_path, change))
    assert message in str(err.value)


def test_a_bundle_without_golden_results_says_so(default_q4_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(default_q4_bundle, copy)
    config = json.loads((copy / "mcpm-config.json").read_text())
    del config["golden"]
    (copy / "mcpm-config.json").write_text(json.dumps(config))
    with pytest.raises(McpmError, match="no golden results .*without --no-golden"):
        self_test(copy)


def test_cli_passes_then_fails_with_the_reason(default_q4_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mcpm.cli import cli

    ok = CliRunner().invoke(cli, ["selftest", str(default_q4_bundle), "-t", "2"])
    assert ok.exit_code == 0, ok.output
    assert "default     cpu     PASS" in ok.output and ok.output.rstrip().endswith("self-test passed")

    def swap(golden: dict[str, Any]) -> None:
        golden["ids"][0] = golden["top5"][0][1][0]

    bad = CliRunner().invoke(cli, ["selftest", str(altered(default_q4_bundle, tmp_path, swap)), "--json"])
    assert bad.exit_code == 1
    report = json.loads(bad.output)
    assert report["pass"] is False and [r["device"] for r in report["runs"]] == ["cpu"]
    assert "step 0: predicts token" in report["runs"][0]["reason"]


def test_a_model_too_large_for_the_reference_is_exported_without_golden(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden run's memory guard (export/golden.py): over budget, the export goes on without it, with a notice
    in its summary; the self-test then says what to do."""
    import mcpm.export.golden as golden
    from mcpm.export.exporter import ExportOptions, run_export
    from tests.conftest import tiny_minicpm, write_tiny

    ckpt = write_tiny(tmp_path / "tiny", tiny_minicpm(num_hidden_layers=1), seed=2)
    monkeypatch.setattr(golden, "REFERENCE_BYTES_PER_PARAM", 1e9)  # "needs" a petabyte
    report = run_export(ExportOptions(ckpt, tmp_path / "b", "host", "f32", (), 32, 8, progress=False))
    assert "golden" not in json.loads((tmp_path / "b" / "mcpm-config.json").read_text())
    assert "notice: no golden results in the bundle (the float32 reference needs about " in report.table()
    assert "export on a machine with more memory" in report.table()
    from mcpm.runtime.selftest import run_self_test

    with pytest.raises(McpmError, match="has no golden results"):  # said before any library is built
        run_self_test(tmp_path / "b")


def test_memory_guard_counts_the_vision_tower_for_the_golden_image_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """MiniCPM-V: the text golden needs the LM's reference (6.5 B/param), the golden image the LM in float32 with the
    vision tower's float32 copy (4 B/LM param + 6 B/vision param): a machine that holds the first but not the second
    gets the text golden and a notice; a small tower fits within the text run's peak."""
    from torch import nn

    import mcpm.export.golden as golden

    lm, vision = nn.Linear(1000, 1000, bias=False), nn.Linear(1000, 500, bias=False)  # 1.0M and 0.5M parameters
    monkeypatch.setattr(golden, "machine_bytes", lambda: int(6.8e6 / golden.MAX_REFERENCE_SHARE))  # 6.8 MB usable
    assert golden.reference_too_large(lm) == ""  # 6.5 MB
    assert "reference needs about" in golden.reference_too_large(lm, (vision,))  # 4 + 3 = 7 MB
    assert golden.reference_too_large(lm, (nn.Linear(100, 100, bias=False),)) == ""  # max(6.5, 4 + 0.06) MB
    monkeypatch.setattr(golden, "machine_bytes", lambda: 0)  # the OS does not say: no guard
    assert golden.reference_too_large(lm, (vision,)) == ""
