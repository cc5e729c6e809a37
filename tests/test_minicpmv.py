"""MiniCPM-V 2.0 reference: vision tower vs transformers' SiglipVisionModel, Resampler2 vs nn.MultiheadAttention,
the image splice into the LM, the slicer's rules on many image sizes, and bad images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import SiglipVisionConfig, SiglipVisionModel

from mcpm.errors import CheckpointError
from mcpm.export.families import FAMILIES, all_presets
from mcpm.export.hf_config import parse_config
from mcpm.export.loading import load_model
from mcpm.export.models.minicpmv.config import MiniCPMVConfig
from mcpm.export.models.minicpmv.preprocess import (
    ImageError,
    ImageTokens,
    ensure_divide,
    image_positions,
    load_image,
    placeholder_ids,
    placeholder_text,
    plan_slices,
    prepare_config_image,
    prepare_image,
    to_rgb,
)
from mcpm.export.models.minicpmv.vision import resize_position_table
from tests.conftest import write_tiny

ATOL = 1e-4
TOKENS = ImageTokens(image_start=5, image_end=6, slice_start=7, slice_end=8, unk=0, newline=13)


def tiny_minicpmv(**overrides: Any) -> dict[str, Any]:
    """V2.0 architecture, tiny: 5x5 position grid, 3 vision blocks (2 used), 16 queries, slices at 56x56."""
    cfg: dict[str, Any] = {
        "model_type": "minicpmv",
        "vocab_size": 4128,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "rope_theta": 5000.0,
        "scale_emb": 3.5,
        "scale_depth": 1.7,
        "dim_model_base": 16,
        "tie_word_embeddings": False,
        "vision_encoder": "vit_so400m_patch14_siglip_384",
        "vision_config": {"hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 3,
                          "num_attention_heads": 4, "image_size": 70, "patch_size": 14, "layer_norm_eps": 1e-6},
        "drop_vision_last_layer": True,
        "query_num": 16,
        "resampler_num_heads": 2,
        "max_slice_nums": 9,
        "scale_resolution": 56,
        "patch_size": 14,
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny(tmp_path_factory.mktemp("minicpmv"), tiny_minicpmv(), seed=11)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path):
    return load_model(tiny_dir, tokenizer=False).model


# -- config, names, preset ------------------------------------------------------------------------------------------
def test_preset_real_shapes_and_published_names() -> None:
    family, data = all_presets()["minicpm-v-2"]
    assert family is FAMILIES["minicpmv"]
    cfg = parse_config(MiniCPMVConfig, data)
    assert (cfg.vision_hidden, cfg.vision_layers_used, cfg.vision_heads, cfg.vision_inter) == (1152, 26, 16, 4304)
    assert (cfg.resampler_heads, cfg.query_grid, cfg.vision_pos_grid) == (18, 8, 27)
    with torch.device("meta"):
        model = family.model_cls(cfg)
    shapes = {family.names.to_hf(n): tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes["vpm.patch_embed.proj.weight"] == (1152, 3, 14, 14)
    assert shapes["vpm.pos_embed"] == (1, 729, 1152)
    assert shapes["vpm.blocks.25.attn.qkv.weight"] == (3456, 1152) and "vpm.blocks.26.norm1.weight" not in shapes
    assert shapes["vpm.blocks.0.mlp.fc1.weight"] == (4304, 1152) and shapes["vpm.norm.bias"] == (1152,)
    assert shapes["resampler.query"] == (64, 2304) and shapes["resampler.proj"] == (2304, 2304)
    assert shapes["resampler.kv_proj.weight"] == (2304, 1152)
    assert shapes["resampler.attn.in_proj_weight"] == (6912, 2304)
    assert shapes["llm.model.embed_tokens.weight"] == shapes["llm.lm_head.weight"] == (122753, 2304)
    assert shapes["llm.model.layers.39.mlp.down_proj.weight"] == (2304, 5760)
    for hf in shapes:  # the map is a bijection
        assert family.names.to_hf(family.names.to_own(hf)) == hf
    assert 3.3e9 < sum(math.prod(s) for s in shapes.values()) < 3.5e9


@pytest.mark.parametrize("change", [{"version": 2.5}, {"vision_encoder": ""}, {"query_num": 15},
                                    {"vision_encoder": "vit_unknown", "vision_config": None}])
def test_config_refuses_other_versions_and_bad_values(change: dict) -> None:
    with pytest.raises(CheckpointError):
        parse_config(MiniCPMVConfig, tiny_minicpmv(**change))


# -- vision tower vs transformers' SigLIP -----------------------------------------------------------------------------
def siglip_from_checkpoint(model_dir: Path, cfg: dict[str, Any]) -> SiglipVisionModel:
    """transformers' SiglipVisionModel with the used blocks, from the published (timm) names: qkv split in three."""
    vc = cfg["vision_config"]
    used = vc["num_hidden_layers"] - 1
    hf_cfg = SiglipVisionConfig(hidden_size=vc["hidden_size"], intermediate_size=vc["intermediate_size"],
                                num_hidden_layers=used, num_attention_heads=vc["num_attention_heads"],
                                image_size=vc["image_size"], patch_size=vc["patch_size"],
                                layer_norm_eps=vc["layer_norm_eps"], hidden_act="gelu_pytorch_tanh",
                                vision_use_head=False, attn_implementation="eager")
    sd = load_file(model_dir / "model.safetensors")
    out = {
        "embeddings.patch_embedding.weight": sd["vpm.patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": sd["vpm.patch_embed.proj.bias"],
        "embeddings.position_embedding.weight": sd["vpm.pos_embed"][0],
        "post_layernorm.weight": sd["vpm.norm.weight"],
        "post_layernorm.bias": sd["vpm.norm.bias"],
    }
    for i in range(used):
        src, dst = f"vpm.blocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            q, k, v = sd[src + f"attn.qkv.{p}"].chunk(3)
            out.update({dst + f"self_attn.q_proj.{p}": q, dst + f"self_attn.k_proj.{p}": k,
                        dst + f"self_attn.v_proj.{p}": v})
            for own, theirs in (("attn.proj", "self_attn.out_proj"), ("norm1", "layer_norm1"),
                                ("norm2", "layer_norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
                out[dst + f"{theirs}.{p}"] = sd[src + f"{own}.{p}"]
    model = SiglipVisionModel(hf_cfg).eval()
    missing, unexpected = model.load_state_dict(out, strict=False)
    assert not unexpected and all("position_ids" in m for m in missing), (missing, unexpected)
    return model


def test_vision_tower_matches_siglip_native_size(tiny, tiny_dir: Path) -> None:
    """At the native 5x5 grid no interpolation happens: the whole tower is transformers' arithmetic."""
    hf = siglip_from_checkpoint(tiny_dir, tiny_minicpmv())
    pixels = torch.rand(2, 3, 70, 70) * 2 - 1
    with torch.no_grad():
        expected = hf(pixel_values=pixels).last_hidden_state
        got = tiny.vision(pixels)
    assert expected.shape == (2, 25, 48) and expected.abs().max() > 0.5
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("hw", [(56, 98), (112, 42), (14, 14)], ids=["4x7", "8x3", "1x1"])
def test_vision_tower_matches_siglip_dynamic_size(tiny, tiny_dir: Path, monkeypatch, hw) -> None:
    """Other sizes: transformers' tower with its position interpolation replaced by timm's (bicubic, antialias;
    transformers' own uses a = -0.75 without antialias, which is not what MiniCPM-V 2.0 runs)."""
    hf = siglip_from_checkpoint(tiny_dir, tiny_minicpmv())
    emb = hf.embeddings

    def timm_interp(embeddings, height, width):
        return resize_position_table(emb.position_embedding.weight[None], 5, height // 14, width // 14)

    monkeypatch.setattr(emb, "interpolate_pos_encoding", timm_interp)
    pixels = torch.rand(1, 3, *hw) * 2 - 1
    with torch.no_grad():
        expected = hf(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        got = tiny.vision(pixels)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


def _aa_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Dense [out, in] matrix of separable bicubic (a=-0.5), support widened by the scale when shrinking."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo, hi = max(int(center - 2 * fs + 0.5), 0), min(int(center + 2 * fs + 0.5), n_in)
        x = np.abs((np.arange(lo, hi) - center + 0.5) / fs)
        w = np.where(x < 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x < 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0))
        m[o, lo:hi] = w / w.sum()
    return m


@pytest.mark.parametrize("hw", [(8, 8), (3, 9), (2, 2), (5, 5), (1, 12)])
def test_position_table_interpolation(hw) -> None:
    table = torch.randn(1, 25, 6)
    got = resize_position_table(table, 5, *hw)[0].reshape(*hw, 6).numpy()
    grid = table[0].reshape(5, 5, 6).double().numpy()
    expected = np.einsum("hi,wj,ijd->hwd", _aa_bicubic_matrix(5, hw[0]), _aa_bicubic_matrix(5, hw[1]), grid)
    np.testing.assert_allclose(got, expected, atol=1e-5)


# -- resampler vs nn.MultiheadAttention ------------------------------------------------------------------------------
def _official_sincos(dim: int, rows: int, cols: int) -> np.ndarray:
    """The published get_2d_sincos_pos_embed in float32 NumPy (meshgrid w first)."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32)), axis=0)
    return np.concatenate([one_d(dim // 2, grid[0]), one_d(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("grid", [(3, 4), (5, 5), (1, 7)])
def test_resampler_matches_multihead_attention(tiny, grid) -> None:
    rs = tiny.resampler
    d, heads = 64, 2
    mha = torch.nn.MultiheadAttention(d, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(rs.attn.in_proj_weight)
        mha.in_proj_bias.copy_(rs.attn.in_proj_bias)
        mha.out_proj.weight.copy_(rs.attn.out_proj.weight)
        mha.out_proj.bias.copy_(rs.attn.out_proj.bias)
    x = torch.randn(2, grid[0] * grid[1], 48)

    def ln(t, m):
        return F.layer_norm(t, (d,), m.weight, m.bias, eps=1e-6)

    with torch.no_grad():
        kv = ln(x @ rs.kv_proj.weight.T, rs.ln_kv)
        q = ln(rs.query, rs.ln_q) + torch.from_numpy(_official_sincos(d, 4, 4))
        k = kv + torch.from_numpy(_official_sincos(d, *grid))
        out = mha(q.expand(2, -1, -1), k, kv, need_weights=False)[0]
        expected = ln(out, rs.ln_post) @ rs.proj
        got = rs(x, *grid)
    assert got.shape == (2, 16, 64)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# -- the whole model: features spliced in after the embedding scale ---------------------------------------------------
@pytest.mark.parametrize("size", [(100, 60), (40, 30), (170, 50)], ids=["2-slices", "unsliced", "wide"])
def test_model_logits_with_one_image(tiny, size) -> None:
    cfg = tiny.cfg
    rng = np.random.default_rng(3)
    prep = prepare_config_image(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), cfg)
    ph = placeholder_ids(prep.plan.grid, cfg.query_num, TOKENS)
    ids = [1, 300, 301, *ph, TOKENS.newline, 400, 401, 402]
    pos = torch.from_numpy(image_positions(ids, TOKENS))
    assert len(pos) == prep.plan.num_images * cfg.query_num
    ids_t = torch.tensor([ids])
    slices = [torch.from_numpy(p) for p in prep.pixels]
    with torch.no_grad():
        got = tiny(ids_t, slices, pos)
        feats = []
        for s in slices:
            v = tiny.vision(s[None])
            feats.append(tiny.resampler(v, s.shape[1] // 14, s.shape[2] // 14)[0])
        h = tiny.llm.embed.weight[ids_t] * cfg.scale_emb
        h[0, pos] = torch.cat(feats)  # NOT scaled
        expected = tiny.llm(embeds=h)
        text_only = tiny.llm(ids_t)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    first = int(pos[0])
    torch.testing.assert_close(got[:, :first], text_only[:, :first], atol=ATOL, rtol=1e-4)
    assert (got[:, first:] - text_only[:, first:]).abs().max() > 1e-2
    # incremental decoding with a cache gives the same last logits
    with torch.no_grad():
        cache = tiny.new_cache()
        tiny(ids_t[:, :-1], slices, pos, cache=cache)
        last = tiny(ids_t[:, -1:], cache=cache)
    torch.testing.assert_close(last[0, -1], got[0, -1], atol=ATOL, rtol=1e-4)


# -- slicing rules -----------------------------------------------------------------------------------------------------
SIZES = [(1344, 1344), (448, 448), (447, 449), (449, 449), (1000, 200), (200, 3000), (1, 1000), (1000, 1), (1, 1),
         (5000, 4000), (10, 10), (4032, 3024), (3024, 4032), (640, 480), (20000, 300), (300, 20000), (896, 448),
         (913, 437), (1920, 1080), (12000, 12000), (2, 3), (14, 5000), (700, 700), (897, 448)]


@pytest.mark.parametrize("wh", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_slice_plan_follows_the_rules(wh) -> None:
    w, h = wh
    plan = plan_slices(w, h)
    ratio = w * h / 448**2
    m = min(math.ceil(ratio), 9)
    ow, oh = plan.overview
    assert ow % 14 == 0 and oh % 14 == 0 and ow >= 14 and oh >= 14
    if m <= 1:
        assert plan.grid is None and plan.num_images == 1
        return
    cols, rows = plan.grid
    assert cols * rows in {n for n in (m - 1, m, m + 1) if 1 < n <= 9}
    assert 2 <= plan.num_images <= 10
    options = [(c, n // c) for n in (m - 1, m, m + 1) if 1 < n <= 9 for c in range(1, n + 1) if n % c == 0]
    best = min(abs(math.log(w / h) - math.log(c / r)) for c, r in options)
    assert abs(math.log(w / h) - math.log(cols / rows)) == best
    sw, sh = plan.slice_size
    assert sw % 14 == 0 and sh % 14 == 0 and plan.refine == (sw * cols, sh * rows)
    if 0.25 < w / h < 4:  # ordinary aspect: every image is ~448^2 in area
        assert 0.8 < ow * oh / 448**2 < 1.2 and 0.8 < sw * sh / 448**2 < 1.2


def test_known_slice_layouts() -> None:
    p = plan_slices(1344, 1344)
    assert (p.overview, p.grid, p.refine, p.num_images * 64) == ((448, 448), (3, 3), (1344, 1344), 640)
    assert plan_slices(448, 448) == plan_slices(448, 448, max_slices=1)
    # 449x449: 1x2 and 2x1 tie on log-aspect error; the first enumerated (fewer columns) wins, as in the reference
    assert plan_slices(448, 448).grid is None and plan_slices(449, 449).grid == (1, 2)
    assert plan_slices(200, 3000).grid == (1, 4)
    assert plan_slices(4032, 3024).grid == (3, 3) and plan_slices(1920, 1080).grid == (4, 2)
    assert plan_slices(1344, 1344, never_split=True).grid is None
    # Python's round() halves to even: 35/14 = 2.5 -> 28 (C's round would give 42)
    assert ensure_divide(35, 14) == 28 and ensure_divide(49, 14) == 56 and ensure_divide(3, 14) == 14


@pytest.mark.parametrize("wh", [(100, 60), (60, 100), (7, 300), (300, 7), (1, 1), (57, 57), (200, 200)])
def test_prepared_pixels_match_the_plan(wh) -> None:
    w, h = wh
    img = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    prep = prepare_image(img, scale_resolution=56)
    plan = prep.plan
    assert plan == plan_slices(w, h, scale_resolution=56)
    assert len(prep.images) == len(prep.pixels) == plan.num_images <= 10
    assert prep.images[0].shape == (plan.overview[1], plan.overview[0], 3)
    for im, px in zip(prep.images, prep.pixels, strict=True):
        assert px.dtype == np.float32 and px.shape == (3, *im.shape[:2])
        assert im.shape[0] % 14 == 0 and im.shape[1] % 14 == 0
        np.testing.assert_array_equal(px, (im.transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5)
    if plan.grid:
        cols, rows = plan.grid
        tiles = prep.images[1:]
        refine = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)])
        assert refine.shape == (plan.refine[1], plan.refine[0], 3)
    again = prepare_image(img, scale_resolution=56)
    assert all(np.array_equal(a, b) for a, b in zip(prep.pixels, again.pixels, strict=True))


def test_resize_properties() -> None:
    from mcpm.export.models.minicpmv.preprocess import resize_bicubic

    flat = np.full((37, 91, 3), 123, dtype=np.uint8)
    assert (resize_bicubic(flat, 448, 182) == 123).all() and (resize_bicubic(flat, 14, 14) == 123).all()
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(resize_bicubic(img, 40, 30), img)


def test_resize_matches_pil_exactly() -> None:
    Image = pytest.importorskip("PIL.Image")
    from mcpm.export.models.minicpmv.preprocess import resize_bicubic

    rng = np.random.default_rng(1)
    for w, h, ow, oh in [(100, 80, 448, 350), (37, 513, 14, 196), (640, 480, 630, 476), (3, 5, 448, 448)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(img).resize((ow, oh), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(resize_bicubic(img, ow, oh), expected)


# -- prompt layout ----------------------------------------------------------------------------------------------------
def test_placeholder_layout() -> None:
    q = 3
    one = "<image>" + "<unk>" * q + "</image>"
    assert placeholder_text(None, q) == one
    assert placeholder_text((3, 2), q) == one + "<slice>" + one * 3 + "\n" + one * 3 + "</slice>"
    ids = placeholder_ids((3, 2), q, TOKENS)
    one_ids = [5, 0, 0, 0, 6]
    assert ids == [*one_ids, 7, *one_ids * 3, 13, *one_ids * 3, 8]
    pos = image_positions([1, 2, *ids, 9], TOKENS)
    assert len(pos) == 7 * q and all([1, 2, *ids, 9][i] == 0 for i in pos)


class _Vocab:
    """A tokenizer's token_id over a fixed vocabulary (the markers, and the newline pieces it has)."""

    def __init__(self, **pieces: int) -> None:
        self.pieces = {"<image>": 20, "</image>": 21, "<slice>": 22, "</slice>": 23, "<unk>": 0, **pieces}

    def token_id(self, piece: str) -> int | None:
        return self.pieces.get(piece)


@pytest.mark.parametrize(("pieces", "newline"), [({"\n": 5, "<0x0A>": 13}, 5), ({"<0x0A>": 13}, 13)],
                         ids=["newline-piece", "byte-piece-only"])
def test_newline_between_slice_rows_is_the_newline_piece(pieces: dict[str, int], newline: int) -> None:
    """The official processor joins slice rows with "\n", which a SentencePiece model with a "\n" piece (MiniCPM-2B's,
    id 5: vLLM's MiniCPM-V-2 puts 5 between rows) encodes as that piece, not as the byte fallback <0x0A>."""
    tokens = ImageTokens.from_tokenizer(_Vocab(**pieces))
    assert tokens.newline == newline
    assert placeholder_ids((1, 2), 1, tokens) == [20, 0, 21, 22, 20, 0, 21, newline, 20, 0, 21, 23]


# -- bad images -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 10, 3), (10, 0, 3), (0, 0), (0, 5)])
def test_empty_images_are_refused(shape) -> None:
    with pytest.raises(ImageError, match="empty"):
        prepare_image(np.zeros(shape, dtype=np.uint8))
    with pytest.raises(ImageError):
        plan_slices(shape[1], shape[0])


def test_channel_layouts_become_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for arr in (gray, gray[:, :, None], np.stack([gray, np.full_like(gray, 7)], axis=2)):
        rgb = to_rgb(arr)
        assert rgb.shape == (3, 4, 3) and all(np.array_equal(rgb[:, :, c], gray) for c in range(3))
    rgba = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(rgba), rgba[:, :, :3])  # alpha dropped, as PIL's convert("RGB")
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255], [128, 0, 0, 128], [0, 64, 255, 10]]], np.uint8)
    np.testing.assert_array_equal(to_rgb(cmyk, mode="CMYK")[0],
                                  [[255, 255, 255], [0, 255, 255], [0, 0, 0], [63, 127, 127], [245, 184, 0]])
    assert prepare_image(gray).plan.overview == plan_slices(4, 3).overview
    for bad in (np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((2, 2, 2, 3), np.uint8)):
        with pytest.raises(ImageError):
            to_rgb(bad)
    with pytest.raises(ImageError):
        to_rgb(np.zeros((4, 4, 3), np.uint8), mode="CMYK")


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ImageError):
        load_image(tmp_path / "missing.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(ImageError):
        load_image(junk)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError):
        load_image(empty)


def test_pil_images_convert_like_pil() -> None:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    for mode, ch in (("L", None), ("LA", 2), ("RGBA", 4), ("CMYK", 4), ("P", None), ("I;16", None)):
        shape = (6, 7) if ch is None else (6, 7, ch)
        if mode == "P":
            im = Image.fromarray(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)).convert("P")
        elif mode == "I;16":
            im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert("I;16")
        else:
            im = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
        np.testing.assert_array_equal(to_rgb(im), np.asarray(im.convert("RGB")))
