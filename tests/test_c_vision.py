"""MiniCPM-V in the C runtime: the vision-entry inputs (mcpm_vision.c) against the NumPy reference
(export/models/minicpmv/vision_inputs.py) and PyTorch, and image chat (mcpm_encode_image + mcpm_session_chat)
against a Python driver over the same plan (PlanModel: vision -> embed / overwrite / prefill_embeds -> decode).

The image-chat tests export a tiny MiniCPM-V bundle.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "runtime_bindings" / "c"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
P = ctypes.c_void_p

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C runtime cannot be built")


# ---------------------------------------------------------------- (a) the vision inputs


@pytest.fixture(scope="module")
def vlib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("cvision") / "libmcpm_vision.so"
    res = subprocess.run(["gcc", *CFLAGS, "-O2", "-shared", "-o", str(out), str(C_DIR / "mcpm_vision.c"), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(out))
    lib.mcpm_vision_patchify.argtypes = [P, ctypes.c_int, ctypes.c_int, ctypes.c_int, P]
    lib.mcpm_vision_aa_matrix.argtypes = [ctypes.c_int, ctypes.c_int, P]
    lib.mcpm_vision_pos_interp.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, P]
    lib.mcpm_vision_key_pos.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, P]
    lib.mcpm_vision_fit_pixels.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.POINTER(ctypes.c_int),
                                           ctypes.POINTER(ctypes.c_int)]
    return lib


def c_aa(lib: ctypes.CDLL, n_in: int, n_out: int) -> np.ndarray:
    out = np.full((n_out, n_in), np.nan, np.float32)  # [n_out, n_in]
    assert lib.mcpm_vision_aa_matrix(n_in, n_out, out.ctypes.data) == 0
    return out


def c_pos_interp(lib: ctypes.CDLL, rows: int, cols: int, grid: int) -> np.ndarray:
    out = np.full((rows * cols, grid * grid), np.nan, np.float32)  # [n, G*G]
    assert lib.mcpm_vision_pos_interp(rows, cols, grid, out.ctypes.data) == 0
    return out


def c_key_pos(lib: ctypes.CDLL, dim: int, rows: int, cols: int) -> np.ndarray:
    out = np.full((rows * cols, dim), np.nan, np.float32)  # [n, D]
    assert lib.mcpm_vision_key_pos(dim, rows, cols, out.ctypes.data) == 0
    return out


SIZES = [(1, 1), (1, 5), (5, 1), (5, 5), (5, 13), (27, 27), (27, 4), (27, 32), (27, 70), (70, 2), (70, 33), (70, 71),
         (70, 113), (3, 250)]


@pytest.mark.parametrize("n_in,n_out", SIZES)
def test_aa_matrix_equals_numpy_reference_and_torch(vlib, n_in: int, n_out: int) -> None:
    import torch
    import torch.nn.functional as F

    from mcpm.export.models.minicpmv import vision_inputs as vi

    got = c_aa(vlib, n_in, n_out)
    np.testing.assert_array_equal(got, vi.aa_bicubic_matrix(n_in, n_out))
    # what F.interpolate does to the columns of an identity matrix (1-D along the width: 1 x n_in images to
    # 1 x n_out; resizing the height of width-1 images instead hits a PyTorch quirk of the antialiased path)
    eye = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, 1, n_in)  # batch of unit rows [n_in, 1, 1, n_in]
    ref = F.interpolate(eye, size=(1, n_out), mode="bicubic", antialias=True, align_corners=False)
    ref = ref.reshape(n_in, n_out).T.numpy()  # [n_out, n_in]
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-7)
    if n_in == n_out:
        np.testing.assert_array_equal(got, np.eye(n_in, dtype=np.float32))


@pytest.mark.parametrize("rows,cols,grid", [(1, 1, 5), (4, 4, 5), (5, 5, 5), (2, 9, 5), (16, 16, 27), (8, 37, 27),
                                            (32, 36, 70)])
def test_pos_interp_equals_numpy_reference_and_torch(vlib, rows: int, cols: int, grid: int) -> None:
    import torch
    import torch.nn.functional as F

    from mcpm.export.models.minicpmv import vision_inputs as vi

    got = c_pos_interp(vlib, rows, cols, grid)
    np.testing.assert_array_equal(got, vi.pos_interp(rows, cols, grid))
    # pos_interp @ table == timm's resample_abs_pos_embed of the G x G table (vision.resize_position_table)
    table = torch.randn(grid * grid, 3, dtype=torch.float64)  # [G*G, d]
    img = table.T.reshape(1, 3, grid, grid)
    ref = F.interpolate(img, size=(rows, cols), mode="bicubic", antialias=True, align_corners=False)
    ref = ref.reshape(3, rows * cols).T.numpy()  # [n, d]
    np.testing.assert_allclose(got.astype(np.float64) @ table.numpy(), ref, rtol=0, atol=1e-5)
    if rows == cols == grid:
        np.testing.assert_array_equal(got, np.eye(grid * grid, dtype=np.float32))


@pytest.mark.parametrize("dim,rows,cols", [(4, 1, 1), (64, 4, 4), (64, 3, 7), (2304, 32, 36), (2304, 1, 50)])
def test_key_pos_equals_reference_sincos(vlib, dim: int, rows: int, cols: int) -> None:
    from mcpm.export.models.minicpmv import vision_inputs as vi
    from mcpm.export.models.minicpmv.resampler import sincos_2d

    got = c_key_pos(vlib, dim, rows, cols)
    # float64 sin/cos rounded to float32: libm and NumPy may differ in the last bit of a double, so at most one
    # float32 step apart (equal here on glibc x86-64)
    np.testing.assert_allclose(got, vi.key_pos(dim, rows, cols), rtol=0, atol=1.2e-7)
    np.testing.assert_allclose(got, sincos_2d(dim, rows, cols).numpy(), rtol=0, atol=1.2e-7)


@pytest.mark.parametrize("h,w", [(14, 14), (56, 56), (28, 70), (30, 45)])
def test_patchify_equals_numpy_reference(vlib, h: int, w: int) -> None:
    from mcpm.export.models.minicpmv import vision_inputs as vi

    pixels = np.random.default_rng(h * w).standard_normal((3, h, w)).astype(np.float32)  # [3, H, W]
    rows, cols = -(-h // 14), -(-w // 14)
    out = np.full((rows * cols, 3 * 14 * 14), np.nan, np.float32)  # [n, 3*p*p]
    assert vlib.mcpm_vision_patchify(pixels.ctypes.data, w, h, 14, out.ctypes.data) == rows * cols
    padded = np.pad(pixels, ((0, 0), (0, rows * 14 - h), (0, cols * 14 - w)))  # vision_inputs zero-pads like this
    np.testing.assert_array_equal(out, vi.patchify(padded, 14))
    # the conv of the vision tower == patches @ weight.reshape(Dv, -1).T
    import torch

    wt = torch.randn(5, 3, 14, 14)
    conv = torch.nn.functional.conv2d(torch.from_numpy(padded)[None], wt, stride=14).flatten(2)[0].T  # [n, 5]
    np.testing.assert_allclose(out @ wt.reshape(5, -1).numpy().T, conv.numpy(), rtol=1e-4, atol=1e-4)


def fit_pixels(w: int, h: int, max_pixels: int) -> tuple[int, int]:
    """The runtime's downscale size (mcpm_vision_fit_pixels), in Python."""
    if max_pixels <= 0 or w * h <= max_pixels:
        return w, h
    s = math.sqrt(max_pixels / (w * h))
    nw, nh = max(1, math.floor(w * s)), max(1, math.floor(h * s))
    while nw * nh > max_pixels and (nw > 1 or nh > 1):
        if nw >= nh and nw > 1:
            nw -= 1
        else:
            nh -= 1
    return nw, nh


@pytest.mark.parametrize("w,h,limit", [(12000, 9000, 4096 * 4096), (100, 80, 2000), (4097, 4096, 4096 * 4096),
                                       (10, 10, 100), (100000, 1, 1000), (7, 3, 5), (640, 480, 0)])
def test_fit_pixels(vlib, w: int, h: int, limit: int) -> None:
    ow, oh = ctypes.c_int(), ctypes.c_int()
    rc = vlib.mcpm_vision_fit_pixels(w, h, limit, ctypes.byref(ow), ctypes.byref(oh))
    assert (ow.value, oh.value) == fit_pixels(w, h, limit)
    assert rc == int((ow.value, oh.value) != (w, h))
    if rc:
        assert ow.value * oh.value <= limit
    if (w, h) == (12000, 9000):
        assert (ow.value, oh.value) == (4729, 3547)  # docs/minicpmv.md's example
    assert vlib.mcpm_vision_fit_pixels(0, 5, limit, ctypes.byref(ow), ctypes.byref(oh)) == -1


# ---------------------------------------------------------------- ctypes binding of the public API


class Params(ctypes.Structure):
    _fields_ = [("threads", ctypes.c_int), ("workspace_bytes", ctypes.c_size_t), ("verify", ctypes.c_int),
                ("kernel_variant", ctypes.c_char_p), ("device", ctypes.c_char_p), ("profile", ctypes.c_int),
                ("cache_dir", ctypes.c_char_p)]


TEXT_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)


def bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.mcpm_default_params.restype = Params
    lib.mcpm_model_load.restype = P
    lib.mcpm_model_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(Params)]
    lib.mcpm_last_error.restype = ctypes.c_char_p
    lib.mcpm_last_error.argtypes = [P]
    lib.mcpm_model_notice.restype = ctypes.c_char_p
    lib.mcpm_model_notice.argtypes = [P]
    lib.mcpm_model_has_vision.argtypes = [P]
    lib.mcpm_position.argtypes = [P]
    lib.mcpm_model_free.argtypes = [P]
    lib.mcpm_model_free.restype = None
    lib.mcpm_stats_json.argtypes = [P, ctypes.c_char_p, ctypes.c_size_t]
    lib.mcpm_session_new.restype = P
    lib.mcpm_session_new.argtypes = [P]
    lib.mcpm_session_chat.argtypes = [P, ctypes.c_char_p, ctypes.c_int, P, TEXT_CB, P]
    lib.mcpm_session_last_error.restype = ctypes.c_char_p
    lib.mcpm_session_last_error.argtypes = [P]
    lib.mcpm_encode_image.argtypes = [P, P, ctypes.c_int, ctypes.c_int]
    lib.mcpm_vision_session_features.argtypes = [P, P, ctypes.c_int]
    lib.mcpm_vision_model_logits.argtypes = [P, P]
    lib.mcpm_self_test_json.argtypes = [P, ctypes.c_char_p, ctypes.c_size_t]
    for f in ("mcpm_session_clear_images", "mcpm_session_reset", "mcpm_session_free"):
        getattr(lib, f).argtypes = [P]
        getattr(lib, f).restype = None
    return lib


class CVision:
    """A model + session of the C library (greedy chat only)."""

    def __init__(self, lib: ctypes.CDLL, bundle: Path, device: str = "cpu") -> None:
        self.lib = lib
        p = lib.mcpm_default_params()
        p.threads = 2
        p.device = device.encode()
        self.m = lib.mcpm_model_load(str(bundle).encode(), ctypes.byref(p))
        if not self.m:
            raise RuntimeError(lib.mcpm_last_error(None).decode())
        self.s = lib.mcpm_session_new(self.m)
        assert self.s, lib.mcpm_last_error(self.m).decode()

    def error(self) -> str:
        return self.lib.mcpm_session_last_error(self.s).decode()

    def encode(self, rgb: np.ndarray | None, w: int | None = None, h: int | None = None) -> int:
        if rgb is None:
            return self.lib.mcpm_encode_image(self.s, None, w or 0, h or 0)
        rgb = np.ascontiguousarray(rgb, np.uint8)  # [h, w, 3]
        return self.lib.mcpm_encode_image(self.s, rgb.ctypes.data, rgb.shape[1] if w is None else w,
                                          rgb.shape[0] if h is None else h)

    def chat(self, message: str, max_new: int) -> tuple[int, str]:
        pieces: list[bytes] = []
        cb = TEXT_CB(lambda ptr, n, _u: pieces.append(ctypes.string_at(ptr, n)) or 0)
        n = self.lib.mcpm_session_chat(self.s, message.encode(), max_new, None, cb, None)
        if n < 0:
            raise RuntimeError(self.error())
        return n, b"".join(pieces).decode()

    def features(self, dim: int) -> np.ndarray:
        rows = self.lib.mcpm_vision_session_features(self.s, None, 0)
        out = np.zeros((rows, dim), np.float32)  # [rows, D]
        assert self.lib.mcpm_vision_session_features(self.s, out.ctypes.data, rows) == rows
        return out

    def last_logits(self, vocab: int) -> np.ndarray:
        out = np.zeros(vocab, np.float32)  # [vocab]
        assert self.lib.mcpm_vision_model_logits(self.m, out.ctypes.data) == 0
        return out

    def stats(self) -> dict:
        buf = ctypes.create_string_buffer(4096)
        assert self.lib.mcpm_stats_json(self.m, buf, len(buf)) == 0
        return json.loads(buf.value.decode())

    def self_test(self) -> dict | str:
        """mcpm_self_test_json's object, or the error when the test could not run."""
        buf = ctypes.create_string_buffer(8192)  # MCPM_SELF_TEST_JSON_MAX
        if self.lib.mcpm_self_test_json(self.s, buf, len(buf)) != 0:
            return self.error()
        return json.loads(buf.value.decode())

    def close(self) -> None:
        self.lib.mcpm_session_free(self.s)
        self.lib.mcpm_model_free(self.m)


# ---------------------------------------------------------------- errors on a plain LM bundle


def test_plain_bundle_refuses_images(default_q4_bundle: Path) -> None:
    from mcpm.runtime.build import build_library

    c = CVision(bind(build_library(default_q4_bundle)), default_q4_bundle)
    try:
        assert c.lib.mcpm_model_has_vision(c.m) == 0
        rgb = np.zeros((20, 30, 3), np.uint8)
        assert c.encode(rgb) == -1
        err = c.error()
        assert "no vision encoder" in err and "\n" not in err
        stats = c.stats()
        assert stats["image_encode_ms"] == 0 and stats["image_slices"] == 0 and stats["image_patches"] == 0
        assert {"load_ms", "prefill_tokens", "decode_tok_s", "ttft_ms", "notice"} <= set(stats)
        n, text = c.chat("Hello", 4)  # text chat unaffected
        assert n >= 1
        c.lib.mcpm_session_clear_images(c.s)  # no-op
    finally:
        c.close()


# ---------------------------------------------------------------- (b) a tiny MiniCPM-V bundle


@pytest.fixture(scope="module")
def vbundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mcpm.export.exporter import ExportOptions, run_export
    from tests.conftest import write_tiny
    from tests.test_minicpmv import tiny_minicpmv

    root = tmp_path_factory.mktemp("cvbundle")
    ckpt = write_tiny(root / "tiny-v", tiny_minicpmv(), seed=11)
    out = root / "tiny-v-f32"
    run_export(ExportOptions(ckpt, out, "host", "f32", (), 256, 8, progress=False, vision_dtype="f32"))
    plan = json.loads((out / "plan.json").read_text())
    assert {"embed", "prefill_embeds", "vision"} <= set(plan["entries"]) and "vision" in plan, \
        "the exporter compiles the vision entry but the bundle has none"
    return out


@pytest.fixture(scope="module")
def vlib_full(vbundle: Path) -> ctypes.CDLL:
    from mcpm.runtime.build import build_library

    return bind(build_library(vbundle))


def image(w: int, h: int, seed: int) -> np.ndarray:
    """A smooth-ish RGB test image uint8[h][w][3] (gradients + noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) * 127 // max(w + h - 2, 1)], -1)
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


class Ref(NamedTuple):
    ids: list[int]       # prompt ids
    out: list[int]       # generated ids (stop included)
    text: str            # the streamed reply (stop tokens left out)
    runs: list[int]      # vision runs per image
    feats: np.ndarray    # float32 [rows, D]: the features of every run, in order
    logits: np.ndarray   # float32 [vocab]: the logits of the prompt's last position


def python_image_chat(bundle: Path, images: list[np.ndarray], message: str, max_new: int,
                      max_pixels: int | None = None) -> Ref:
    """The reference of one chat turn with images from a new conversation. Python preprocessing + PlanModel
    entries, greedy."""
    from mcpm.export.bundle.host_runner import load_bundle
    from mcpm.export.models.minicpmv import preprocess
    from mcpm.export.models.minicpmv import vision_inputs as vi

    _, pm, tok = load_bundle(bundle)
    cfg = json.loads((bundle / "mcpm-config.json").read_text())
    plan = json.loads((bundle / "plan.json").read_text())
    v, pv = cfg["vision"], plan["vision"]
    p, q, d, g = pv["patch"], pv["query_num"], pv["hidden"], pv["pos_grid"]
    marks = preprocess.ImageTokens(**v["image_tokens"])
    feats, placeholders, runs, grids = [], [], [], []
    for rgb in images:
        h, w = rgb.shape[:2]
        sw, sh = fit_pixels(w, h, v["max_pixels"] if max_pixels is None else max_pixels)
        if (sw, sh) != (w, h):
            rgb = preprocess.resize_bicubic(rgb, sw, sh)
        prep = preprocess.prepare_image(rgb, max_slices=v["max_slices"], scale_resolution=v["scale_resolution"],
                                        patch=v["patch"], slice_mode=v["slice_mode"])
        for px in prep.pixels:
            rows, cols = -(-px.shape[1] // p), -(-px.shape[2] // p)
            out = pm.run_entry("vision", patches=vi.patchify(px, p), pos_interp=vi.pos_interp(rows, cols, g),
                               key_pos=vi.key_pos(d, rows, cols))
            feats.append(np.asarray(out, np.float32).reshape(q, d))
        placeholders += preprocess.placeholder_ids(prep.plan.grid, q, marks)
        runs.append(prep.plan.num_images)
        grids.append(prep.plan.grid)
    user, gen = cfg["chat_template"]["roles"]["user"], cfg["chat_template"]["generation_prompt"]
    head, tail = user.split("{content}", 1)
    ids = [cfg["bos_token_id"]] + tok.encode(head) + placeholders + tok.encode("\n" + message.strip() + tail + gen)
    from mcpm.export.models.minicpmv.prompt import chat_prompt_ids  # the exporter's reference of the layout

    assert ids == chat_prompt_ids(tok, message, grids, q, marks)
    rows = np.concatenate(feats)  # [n_rows, D]
    where = {int(pos): k for k, pos in enumerate(preprocess.image_positions(ids, marks))}
    assert len(where) == len(rows)
    pm.reset()
    chunk = plan["chunk"]
    logits = None
    for start in range(0, len(ids), chunk):
        part = np.array(ids[start:start + chunk], np.int32)
        if any(start + i in where for i in range(len(part))):
            e = np.array(pm.run_entry("embed", tokens=part), np.float32).reshape(len(part), d)
            for i in range(len(part)):
                if start + i in where:
                    e[i] = rows[where[start + i]]
            logits = pm.run_entry("prefill_embeds", embeds=e)
        else:
            logits = pm.run("prefill", part)
    first = np.asarray(logits, np.float32).reshape(-1, plan["vocab_size"])[-1].copy()
    stop = set(cfg.get("stop_token_ids") or tok.stop_ids)
    out: list[int] = []
    room = plan["max_ctx"] - len(ids)
    while len(out) < min(max_new, room):
        t = int(np.argmax(np.asarray(logits).reshape(-1, plan["vocab_size"])[-1]))
        out.append(t)
        if t in stop:
            break
        if len(out) < min(max_new, room):
            logits = pm.decode(t)
    stream = tok.stream_decoder(ids)
    text = "".join(stream.push(t) for t in out if t not in stop)
    return Ref(ids, out, text, runs, rows, first)


LAYOUTS = [(40, 30), (120, 60), (60, 130), (200, 190)]  # overview only; 2x1; 1x2; 3x3 slices (scale_resolution 56)


@pytest.mark.parametrize("wh", LAYOUTS)
def test_image_chat_equals_python_reference(vbundle: Path, vlib_full, wh: tuple[int, int]) -> None:
    rgb = image(*wh, seed=wh[0])
    ref = python_image_chat(vbundle, [rgb], "  What is in the picture? ", 10)
    plan = json.loads((vbundle / "plan.json").read_text())
    c = CVision(vlib_full, vbundle)
    try:
        assert c.lib.mcpm_model_has_vision(c.m) == 1
        assert c.encode(rgb) == ref.runs[0]
        stats = c.stats()
        assert stats["image_slices"] == ref.runs[0] and stats["image_encode_ms"] > 0
        p = plan["vision"]["patch"]
        assert stats["image_patches"] == sum(-(-w // p) * -(-h // p) for w, h in run_sizes(vbundle, *wh))
        # the features (vision entry on the C-built inputs) and the prompt's logits (embed / overwrite /
        # prefill_embeds) equal the reference's: a stronger check than the greedy text of a tiny random model
        np.testing.assert_allclose(c.features(plan["vision"]["hidden"]), ref.feats, rtol=1e-5, atol=1e-5)
        assert c.chat("  What is in the picture? ", 1)[0] == 1
        np.testing.assert_allclose(c.last_logits(plan["vocab_size"]), ref.logits, rtol=1e-5, atol=1e-4)
        c.lib.mcpm_session_reset(c.s)
        assert c.encode(rgb) == ref.runs[0]
        n, got = c.chat("  What is in the picture? ", 10)
        assert (n, got) == (len(ref.out), ref.text)
        assert c.lib.mcpm_position(c.m) == len(ref.ids) + len(ref.out) - 1  # the last token stays pending
        # the features were used up: the next turn is text only, and equals a text turn of a fresh session
        c.chat("And?", 3)
    finally:
        c.close()


def run_sizes(bundle: Path, w: int, h: int) -> list[tuple[int, int]]:
    """(width, height) of each vision run of a w x h image: the overview, then the slices."""
    from mcpm.export.models.minicpmv import preprocess

    v = json.loads((bundle / "mcpm-config.json").read_text())["vision"]
    sp = preprocess.plan_slices(w, h, v["max_slices"], v["scale_resolution"], v["patch"], not v["slice_mode"])
    return [sp.overview] + ([sp.slice_size] * (sp.num_images - 1) if sp.slice_size else [])


def test_layouts_cover_several_slice_grids(vbundle: Path) -> None:
    from mcpm.export.models.minicpmv import preprocess

    v = json.loads((vbundle / "mcpm-config.json").read_text())["vision"]
    grids = {preprocess.plan_slices(w, h, v["max_slices"], v["scale_resolution"], v["patch"]).grid for w, h in LAYOUTS}
    assert len(grids) >= 3, grids


def test_prompt_logits_depend_on_the_image_features(vbundle: Path, vlib_full) -> None:
    """Guards the comparisons: black and white images of the same layout give clearly different prompt logits in
    the reference (so the features reach the LM), and the C session gives the same as the reference for both."""
    vocab = json.loads((vbundle / "plan.json").read_text())["vocab_size"]
    black, white = np.zeros((60, 120, 3), np.uint8), np.full((60, 120, 3), 255, np.uint8)
    refs = [python_image_chat(vbundle, [im], "What colour?", 1) for im in (black, white)]
    assert np.abs(refs[0].logits - refs[1].logits).max() > 1e-2
    c = CVision(vlib_full, vbundle)
    try:
        for im, ref in zip((black, white), refs, strict=True):
            c.lib.mcpm_session_reset(c.s)
            assert c.encode(im) == 3
            assert c.chat("What colour?", 1) == (len(ref.out), ref.text)
            np.testing.assert_allclose(c.last_logits(vocab), ref.logits, rtol=1e-5, atol=1e-4)
    finally:
        c.close()


def test_two_images_in_one_turn(vbundle: Path, vlib_full) -> None:
    a, b = image(120, 60, 1), image(40, 30, 2)
    ref = python_image_chat(vbundle, [a, b], "Compare them.", 8)
    plan = json.loads((vbundle / "plan.json").read_text())
    c = CVision(vlib_full, vbundle)
    try:
        assert [c.encode(a), c.encode(b)] == ref.runs
        np.testing.assert_allclose(c.features(plan["vision"]["hidden"]), ref.feats, rtol=1e-5, atol=1e-5)
        assert c.chat("Compare them.", 8) == (len(ref.out), ref.text)
        assert c.lib.mcpm_position(c.m) == len(ref.ids) + len(ref.out) - 1
        assert c.lib.mcpm_vision_session_features(c.s, None, 0) == 0  # used up by the turn
    finally:
        c.close()


def test_clear_and_reset_drop_pending_images(vbundle: Path, vlib_full) -> None:
    c = CVision(vlib_full, vbundle)
    try:
        plain = c.chat("Hello there", 5)
        c.lib.mcpm_session_reset(c.s)
        assert c.encode(image(120, 60, 3)) > 1
        c.lib.mcpm_session_clear_images(c.s)
        assert c.chat("Hello there", 5) == plain
        c.lib.mcpm_session_reset(c.s)
        assert c.encode(image(120, 60, 3)) > 1
        c.lib.mcpm_session_reset(c.s)
        assert c.lib.mcpm_position(c.m) == 0
        assert c.chat("Hello there", 5) == plain
    finally:
        c.close()


def test_image_errors_are_one_line(vbundle: Path, vlib_full) -> None:
    c = CVision(vlib_full, vbundle)
    try:
        cases = [(None, 10, 10, "rgb is NULL"), (np.zeros((1, 1, 3), np.uint8), 0, 5, "empty"),
                 (np.zeros((1, 1, 3), np.uint8), 5, -1, "empty"),
                 (np.zeros((4000, 1, 3), np.uint8), None, None, "max_patches")]
        for rgb, w, h, message in cases:
            assert c.encode(rgb, w, h) == -1
            err = c.error()
            assert message in err and "\n" not in err, err
        # nothing was attached: a text turn is as in a fresh session
        plain = c.chat("Hi", 4)
        c.lib.mcpm_session_reset(c.s)
        c.lib.mcpm_session_clear_images(c.s)
        assert c.chat("Hi", 4) == plain
    finally:
        c.close()


def test_context_full_checked_before_any_work(vbundle: Path, vlib_full) -> None:
    c = CVision(vlib_full, vbundle)
    try:
        for _ in range(30):  # max_ctx 256: 10 runs of 16 queries + markers each are 170+ positions
            if c.encode(image(200, 190, 4)) < 0:
                break
        with pytest.raises(RuntimeError, match=r"the message and its \d+ image\(s\) are longer than the context"):
            c.chat("Describe.", 4)
        assert c.lib.mcpm_position(c.m) == 0
    finally:
        c.close()


def test_large_image_is_downscaled_with_notice(vbundle: Path, vlib_full, tmp_path: Path) -> None:
    small = tmp_path / "small-max-pixels"
    shutil.copytree(vbundle, small)
    cfg = json.loads((small / "mcpm-config.json").read_text())
    cfg["vision"]["max_pixels"] = 2000
    (small / "mcpm-config.json").write_text(json.dumps(cfg))
    rgb = image(100, 80, 5)
    ref = python_image_chat(small, [rgb], "Describe.", 6)
    c = CVision(vlib_full, small)
    try:
        c.lib.mcpm_session_max_pixels.restype = ctypes.c_int64
        c.lib.mcpm_session_max_pixels.argtypes = [ctypes.c_void_p]
        assert c.lib.mcpm_session_max_pixels(c.s) == 2000  # what the apps decode pictures to: from the bundle
        assert c.encode(rgb) == ref.runs[0]
        assert c.lib.mcpm_model_notice(c.m).decode() == "image 100x80 downscaled to 50x40"
        assert c.stats()["notice"] == "image 100x80 downscaled to 50x40"
        dim = json.loads((small / "plan.json").read_text())["vision"]["hidden"]
        np.testing.assert_allclose(c.features(dim), ref.feats, rtol=1e-5, atol=1e-5)
        assert c.chat("Describe.", 6) == (len(ref.out), ref.text)
    finally:
        c.close()


@pytest.mark.parametrize("value", [None, 0, -5, "4096"])
def test_max_pixels_is_required(value, vbundle: Path, vlib_full, tmp_path: Path) -> None:
    """vision.max_pixels is read from the bundle by the runtime and, through mcpm_session_max_pixels, by the apps:
    no literal default anywhere, so a bundle without a valid one is refused."""
    bad = tmp_path / "bad-max-pixels"
    shutil.copytree(vbundle, bad)
    cfg = json.loads((bad / "mcpm-config.json").read_text())
    if value is None:
        del cfg["vision"]["max_pixels"]
    else:
        cfg["vision"]["max_pixels"] = value
    (bad / "mcpm-config.json").write_text(json.dumps(cfg))
    lib = vlib_full
    m = lib.mcpm_model_load(str(bad).encode(), None)
    try:
        assert m and not lib.mcpm_session_new(m)
        assert "vision.max_pixels is missing or out of range" in lib.mcpm_last_error(m).decode()
    finally:
        lib.mcpm_model_free(m)


def test_gpu_device_is_refused_for_vision_bundles(vbundle: Path, vlib_full) -> None:
    with pytest.raises(RuntimeError) as e:
        CVision(vlib_full, vbundle, device="gpu")
    assert "CPU only" in str(e.value) and "\n" not in str(e.value)
    c = CVision(vlib_full, vbundle, device="auto")
    try:
        assert "CPU only" in c.lib.mcpm_model_notice(c.m).decode()
        assert c.stats()["device"] == "cpu"
    finally:
        c.close()


# ---------------------------------------------------------------- the self-test's image turn (golden.image)


def _newline_at(image: dict, newline: int) -> int:
    return image["prompt_ids"].index(newline)


IMAGE_GOLDEN_DAMAGES = [  # (name, change of mcpm-config.json "golden.image" given the newline id, the verdict)
    ("intact", lambda im, nl: None, True),
    ("logit", lambda im, nl: im["top5"][2][0].__setitem__(1, im["top5"][2][0][1] + 0.5 * im["scale"][2]),
     "kernel set default on the cpu, image turn (3 slices): step 2: the logit of token"),
    ("layout", lambda im, nl: im["prompt_ids"].__setitem__(_newline_at(im, nl), nl + 1),
     "image turn: id {k} of the image turn is {nl}, the reference's {nl1}"),
    ("size", lambda im, nl: im.update(width=im["width"] + 14), "image turn"),
    ("damaged", lambda im, nl: im.pop("message"), "\"golden.image\" is damaged (width, height, message)"),
    ("ids", lambda im, nl: im["top5"].pop(), "\"golden.image\" is damaged (prompt_ids, ids, top5"),
]


def altered_image_golden(bundle: Path, root: Path, name: str, change) -> tuple[Path, dict]:
    copy = Path(shutil.copytree(bundle, root / name))
    config = json.loads((copy / "mcpm-config.json").read_text())
    image = config["golden"]["image"]
    newline = config["vision"]["image_tokens"]["newline"]
    fill = {"k": _newline_at(image, newline), "nl": newline, "nl1": newline + 1}
    change(image, newline)
    (copy / "mcpm-config.json").write_text(json.dumps(config))
    return copy, fill


def check_image_self_test(lib: ctypes.CDLL, bundle: Path, root: Path) -> None:
    """Every IMAGE_GOLDEN_DAMAGES case on a copy of bundle gives its verdict (shared with the sanitizer run)."""
    for name, change, verdict in IMAGE_GOLDEN_DAMAGES:
        copy, fill = altered_image_golden(bundle, root, name, change)
        c = CVision(lib, copy)
        got = c.self_test()
        c.close()
        if verdict is True:
            assert isinstance(got, dict) and got["pass"] is True and got["image"]["pass"] is True, got
            assert got["image"]["slices"] == 3 and got["image"]["argmax_equal"] == got["image"]["steps"], got
        elif isinstance(got, dict):
            assert got["pass"] is False and got["image"]["pass"] is False, (name, got)
            assert verdict.format(**fill) in got["reason"] and "\n" not in got["reason"], (name, got)
            assert got["tokenizer"] == "pass" and got["argmax_equal"] == got["steps"], got  # the text part holds
        else:
            assert verdict.format(**fill) in got, (name, got)


def test_self_test_checks_the_image_turn(vbundle: Path, vlib_full, tmp_path: Path) -> None:
    """The golden image (overview + 2 slices in two rows: the newline between rows is in the turn) is encoded by the
    C runtime and its turn checked: intact it passes; a changed logit, a changed placeholder layout or image size
    fail with a one-line reason naming the image turn; a damaged record cannot run."""
    golden = json.loads((vbundle / "mcpm-config.json").read_text())["golden"]["image"]
    assert golden["slices"] == 3 and golden["height"] == 2 * golden["width"]
    check_image_self_test(vlib_full, vbundle, tmp_path)


# ---------------------------------------------------------------- (c) AddressSanitizer + UBSan

ASAN_DRIVER = textwrap.dedent(
    """
    import ctypes, json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[4])
    from pathlib import Path
    from tests.test_c_vision import CVision, bind, check_image_self_test, image
    lib = bind(sys.argv[1])
    bundle, expected = sys.argv[2], json.load(open(sys.argv[3]))
    c = CVision(lib, bundle)
    for (w, h), (runs, n, text) in zip(expected["layouts"], expected["results"]):
        c.lib.mcpm_session_reset(c.s)
        assert c.encode(image(w, h, seed=w)) == runs, c.error()
        got = c.chat("  What is in the picture? ", 10)
        assert list(got) == [n, text], (got, n, text)
    assert c.encode(image(120, 60, 1)) > 0 and c.encode(image(40, 30, 2)) > 0
    c.lib.mcpm_session_clear_images(c.s)
    assert c.encode(image(120, 60, 1)) > 0
    c.lib.mcpm_session_reset(c.s)
    tall = np.zeros((4000, 1, 3), np.uint8)
    for rgb, w, h in [(None, 3, 3), (np.zeros((1, 1, 3), np.uint8), 0, 1), (tall, None, None)]:
        assert c.encode(rgb, w, h) == -1
    c.close()
    check_image_self_test(lib, Path(bundle), Path(sys.argv[3]).parent)
    print("ASAN-OK")
    """
)


def test_image_path_under_address_and_ub_sanitizers(vbundle: Path, tmp_path: Path) -> None:
    from mcpm.runtime.build import SOURCES

    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    so = tmp_path / "libmcpm_vision_asan.so"
    cmd = ["gcc", *CFLAGS, *SANITIZE, "-shared", "-o", str(so), *[str(C_DIR / s) for s in SOURCES],
           str(vbundle / "kernels.o"), "-lm", "-lpthread", "-ldl"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    layouts = LAYOUTS[1:3]
    results = []
    for w, h in layouts:
        ref = python_image_chat(vbundle, [image(w, h, seed=w)], "  What is in the picture? ", 10)
        results.append([ref.runs[0], len(ref.out), ref.text])
    (tmp_path / "expected.json").write_text(json.dumps({"layouts": layouts, "results": results}))
    (tmp_path / "driver.py").write_text(ASAN_DRIVER)
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    res = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(so), str(vbundle),
                          str(tmp_path / "expected.json"), str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0 and "ASAN-OK" in res.stdout, res.stdout[-3000:] + res.stderr[-6000:]
