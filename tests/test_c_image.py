"""The C image preprocessing (runtime_bindings/c/mcpm_image.c) against the Python reference (preprocess.py).

mcpm_image.c is built alone into a shared library and called through ctypes: slice plans, RGB conversion,
bicubic resize (bit-exact; also against Pillow itself when installed), normalization and placeholder ids.
A second build with AddressSanitizer + UBSan runs the same checks in a subprocess (LD_PRELOAD of libasan).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = str(Path(__file__).resolve().parents[1])
C_DIR = Path(ROOT) / "runtime_bindings" / "c"
CFLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-fvisibility=hidden"]
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: the C code cannot be built")

PLAN_SIZES = [
    (449, 449), (448, 448), (447, 447), (1344, 1344), (1920, 1080), (1080, 1920), (20000, 300), (300, 20000),
    (1, 1000), (1000, 1), (3, 3), (1, 1), (1, 2), (2, 1), (14, 14), (13, 7), (896, 448), (448, 896), (634, 633),
    (897, 448), (1343, 1345), (2000, 1000), (4032, 3024), (3024, 4032), (640, 480), (800, 600), (1024, 768),
    (100000, 1), (1, 100000), (12345, 6789), (672, 672), (673, 671), (1350, 1342), (4000, 100), (100, 4000),
    (10000, 10000), (65535, 65535), (2147483647, 1), (1, 2147483647), (448 * 3, 448 * 3 + 1), (7, 99999),
    (1792, 448), (448, 1792), (1568, 448), (2240, 448), (1000, 1000), (2047, 2049), (3583, 1)]

# ---------------------------------------------------------------------------------------------------------------
# ctypes helpers (no mcpm import here: the sanitizer subprocess imports them under an LD_PRELOADed libasan)

class Plan(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("overview_w", "overview_h", "cols", "rows", "refine_w", "refine_h",
                                            "slice_w", "slice_h", "num_images")]


class Tokens(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("image_start", "image_end", "slice_start", "slice_end", "unk",
                                              "newline")]


def build(out: Path, sanitize: bool = False, cc: str = "gcc") -> Path:
    flags = CFLAGS + (SANITIZE if sanitize else ["-O2"])
    cmd = [cc, *flags, "-shared", "-o", str(out), str(C_DIR / "mcpm_image.c"), "-lm"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out


def bind(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    c_int, c_p, c_sz = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    lib.mcpm_image_plan.argtypes = [c_int] * 6 + [ctypes.POINTER(Plan), ctypes.c_char_p, c_sz]
    lib.mcpm_image_to_rgb8.argtypes = [c_p, c_int, c_int, c_int, c_int, c_p, ctypes.c_char_p, c_sz]
    lib.mcpm_image_resize_rgb8.argtypes = [c_p, c_int, c_int, c_p, c_int, c_int, ctypes.c_char_p, c_sz]
    lib.mcpm_image_normalize_chw.argtypes = [c_p] + [c_int] * 6 + [c_p, ctypes.c_char_p, c_sz]
    lib.mcpm_image_placeholder_ids.argtypes = [ctypes.POINTER(Plan), c_int, ctypes.POINTER(Tokens), c_p, c_int]
    return lib


class CImage:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.err = ctypes.create_string_buffer(256)  # char[256]

    def _check(self, rc: int) -> None:
        if rc:
            raise ValueError(self.err.value.decode())

    def plan(self, w: int, h: int, max_slices=9, scale=448, patch=14, never_split=False) -> Plan:
        p = Plan()
        self._check(self.lib.mcpm_image_plan(w, h, max_slices, scale, patch, int(never_split), ctypes.byref(p),
                                             self.err, len(self.err)))
        return p

    def to_rgb(self, arr: np.ndarray, cmyk: bool = False) -> np.ndarray:
        a = np.ascontiguousarray(arr if arr.ndim == 3 else arr[:, :, None], np.uint8)  # [h][w][channels]
        h, w, ch = a.shape
        out = np.empty((h, w, 3), np.uint8)  # [h][w][3]
        self._check(self.lib.mcpm_image_to_rgb8(a.ctypes.data, w, h, ch, int(cmyk), out.ctypes.data, self.err,
                                                len(self.err)))
        return out

    def resize(self, rgb: np.ndarray, ow: int, oh: int) -> np.ndarray:
        src = np.ascontiguousarray(rgb, np.uint8)  # [h][w][3]
        out = np.empty((oh, ow, 3), np.uint8)  # [oh][ow][3]
        self._check(self.lib.mcpm_image_resize_rgb8(src.ctypes.data, src.shape[1], src.shape[0], out.ctypes.data,
                                                    ow, oh, self.err, len(self.err)))
        return out

    def normalize(self, rgb: np.ndarray, x0=0, y0=0, w=None, h=None) -> np.ndarray:
        src = np.ascontiguousarray(rgb, np.uint8)  # [src_h][src_w][3]
        w = src.shape[1] if w is None else w
        h = src.shape[0] if h is None else h
        out = np.empty((3, max(h, 0), max(w, 0)), np.float32)  # [3][h][w]
        self._check(self.lib.mcpm_image_normalize_chw(src.ctypes.data, src.shape[1], src.shape[0], x0, y0, w, h,
                                                      out.ctypes.data, self.err, len(self.err)))
        return out

    def placeholder(self, plan: Plan, query_num: int, tokens: Tokens) -> list[int]:
        n = self.lib.mcpm_image_placeholder_ids(ctypes.byref(plan), query_num, ctypes.byref(tokens), None, 0)
        assert n > 0
        ids = np.zeros(n, np.int32)  # [n]
        assert self.lib.mcpm_image_placeholder_ids(ctypes.byref(plan), query_num, ctypes.byref(tokens),
                                                   ids.ctypes.data, n - 1) == -1
        assert self.lib.mcpm_image_placeholder_ids(ctypes.byref(plan), query_num, ctypes.byref(tokens),
                                                   ids.ctypes.data, n) == n
        return ids.tolist()


def random_images(count: int, seed: int = 0):
    """(rgb [h][w][3], target width, target height): upscales, downscales, one side only, huge factors."""
    rng = np.random.default_rng(seed)
    fixed = [((7, 5), (448, 448)), ((1000, 3), (14, 448)), ((3, 1000), (448, 14)), ((640, 480), (640, 350)),
             ((640, 480), (333, 480)), ((1, 1), (30, 17)), ((5, 7), (1, 1)), ((2000, 40), (28, 28)),
             ((50, 60), (50, 60)), ((2, 900), (28, 200)), ((2, 900), (2, 200)), ((4, 500), (9, 600)),
             ((3, 300), (20, 100)), ((3, 301), (20, 100)), ((1, 3000), (1, 30))]
    out = []
    for (w, h), (ow, oh) in fixed:
        out.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), ow, oh))
    while len(out) < count:
        w, h = (int(v) for v in rng.integers(1, 700, 2))
        ow, oh = (int(v) for v in rng.integers(1, 900, 2))
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if len(out) % 3 == 0:  # smooth image with saturated regions: exercises the clamping
            yy, xx = np.mgrid[0:h, 0:w]
            base = (np.sin(xx / 7.0) * np.cos(yy / 5.0) * 200 + 128).clip(0, 255).astype(np.uint8)
            img = np.stack([base, 255 - base, np.where(base > 128, 255, 0).astype(np.uint8)], axis=2)
        out.append((img, ow, oh))
    return out


def run_checks(lib: ctypes.CDLL, n_images: int = 20) -> None:
    """Every comparison with the Python reference (imported here, inside the function)."""
    from mcpm.export.models.minicpmv import preprocess as pp

    ci = CImage(lib)
    # slice plans
    sizes = list(PLAN_SIZES)
    rng = np.random.default_rng(1)
    sizes += [(int(a), int(b)) for a, b in rng.integers(1, 5000, (300, 2))]
    sizes += [(int(a), int(b)) for a, b in rng.integers(400, 1400, (300, 2))]
    for w, h in sizes:
        for ms, sc, pa, ns in ((9, 448, 14, False), (9, 448, 14, True), (4, 448, 14, False), (16, 336, 14, False)):
            ref = pp.plan_slices(w, h, ms, sc, pa, never_split=ns)
            got = ci.plan(w, h, ms, sc, pa, ns)
            where = f"{w}x{h} max_slices={ms} scale={sc} patch={pa} never_split={ns}"
            assert (got.overview_w, got.overview_h) == ref.overview, where
            if ref.grid is None:
                assert (got.cols, got.rows, got.refine_w, got.refine_h, got.slice_w, got.slice_h) == (0,) * 6, where
            else:
                assert (got.cols, got.rows) == ref.grid, where
                assert (got.refine_w, got.refine_h) == ref.refine, where
                assert (got.slice_w, got.slice_h) == ref.slice_size, where
            assert got.num_images == ref.num_images, where
    for bad in ((0, 5), (5, 0), (-1, 3)):
        with pytest.raises(ValueError, match="empty"):
            ci.plan(*bad)
    with pytest.raises(ValueError, match="slicing settings"):
        ci.plan(10, 10, 9, 448, 0)

    # RGB conversion
    img4 = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    for arr, mode in ((img4[:, :, 0], None), (img4[:, :, :1], None), (img4[:, :, :2], None), (img4[:, :, :3], None),
                      (img4, None), (img4, "CMYK")):
        np.testing.assert_array_equal(ci.to_rgb(arr, cmyk=mode == "CMYK"), pp.to_rgb(np.ascontiguousarray(arr),
                                                                                      mode=mode))
    cmyk_all = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), -1).reshape(-1, 2)
    cmyk_all = np.concatenate([cmyk_all, cmyk_all[:, ::-1]], axis=1).astype(np.uint8).reshape(256, 256, 4)
    np.testing.assert_array_equal(ci.to_rgb(cmyk_all, cmyk=True), pp.to_rgb(cmyk_all, mode="CMYK"))
    with pytest.raises(ValueError, match="CMYK image needs 4"):
        ci.to_rgb(img4[:, :, :3], cmyk=True)

    # resize: bit-exact with the reference (and with Pillow where installed)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    for img, ow, oh in random_images(n_images):
        got = ci.resize(img, ow, oh)
        ref = pp.resize_bicubic(img, ow, oh)
        where = f"{img.shape[1]}x{img.shape[0]} -> {ow}x{oh}"
        assert got.shape == ref.shape, where
        assert int(np.abs(got.astype(np.int16) - ref.astype(np.int16)).max()) == 0, where
        if Image is not None:
            pil = np.asarray(Image.fromarray(img, "RGB").resize((ow, oh), Image.BICUBIC))
            np.testing.assert_array_equal(got, pil, err_msg=where)
    with pytest.raises(ValueError, match="bad resize target"):
        ci.resize(np.zeros((2, 2, 3), np.uint8), 0, 3)

    # normalization (whole image and a slice rectangle), all 256 byte values
    allv = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    np.testing.assert_array_equal(ci.normalize(allv), pp.normalize(allv))
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    np.testing.assert_array_equal(ci.normalize(img, 30, 20, 40, 25), pp.normalize(img[20:45, 30:70]))
    assert np.abs(ci.normalize(img) - pp.normalize(img)).max() <= 1e-7
    for bad in ((80, 0, 20, 10), (0, 0, 0, 5), (-1, 0, 5, 5), (0, 50, 90, 11)):
        with pytest.raises(ValueError, match="outside"):
            ci.normalize(img, *bad)

    # the whole pipeline of prepare_image, on a small sliced image and an overview-only one
    for w, h, seed in ((1000, 500, 3), (300, 200, 4)):
        rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = pp.prepare_image(rgb)
        plan = ci.plan(w, h)
        over = ci.resize(rgb, plan.overview_w, plan.overview_h)
        pixels = [ci.normalize(over)]
        if plan.cols:
            refine = ci.resize(rgb, plan.refine_w, plan.refine_h)
            for r in range(plan.rows):
                for c in range(plan.cols):
                    pixels.append(ci.normalize(refine, c * plan.slice_w, r * plan.slice_h, plan.slice_w,
                                               plan.slice_h))
        assert len(pixels) == len(ref.pixels) == plan.num_images
        for a, b in zip(pixels, ref.pixels, strict=True):
            np.testing.assert_array_equal(a, b)

    # placeholder ids
    toks = pp.ImageTokens(image_start=101, image_end=102, slice_start=111, slice_end=112, unk=0, newline=13)
    ct = Tokens(101, 102, 111, 112, 0, 13)
    for w, h in ((300, 200), (1000, 500), (1344, 1344), (500, 3000)):
        p = ci.plan(w, h)
        ref_plan = pp.plan_slices(w, h)
        for q in (0, 1, 64):
            assert ci.placeholder(p, q, ct) == pp.placeholder_ids(ref_plan.grid, q, toks), (w, h, q)


# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> ctypes.CDLL:
    return bind(build(tmp_path_factory.mktemp("cimage") / "libmcpm_image.so"))


def test_c_image_equals_python_reference(lib) -> None:
    run_checks(lib, n_images=30)


@pytest.mark.parametrize("cc", ["clang", "gcc"])
def test_exact_with_native_fma_builds(cc: str, tmp_path: Path) -> None:
    """-march=native lets the compiler use FMA: the weights must stay exact (no contraction) with gcc and clang."""
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} not found")
    res = subprocess.run([cc, *CFLAGS, "-O2", "-march=native", "-shared", "-o", str(tmp_path / "lib.so"),
                          str(C_DIR / "mcpm_image.c"), "-lm"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    run_checks(bind(tmp_path / "lib.so"), n_images=10)


def test_errors_are_one_line_and_bounded(lib) -> None:
    small = ctypes.create_string_buffer(8)  # char[8]
    p = Plan()
    assert lib.mcpm_image_plan(0, 7, 9, 448, 14, 0, ctypes.byref(p), small, len(small)) == -1
    assert small.value == b"the ima"
    assert lib.mcpm_image_plan(0, 7, 9, 448, 14, 0, ctypes.byref(p), None, 0) == -1
    ci = CImage(lib)
    with pytest.raises(ValueError) as exc:
        ci.plan(-3, 7)
    assert "\n" not in str(exc.value) and str(exc.value) == "the image is empty (-3x7 pixels)"


def test_under_address_and_ub_sanitizers(tmp_path: Path) -> None:
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    so = build(tmp_path / "libmcpm_image_asan.so", sanitize=True)
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import test_c_image as t\n"
        "t.run_checks(t.bind(sys.argv[1]), n_images=8)\n"
        "print('sanitized checks ok')\n")
    env = dict(os.environ, LD_PRELOAD=libasan, ASAN_OPTIONS="detect_leaks=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    res = subprocess.run([sys.executable, str(driver), str(so)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "sanitized checks ok" in res.stdout, (res.stdout[-3000:], res.stderr[-3000:])
