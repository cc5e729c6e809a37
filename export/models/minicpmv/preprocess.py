"""MiniCPM-V 2.0 image preprocessing: RGB conversion, slicing, bicubic resize, normalization, prompt layout.

Pure NumPy and deterministic; PIL is used only to decode image files (``load_image``). Everything below follows
the published MiniCPM-V 2.0 code, including Python's ``round()`` (halves to even) in the size arithmetic.

Slicing (``plan_slices``), for an image of W x H, scale_resolution S = 448, patch p = 14, at most M = 9 slices:
    ratio = W*H / S^2,  m = min(ceil(ratio), M)
    m <= 1: no slices; the overview is the image resized to ~S^2 area keeping the aspect (upscaling allowed)
    else:   overview = resized to ~S^2 area (only downscaling, which always applies here)
            candidates N in {m-1, m, m+1} without 1 and > M; grids cols x rows = N for every divisor cols of N,
            in that order; pick the first with the least |log(W/H) - log(cols/rows)|
            refine image: each cell ~S^2 area (upscaling allowed), sides multiples of p; split row-major
    best_resize(w, h): if upscaling or w*h > S^2: r = w/h, h' = int(S/sqrt(r)), w' = int(h'*r); then each side
                       becomes max(round(side/p)*p, p)

Resizing is PIL's ``Image.resize(..., BICUBIC)`` on 8-bit RGB reproduced exactly: separable bicubic (a = -0.5)
whose support widens by the scale when shrinking (antialias), half-pixel centres, 22-bit fixed-point weights,
horizontal pass first with rounding and clamping to 8 bits, then the vertical pass.

Pixels: x / 255 in float32, then (x - 0.5) / 0.5, channels first.

Bad images: an empty (zero-width or zero-height) image is an ``ImageError``. Gray (H x W or H x W x 1) repeats
the gray value on R, G, B; gray+alpha and RGBA drop the alpha channel (PIL's ``convert("RGB")``, as the
reference code does; no compositing); CMYK (mode="CMYK") converts as PIL does: c' = k' - k'*c/255 with
k' = 255 - k, using PIL's rounded 8-bit multiply. Other dtypes than uint8 are refused.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mcpm.errors import McpmError

PRECISION_BITS = 32 - 8 - 2  # PIL's fixed point for 8-bit resampling
MEAN = STD = 0.5


class ImageError(McpmError):
    """An image that cannot be used (unreadable, empty, unsupported layout)."""


# -- RGB conversion ------------------------------------------------------------------------------------------------
def _muldiv255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tmp = a.astype(np.int32) * b.astype(np.int32) + 128
    return ((tmp >> 8) + tmp) >> 8


def to_rgb(image: Any, mode: str | None = None) -> np.ndarray:
    """A PIL image or a uint8 array (H x W, H x W x 1/2/3/4; ``mode="CMYK"`` for 4-channel CMYK) -> H x W x 3."""
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        if image.size[0] == 0 or image.size[1] == 0:
            raise ImageError(f"the image is empty ({image.size[0]}x{image.size[1]} pixels)")
        pil_mode = image.mode
        if pil_mode in ("L", "LA", "RGB", "RGBA", "CMYK"):
            return to_rgb(np.asarray(image), mode=pil_mode)
        return np.ascontiguousarray(np.asarray(image.convert("RGB")), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ImageError(f"image pixels must be uint8, got {arr.dtype}", "convert the image to 8-bit")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageError(f"image array of shape {arr.shape} is not H x W, H x W x 1, 2, 3 or 4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"the image is empty ({arr.shape[1]}x{arr.shape[0]} pixels)")
    channels = arr.shape[2]
    if mode == "CMYK":
        if channels != 4:
            raise ImageError(f"a CMYK image needs 4 channels, got {channels}")
        nk = 255 - arr[:, :, 3:4].astype(np.int32)
        rgb = np.clip(nk - _muldiv255(arr[:, :, :3], nk), 0, 255)
    elif channels in (1, 2):  # gray (+ alpha, dropped)
        rgb = np.repeat(arr[:, :, :1], 3, axis=2)
    else:  # RGB (+ alpha, dropped)
        rgb = arr[:, :, :3]
    return np.ascontiguousarray(rgb, dtype=np.uint8)


MAX_IMAGE_PIXELS = 1 << 30  # larger files are refused (a PNG of that size decodes to 1-4 GB)
KEEP_PIXELS = 50_000_000  # larger images are decoded downscaled (by powers of two) to at most this many pixels


def load_image(path: Path | str) -> np.ndarray:
    """Decode an image file to H x W x 3 uint8 (needs Pillow); every failure is a one-line ImageError.

    Any size up to MAX_IMAGE_PIXELS: an image over KEEP_PIXELS (50 MP; slicing uses at most ~2 MP of it) is
    reduced by the smallest power of two that brings it under, JPEG while decoding (Pillow's draft), other formats
    right after. Images up to 50 MP are decoded exactly (the preprocessing is pixel-exact with the reference)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImageError("reading image files needs Pillow", "pip install pillow") from None
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():  # Pillow's DecompressionBombWarning: the size is checked here
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # Pillow refuses at twice its limit, mcpm below at once
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise ImageError(f"image {path} is {w}x{h} ({w * h / 1e6:.0f} million pixels), more than mcpm "
                                     f"decodes ({MAX_IMAGE_PIXELS / 1e6:.0f} million)", "downscale it first")
                factor = _reduction(w, h)
                if factor > 1 and im.format == "JPEG":
                    im.draft("RGB", (w // factor, h // factor))
                im.load()
                factor = _reduction(*im.size)
                return to_rgb(im.reduce(factor) if factor > 1 else im)
    except Image.DecompressionBombError:
        raise ImageError(f"image {path} has more than {2 * MAX_IMAGE_PIXELS / 1e6:.0f} million pixels, more than "
                         f"mcpm decodes ({MAX_IMAGE_PIXELS / 1e6:.0f} million)", "downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"cannot read image {path} ({exc})", "give a JPEG or PNG file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def _reduction(w: int, h: int) -> int:
    factor = 1
    while (w // factor) * (h // factor) > KEEP_PIXELS:
        factor *= 2
    return factor


# -- resize (PIL BICUBIC, exact) ------------------------------------------------------------------------------------
def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(x < 1.0, ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
                    np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def resize_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(first input index [out], fixed-point weights [out, taps]) of PIL's bicubic for one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    first = np.zeros(out_size, dtype=np.int64)
    weights = np.zeros((out_size, taps), dtype=np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = _bicubic((np.arange(xmax) + xmin - center + 0.5) / filterscale)
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
        first[xx] = xmin
        weights[xx, :xmax] = fixed.astype(np.int64)
    return first, weights


def _resample_axis0(img: np.ndarray, out_size: int) -> np.ndarray:
    """Resize axis 0 of a uint8 array (other axes unchanged) with 8-bit rounding, as one PIL pass."""
    first, weights = resize_coefficients(img.shape[0], out_size)
    acc = np.full((out_size, *img.shape[1:]), 1 << (PRECISION_BITS - 1), dtype=np.int64)
    src = img.astype(np.int64)
    extra = (slice(None),) + (None,) * (img.ndim - 1)
    for t in range(weights.shape[1]):
        idx = np.minimum(first + t, img.shape[0] - 1)  # taps past xmax have weight 0
        acc += src[idx] * weights[:, t][extra]
    return np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)


def resize_bicubic(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """H x W x 3 uint8 -> height x width x 3 uint8, bit-exact with PIL's ``resize((width, height), BICUBIC)``.

    Pillow 12 runs the horizontal pass first, except for a very tall image shrunk in height (h > 100 * w), where it
    runs the vertical pass first (PIL/Image.py); the passes round to uint8 in between, so the order matters."""
    h, w = rgb.shape[:2]
    out = rgb
    vertical_first = h > w * 100 and height < h
    if vertical_first:
        out = _resample_axis0(out, height)
    if width != w:
        out = _resample_axis0(out.transpose(1, 0, 2), width).transpose(1, 0, 2)
    if height != h and not vertical_first:
        out = _resample_axis0(out, height)
    return np.ascontiguousarray(out)


# -- slicing --------------------------------------------------------------------------------------------------------
def ensure_divide(length: float, patch: int) -> int:
    return max(round(length / patch) * patch, patch)


def best_resize(width: float, height: float, scale_resolution: int, patch: int,
                allow_upscale: bool = False) -> tuple[int, int]:
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        r = width / height
        height = int(scale_resolution / math.sqrt(r))
        width = int(height * r)
    return ensure_divide(width, patch), ensure_divide(height, patch)


@dataclass(frozen=True)
class SlicePlan:
    overview: tuple[int, int]  # (width, height) of the overview image
    grid: tuple[int, int] | None  # (cols, rows) of the refine grid, None when the image is not sliced
    refine: tuple[int, int] | None  # (width, height) of the refine image split into the grid

    @property
    def slice_size(self) -> tuple[int, int] | None:
        if self.grid is None or self.refine is None:
            return None
        return self.refine[0] // self.grid[0], self.refine[1] // self.grid[1]

    @property
    def num_images(self) -> int:
        """Overview plus slices: how many times the vision tower runs."""
        return 1 + (self.grid[0] * self.grid[1] if self.grid else 0)


def plan_slices(width: int, height: int, max_slices: int = 9, scale_resolution: int = 448, patch: int = 14,
                never_split: bool = False) -> SlicePlan:
    """The sizes the reference slicer picks for a width x height image (no pixels touched)."""
    if width <= 0 or height <= 0:
        raise ImageError(f"the image is empty ({width}x{height} pixels)")
    log_ratio = math.log(width / height)
    ratio = width * height / (scale_resolution * scale_resolution)
    multiple = min(math.ceil(ratio), max_slices)
    if multiple <= 1 or never_split:
        return SlicePlan(best_resize(width, height, scale_resolution, patch, allow_upscale=True), None, None)
    overview = best_resize(width, height, scale_resolution, patch)
    candidates = []
    for n in (multiple - 1, multiple, multiple + 1):
        if n == 1 or n > max_slices:
            continue
        candidates += [(m, n // m) for m in range(1, n + 1) if n % m == 0]
    grid, best = (1, 1), float("inf")
    for cols, rows in candidates:
        error = abs(log_ratio - math.log(cols / rows))
        if error < best:
            grid, best = (cols, rows), error
    refine_w, refine_h = ensure_divide(width, grid[0]), ensure_divide(height, grid[1])
    cell = best_resize(refine_w / grid[0], refine_h / grid[1], scale_resolution, patch, allow_upscale=True)
    return SlicePlan(overview, grid, (cell[0] * grid[0], cell[1] * grid[1]))


def normalize(rgb: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 -> 3 x H x W float32: (x/255 - mean) / std."""
    x = rgb.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((x - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1))


@dataclass
class PreparedImage:
    plan: SlicePlan
    images: list[np.ndarray]  # uint8 H x W x 3: the overview, then the slices row-major
    pixels: list[np.ndarray]  # float32 3 x H x W, normalized, same order


def prepare_image(image: Any, mode: str | None = None, max_slices: int = 9, scale_resolution: int = 448,
                  patch: int = 14, slice_mode: bool = True) -> PreparedImage:
    """Any supported image -> the overview and slices the vision tower reads, in prompt order."""
    rgb = to_rgb(image, mode)
    h, w = rgb.shape[:2]
    plan = plan_slices(w, h, max_slices, scale_resolution, patch, never_split=not slice_mode)
    images = [resize_bicubic(rgb, *plan.overview)]
    if plan.grid is not None and plan.refine is not None and plan.slice_size is not None:
        refine = resize_bicubic(rgb, *plan.refine)
        sw, sh = plan.slice_size
        for r in range(plan.grid[1]):
            for c in range(plan.grid[0]):
                images.append(refine[r * sh:(r + 1) * sh, c * sw:(c + 1) * sw])
    return PreparedImage(plan, images, [normalize(im) for im in images])


def prepare_config_image(image: Any, cfg: Any, mode: str | None = None) -> PreparedImage:
    """``prepare_image`` with the slicing settings of a MiniCPMVConfig."""
    return prepare_image(image, mode, cfg.max_slice_nums, cfg.scale_resolution, cfg.patch_size, cfg.slice_mode)


# -- prompt layout --------------------------------------------------------------------------------------------------
IMAGE_START, IMAGE_END, SLICE_START, SLICE_END, UNK = "<image>", "</image>", "<slice>", "</slice>", "<unk>"


def placeholder_text(grid: tuple[int, int] | None, query_num: int) -> str:
    """The reference's text for one image: overview, then (if sliced) <slice> rows joined by newlines </slice>.

    The chat puts it before the question: ``<用户>`` + placeholder + "\\n" + question + ``<AI>``.
    """
    one = IMAGE_START + UNK * query_num + IMAGE_END
    if grid is None:
        return one
    cols, rows = grid
    return one + SLICE_START + "\n".join(one * cols for _ in range(rows)) + SLICE_END


@dataclass(frozen=True)
class ImageTokens:
    """Token ids of the image markers; MiniCPM-V 2.0's SentencePiece model has them as pieces."""

    image_start: int
    image_end: int
    slice_start: int
    slice_end: int
    unk: int
    newline: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> ImageTokens:
        """Look the markers up in an mcpm Tokenizer (``token_id``); a missing one is a TokenizerError."""
        from mcpm.errors import TokenizerError

        ids = {}
        for key, piece in (("image_start", IMAGE_START), ("image_end", IMAGE_END), ("slice_start", SLICE_START),
                           ("slice_end", SLICE_END), ("unk", UNK)):
            i = tokenizer.token_id(piece)
            if i is None:
                raise TokenizerError(f"the tokenizer has no {piece!r} token", "use the MiniCPM-V 2.0 tokenizer")
            ids[key] = i
        # the "\n" piece when the vocabulary has one (MiniCPM-2B's: id 5, which vLLM's MiniCPM-V-2 puts between slice
        # rows), else the byte piece SentencePiece falls back to
        newline = tokenizer.token_id("\n")
        if newline is None:
            newline = tokenizer.token_id("<0x0A>")
        if newline is None:
            raise TokenizerError("the tokenizer has no newline token", "use the MiniCPM-V 2.0 tokenizer")
        return cls(newline=newline, **ids)


def placeholder_ids(grid: tuple[int, int] | None, query_num: int, tokens: ImageTokens) -> list[int]:
    """``placeholder_text`` as token ids (each marker one token, the newline between rows one token)."""
    one = [tokens.image_start, *[tokens.unk] * query_num, tokens.image_end]
    if grid is None:
        return one
    cols, rows = grid
    out = [*one, tokens.slice_start]
    for r in range(rows):
        if r:
            out.append(tokens.newline)
        out += one * cols
    return [*out, tokens.slice_end]


def image_positions(ids: Sequence[int], tokens: ImageTokens) -> np.ndarray:
    """Indices of the tokens strictly inside each <image> ... </image> pair, in order (the reference's
    ``image_bound``); the image features replace these tokens' embeddings."""
    out: list[int] = []
    start = None
    for i, t in enumerate(ids):
        if t == tokens.image_start:
            start = i
        elif t == tokens.image_end and start is not None:
            out += range(start + 1, i)
            start = None
    return np.asarray(out, dtype=np.int64)
