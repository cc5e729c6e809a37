"""mcpm-export of a MiniCPM-V 2.0 checkpoint (tiny): the plan's embed / prefill_embeds / vision entries, the
"vision" sections of plan.json and mcpm-config.json, and greedy text with an image vs the PyTorch reference."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mcpm.errors import McpmError
from mcpm.export.compiler.plan import Plan
from mcpm.export.compiler.vision_runner import ImageChat, encode_images, encode_slice, load_image_chat
from mcpm.export.exporter import ExportOptions, run_export
from mcpm.export.loading import load_model
from mcpm.export.models.minicpmv.preprocess import ImageTokens, image_positions, plan_slices, prepare_config_image
from mcpm.export.models.minicpmv.prompt import chat_prompt_ids
from mcpm.quantize.apply import dequantized_copy
from mcpm.quantize.recipe import Recipe
from tests.conftest import write_tiny
from tests.test_minicpmv import tiny_minicpmv

CTX, CHUNK = 256, 8  # chunk 8 < query_num 16: every image crosses prefill chunk boundaries


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def v_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("v") / "ckpt", tiny_minicpmv(), seed=11)


@pytest.fixture(scope="module")
def ref(v_dir: Path):
    return load_model(v_dir).model  # MiniCPMV, float32


def _export(v_dir: Path, out: Path, quant: str, vision_dtype: str, max_patches: int = 0) -> Path:
    run_export(ExportOptions(v_dir, out, "host", quant, (), CTX, CHUNK, progress=False, vision_dtype=vision_dtype,
                             max_patches=max_patches))
    return out


@pytest.fixture(scope="module")
def f32_chat(v_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageChat:
    """f32 LM + f32 vision; max_patches 25 (--max-patches) so the native 5x5 grid fits."""
    return load_image_chat(_export(v_dir, tmp_path_factory.mktemp("b") / "f32", "f32", "f32", max_patches=25))


@pytest.fixture(scope="module")
def q4_chat(v_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ImageChat:
    return load_image_chat(_export(v_dir, tmp_path_factory.mktemp("b") / "q4", "q4g32", "f16"))


def _bundle(chat: ImageChat) -> Path:
    assert chat.bundle_dir is not None
    return chat.bundle_dir


# -- sections ---------------------------------------------------------------------------------------------------------
def test_plan_and_config_vision_sections(f32_chat: ImageChat, q4_chat: ImageChat) -> None:
    for chat, vdtype, max_patches in ((f32_chat, "float32", 25), (q4_chat, "float16", 18)):
        plan = chat.model.plan
        assert list(plan.entries) == ["prefill", "decode", "embed", "prefill_embeds", "vision"]
        # default max_patches = ceil(1.125 * (56 // 14)^2) = 18
        assert plan.vision == {"patch": 14, "pos_grid": 5, "max_patches": max_patches, "query_num": 16,
                               "hidden": 64, "vision_hidden": 48}
        assert plan.entries["embed"].n_max == plan.entries["prefill_embeds"].n_max == CHUNK
        assert plan.entries["vision"].n_max == max_patches
        names = [w.name for w in plan.weights]
        first = next(i for i, n in enumerate(names) if n.startswith(("vision.", "resampler.")))
        assert all(n.startswith(("vision.", "resampler.")) for n in names[first:])
        dtypes = {w.name: w.dtype for w in plan.weights[first:]}
        assert dtypes["vision.blocks.0.qkv_w"] == dtypes["resampler.proj"] == vdtype  # the large matrices
        used = {a.name for e in ("embed",) for c in plan.entries[e].calls for a in c.args if a.kind == "weight"}
        assert used and all(n.startswith("embed") for n in used)  # an entry takes only the weights it reads
        for name in ("embed", "vision"):
            assert not any(a.kind in ("cache",) or (a.kind == "scalar" and a.name == "pos")
                           for c in plan.entries[name].calls for a in c.args)
    bundle_dir = _bundle(f32_chat)
    text = (bundle_dir / "plan.json").read_text()
    assert Plan.from_json(text).to_json() == text
    cfg = json.loads((bundle_dir / "mcpm-config.json").read_text())
    assert cfg["family"] == "minicpmv"
    assert cfg["vision"] == {
        "max_slices": 9, "scale_resolution": 56, "slice_mode": True, "patch": 14, "query_num": 16,
        "max_pixels": 4096 * 4096,
        "image_tokens": {"image_start": 4096, "image_end": 4097, "slice_start": 4098, "slice_end": 4099,
                         "unk": 0, "newline": 15}}
    assert cfg["tokenizer"]["added_tokens"] == {"<image>": 4096, "</image>": 4097, "<slice>": 4098,
                                                "</slice>": 4099}


# -- entries ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [CHUNK, 3])
def test_embed_then_prefill_embeds_equals_prefill(f32_chat: ImageChat, n: int) -> None:
    pm = f32_chat.model
    ids = np.random.default_rng(n).integers(0, 4100, n).astype(np.int32)
    pm.reset()
    pm.run("prefill", ids[:2])
    want = pm.run("prefill", ids)
    pm.reset()
    pm.run("prefill", ids[:2])
    embeds = pm.run("embed", ids)
    assert embeds.shape == (n, 64) and pm.pos == 2  # embed has no cache: pos stays
    got = pm.run_entry("prefill_embeds", embeds=embeds)
    assert pm.pos == 2 + n
    assert rel(got, want) <= 1e-6
    expected = f32_chat_ref_embed(f32_chat, ids)
    np.testing.assert_allclose(embeds, expected, rtol=1e-6, atol=1e-6)
    pm.reset()


def f32_chat_ref_embed(chat: ImageChat, ids: np.ndarray) -> np.ndarray:
    w = chat.model.weights[[w.name for w in chat.model.plan.weights].index("embed")]
    return w[ids] * np.float32(chat.cfg.scale_emb)


@pytest.mark.parametrize("grid", [(5, 5), (4, 4), (3, 6), (6, 3), (1, 25), (1, 1), (2, 7)])
def test_vision_entry_matches_reference(f32_chat: ImageChat, ref, grid: tuple[int, int]) -> None:
    rows, cols = grid
    pixels = np.random.default_rng(rows * 31 + cols).uniform(-1, 1, (3, rows * 14, cols * 14)).astype(np.float32)
    got = encode_slice(f32_chat.model, pixels, f32_chat.cfg)
    with torch.no_grad():
        want = ref.encode_slice(torch.from_numpy(pixels)[None])[0].numpy()
    assert got.shape == (16, 64)
    assert rel(got, want) <= 1e-4


def test_slice_larger_than_max_patches_is_refused(q4_chat: ImageChat) -> None:
    with pytest.raises(McpmError, match="max_patches"):
        encode_slice(q4_chat.model, np.zeros((3, 14, 19 * 14), np.float32), q4_chat.cfg)


# -- greedy text with an image vs the reference ------------------------------------------------------------------------
SIZES = {"unsliced": (40, 30), "2x2": (112, 112), "1x4": (50, 200), "2x1": (100, 60)}


def reference_greedy(model, ids: list[int], prep, tokens: ImageTokens, n: int) -> tuple[list[int], np.ndarray]:
    positions = torch.from_numpy(image_positions(ids, tokens))
    slices = [torch.from_numpy(p) for p in prep.pixels]
    out: list[int] = []
    with torch.no_grad():
        cache = model.new_cache()
        logits = model(torch.tensor([ids]), slices, positions, cache=cache)[0, -1]
        first = logits.numpy().copy()
        while True:
            out.append(int(logits.argmax()))
            if len(out) == n:
                return out, first
            logits = model(torch.tensor([[out[-1]]]), cache=cache)[0, -1]


def test_slice_layouts_of_the_test_sizes() -> None:
    grids = {name: plan_slices(w, h, scale_resolution=56).grid for name, (w, h) in SIZES.items()}
    assert grids == {"unsliced": None, "2x2": (2, 2), "1x4": (1, 4), "2x1": (2, 1)}


@pytest.mark.parametrize("name", list(SIZES))
def test_greedy_with_one_image_matches_reference(f32_chat: ImageChat, ref, name: str) -> None:
    w, h = SIZES[name]
    image = np.random.default_rng(w + h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    prep = prepare_config_image(image, f32_chat.cfg)
    ids = chat_prompt_ids(f32_chat.tokenizer, " Describe the picture, please. ", [prep], 16, f32_chat.tokens)
    positions = image_positions(ids, f32_chat.tokens)
    assert len(positions) == prep.plan.num_images * 16 and positions[0] % CHUNK != 0
    want, want_logits = reference_greedy(ref, ids, prep, f32_chat.tokens, 12)
    got = f32_chat.generate(" Describe the picture, please. ", [prep], max_new=12, stop=False)
    assert got == want
    assert len(set(got)) > 2
    # the first logits themselves
    from mcpm.export.compiler.vision_runner import prefill_with_features

    pm = f32_chat.model
    pm.reset()
    logits = prefill_with_features(pm, ids, positions, encode_images(pm, [prep], f32_chat.cfg))
    assert rel(logits[-1], want_logits) <= 1e-4


def test_chat_prompt_layout(f32_chat: ImageChat) -> None:
    tok, t = f32_chat.tokenizer, f32_chat.tokens
    grids = [(2, 1), None]
    ids = chat_prompt_ids(tok, "  two images \n", grids, 16, t)
    one = [t.image_start, *[t.unk] * 16, t.image_end]
    image1 = [*one, t.slice_start, *one, *one, t.slice_end]
    expected = [1, *tok.encode("<用户>"), *image1, *one, *tok.encode("\ntwo images<AI>")]
    assert ids == expected
    assert chat_prompt_ids(tok, "x", grids, 16, t, new_conversation=False) == [
        *tok.encode("<用户>"), *image1, *one, *tok.encode("\nx<AI>")]
    assert chat_prompt_ids(tok, " hi ", [], 16, t) == tok.encode_chat([{"role": "user", "content": "hi"}])


def test_q4_f16_bundle_close_to_reference(q4_chat: ImageChat, ref) -> None:
    """q4g32 LM + f16 vision: the reference with the LM dequantized and the vision weights rounded to f16."""
    twin = copy.deepcopy(ref)
    twin.llm = dequantized_copy(ref.llm, Recipe.parse("q4g32"))
    with torch.no_grad():
        for p in (*twin.vision.parameters(), *twin.resampler.parameters()):
            p.copy_(p.half().float())
    prep = prepare_config_image(np.random.default_rng(5).integers(0, 256, (112, 112, 3), dtype=np.uint8),
                                q4_chat.cfg)
    ids = chat_prompt_ids(q4_chat.tokenizer, "What is it?", [prep], 16, q4_chat.tokens)
    _, want = reference_greedy(twin, ids, prep, q4_chat.tokens, 1)
    pm = q4_chat.model
    pm.reset()
    from mcpm.export.compiler.vision_runner import prefill_with_features

    feats = encode_images(pm, [prep], q4_chat.cfg)
    with torch.no_grad():
        want_feats = torch.cat([twin.encode_slice(torch.from_numpy(p)[None])[0] for p in prep.pixels]).numpy()
    assert rel(feats, want_feats) <= 2e-3
    logits = prefill_with_features(pm, ids, image_positions(ids, q4_chat.tokens), feats)
    assert rel(logits[-1], want) <= 1e-2


def test_golden_image_record_is_the_reference_turn(q4_chat: ImageChat, ref) -> None:
    """mcpm-config.json golden.image: the chat turn of the generated image (two rows of slices: the newline between
    them is in the ids) and the greedy continuation of the reference (q4g32 dequantized, f16 vision weights, f16 KV)."""
    from mcpm.export.golden import GOLDEN_IMAGE_MESSAGE, golden_image
    from mcpm.quantize.apply import reference_for

    golden = json.loads((_bundle(q4_chat) / "mcpm-config.json").read_text())["golden"]
    image = golden["image"]
    prep = prepare_config_image(golden_image(image["width"], image["height"]), q4_chat.cfg)
    assert prep.plan.grid == (1, 2) and image["slices"] == 3 and image["tolerance"] == golden["tolerance"]
    ids = chat_prompt_ids(q4_chat.tokenizer, GOLDEN_IMAGE_MESSAGE, [prep], 16, q4_chat.tokens)
    assert image["prompt_ids"] == ids and q4_chat.tokens.newline in ids
    twin = copy.deepcopy(ref)
    twin.llm = reference_for(twin.llm, Recipe.parse("q4g32"), "float16")
    with torch.no_grad():
        for p in (*twin.vision.parameters(), *twin.resampler.parameters()):
            p.copy_(p.half().float())
    want, _ = reference_greedy(twin, ids, prep, q4_chat.tokens, len(image["ids"]))
    assert image["ids"] == want


# -- bad input --------------------------------------------------------------------------------------------------------
def test_gpu_device_is_refused_for_minicpmv(v_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(McpmError, match="--device gpu does not support MiniCPM-V") as info:
        run_export(ExportOptions(v_dir, tmp_path / "o", context_length=64, prefill_chunk=8, progress=False,
                                 device="gpu"))
    assert "\n" not in str(info.value) and "--device cpu" in str(info.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["entries"].pop("prefill_embeds"), "a vision plan needs the entries .*prefill_embeds missing"),
        (lambda d: d.pop("vision"), "needs the plan's \"vision\" section"),
        (lambda d: d["vision"].update(max_patches=7), "vision entry n_max 25 != vision.max_patches 7"),
        (lambda d: d["vision"].update(query_num=0), "vision.query_num must be a positive integer"),
        (lambda d: d["entries"].update(extra=d["entries"]["decode"]), "unknown entry 'extra'"),
        (lambda d: _first_input(d, "vision").update(name="tokens"), "unknown input 'tokens'"),
        (lambda d: _first_input(d, "prefill_embeds").update(name="patches"), "unknown input 'patches'"),
        (lambda d: d["entries"]["embed"]["calls"][0]["args"].append({"kind": "scalar", "name": "pos",
                                                                     "dtype": "int64"}), "has no KV cache"),
    ],
)
def test_bad_vision_plans_are_refused(f32_chat: ImageChat, edit, message: str) -> None:
    d = json.loads((_bundle(f32_chat) / "plan.json").read_text())
    edit(d)
    with pytest.raises(McpmError, match=message) as info:
        Plan.from_json(json.dumps(d))
    assert str(info.value).startswith("invalid plan:") and "\n" not in str(info.value)


def _first_input(d: dict, entry: str) -> dict:
    return next(a for c in d["entries"][entry]["calls"] for a in c["args"] if a["kind"] == "input")


def test_cli_options(tmp_path: Path, v_dir: Path) -> None:
    from click.testing import CliRunner

    from mcpm.export_cli import export

    res = CliRunner().invoke(export, ["--help"])
    assert "--vision-dtype" in res.output and "--max-patches" in res.output
    res = CliRunner().invoke(export, [str(v_dir), "--device", "gpu", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    res = CliRunner().invoke(export, [str(v_dir), "--max-patches", "0", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "--max-patches" in res.output
