"""ctypes binding of the C runtime (runtime_bindings/c/mcpm.h) for one bundle's shared library.

    model = Model.load(bundle_dir, threads=0)   # builds (or finds cached) libmcpm_bundle.so, then mcpm_model_load
    logits = model.prefill([1, 2, 3])           # np.ndarray float32 [vocab]: logits of the last position
    logits = model.decode(4)
    model.reset()
    ids = model.generate([1, 2, 3], 16, Sampling(temperature=0.8, top_p=0.9, seed=1), stop_ids=[2])  # C sampler
    model.stats()                               # dict: load_ms, prefill_tok_s, decode_tok_s, ttft_ms, ...
    session = Session(model)                    # chat in C with the bundle's tokenizer and template
    if model.has_vision:                        # MiniCPM-V bundle: images attach to the next chat turn
        session.encode_image(rgb)               # rgb: np.ndarray uint8 [h, w, 3]; returns overview + slices
    session.chat("What is in the picture?", 64)
    model.close()

One Model must be used by one thread at a time (as the C API says); errors raise McpmError with the runtime's
message (mcpm_last_error).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from mcpm.errors import McpmError
from mcpm.runtime.build import build_library


class Params(ctypes.Structure):
    """struct mcpm_params."""

    _fields_ = [("threads", ctypes.c_int), ("workspace_bytes", ctypes.c_size_t), ("verify", ctypes.c_int),
                ("kernel_variant", ctypes.c_char_p), ("device", ctypes.c_char_p), ("profile", ctypes.c_int),
                ("cache_dir", ctypes.c_char_p)]


class SamplingC(ctypes.Structure):
    """struct mcpm_sampling."""

    _fields_ = [("temperature", ctypes.c_float), ("top_k", ctypes.c_int), ("top_p", ctypes.c_float),
                ("min_p", ctypes.c_float), ("repetition_penalty", ctypes.c_float), ("repeat_last_n", ctypes.c_int),
                ("seed", ctypes.c_uint64)]


@dataclass(frozen=True)
class Sampling:
    """Settings of the C sampler (mcpm_sampling); the defaults are greedy. Order: repetition penalty, temperature,
    top-k, top-p, min-p, draw."""

    temperature: float = 0.0         # <= 0: greedy
    top_k: int = 0                   # 0 = off
    top_p: float = 1.0               # 1 = off
    min_p: float = 0.0               # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    repeat_last_n: int = 64          # penalty window; 0 = off, -1 = all tokens
    seed: int = 0

    @classmethod
    def of(cls, value: Sampling | Mapping[str, Any] | None) -> Sampling:
        if value is None:
            return cls()
        if isinstance(value, Sampling):
            return value
        unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise McpmError(f"unknown sampling setting(s): {', '.join(sorted(unknown))}",
                            f"use {', '.join(f.name for f in dataclasses.fields(cls))}")
        return cls(**value)

    def to_c(self) -> SamplingC:
        return SamplingC(float(self.temperature), int(self.top_k), float(self.top_p), float(self.min_p),
                         float(self.repetition_penalty), int(self.repeat_last_n), int(self.seed) % 2**64)


TOKEN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_void_p)  # mcpm_token_callback
# mcpm_text_callback: (const char* text, size_t len, void* user); a c_void_p text so that NUL bytes survive
STATS_JSON_MAX = 16384  # MCPM_STATS_JSON_MAX of mcpm.h: a stats buffer this large always suffices
ABORT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)  # mcpm_abort_callback
TEXT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_I32P = ctypes.POINTER(ctypes.c_int32)
_F32P = ctypes.POINTER(ctypes.c_float)
_P = ctypes.c_void_p  # mcpm_model*
_SIGNATURES: dict[str, tuple[list[object], object]] = {
    "mcpm_default_params": ([], Params),
    "mcpm_model_load": ([ctypes.c_char_p, ctypes.POINTER(Params)], _P),
    "mcpm_prefill": ([_P, ctypes.POINTER(ctypes.c_int32), ctypes.c_int, ctypes.POINTER(ctypes.c_float)], ctypes.c_int),
    "mcpm_decode": ([_P, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)], ctypes.c_int),
    "mcpm_reset": ([_P], None),
    "mcpm_set_abort_callback": ([_P, ABORT_CALLBACK, ctypes.c_void_p], None),
    "mcpm_vocab_size": ([_P], ctypes.c_int),
    "mcpm_set_sampleable": ([_P, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int], ctypes.c_int),
    "mcpm_context_length": ([_P], ctypes.c_int),
    "mcpm_position": ([_P], ctypes.c_int),
    "mcpm_last_error": ([_P], ctypes.c_char_p),
    "mcpm_model_free": ([_P], None),
    "mcpm_default_sampling": ([], SamplingC),
    "mcpm_generate": ([_P, _I32P, ctypes.c_int, ctypes.c_int, ctypes.POINTER(SamplingC), _I32P, ctypes.c_int,
                       TOKEN_CALLBACK, ctypes.c_void_p], ctypes.c_int),
    "mcpm_stats_json": ([_P, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "mcpm_model_device": ([_P], ctypes.c_char_p),
    "mcpm_model_notice": ([_P], ctypes.c_char_p),
    "mcpm_kernel_times_json": ([_P, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "mcpm_sampler_probs": ([_F32P, ctypes.c_int, _I32P, ctypes.c_int, ctypes.POINTER(SamplingC), _F32P],
                           ctypes.c_int),
    "mcpm_session_new": ([_P], _P),
    "mcpm_session_chat": ([_P, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(SamplingC), TEXT_CALLBACK,
                           ctypes.c_void_p], ctypes.c_int),
    "mcpm_session_complete": ([_P, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(SamplingC), TEXT_CALLBACK,
                               ctypes.c_void_p], ctypes.c_int),
    "mcpm_session_reset": ([_P], None),
    "mcpm_session_last_error": ([_P], ctypes.c_char_p),
    "mcpm_session_free": ([_P], None),
    "mcpm_model_has_vision": ([_P], ctypes.c_int),
    "mcpm_encode_image": ([_P, ctypes.POINTER(ctypes.c_uint8), ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "mcpm_session_clear_images": ([_P], None),
    "mcpm_session_max_pixels": ([_P], ctypes.c_int64),
    "mcpm_self_test_json": ([_P, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
    "mcpm_kernel_variants_json": ([_P, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int),
}
SELF_TEST_JSON_MAX = 8192  # MCPM_SELF_TEST_JSON_MAX of mcpm.h
_LIBS: dict[str, ctypes.CDLL] = {}
_LIBS_LOCK = threading.Lock()


def open_library(path: Path) -> ctypes.CDLL:
    """dlopen a runtime library (once per path) with every function's argtypes/restype set."""
    key = str(Path(path).resolve())
    with _LIBS_LOCK:
        lib = _LIBS.get(key)
        if lib is None:
            try:
                lib = ctypes.CDLL(key)
            except OSError as exc:
                raise McpmError(f"cannot load the C runtime library {key}: {exc}",
                                "delete it so that it is built again") from None
            for name, (argtypes, restype) in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = argtypes
                fn.restype = restype
            _LIBS[key] = lib
    return lib


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


def token_ids(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    """int32 [n] from integer ids; floats, bools or ids past int32 are a one-line error (they were truncated)."""
    arr = np.asarray(values)
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < np.iinfo(np.int32).min
                     or arr.max() > np.iinfo(np.int32).max):
        raise McpmError(f"{what}: token ids must be integers (got {arr.dtype} values)", "pass a list of int ids")
    return np.ascontiguousarray(arr, dtype=np.int32).reshape(-1)


class _Owned:
    """An owned C handle in ``self._h``: close() frees it once (also on ``with`` exit and garbage collection)."""

    _h: int | None

    def _free(self, h: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Free the handle (idempotent)."""
        h, self._h = self._h, None
        if h is not None:
            self._free(h)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None:
            self.close()


class Model(_Owned):
    """A bundle loaded by the C runtime (an mcpm_model handle)."""

    def __init__(self, lib: ctypes.CDLL, handle: int, bundle_dir: Path) -> None:
        self._lib = lib
        self._h: int | None = handle
        self.bundle_dir = bundle_dir
        self.vocab_size: int = lib.mcpm_vocab_size(handle)
        self.context_length: int = lib.mcpm_context_length(handle)
        self._abort: Any = None  # the ctypes callback of set_abort, kept alive while the runtime holds it

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int = 0, verify: bool = False, workspace_bytes: int = 0,
             library: Path | None = None, device: str = "cpu", profile: bool = False,
             cache_dir: str | Path | None = None, kernel_variant: str | None = None) -> Model:
        """Build (or reuse) the bundle's library and load the bundle; threads=0: one per online CPU.

        device: "cpu", "gpu" (the bundle's OpenCL kernels; an error when impossible) or "auto" (the GPU when it
        works, else the CPU: see ``notice``). profile: time GPU kernels (``kernel_times``). cache_dir: where the
        compiled OpenCL program is kept (default $MCPM_CACHE_DIR/opencl). kernel_variant: force one of the bundle's CPU
        kernel sets (``kernel_variants``; default: the best this CPU runs)."""
        bundle_dir = Path(bundle_dir)
        if not bundle_dir.is_dir():  # before building: "kernels.o is missing" misled
            raise McpmError(f"bundle folder {bundle_dir} does not exist", "pass the folder mcpm-export wrote")
        if threads < 0:
            raise McpmError(f"threads must be >= 0, not {threads}", "pass 0 for one per CPU")
        if device not in ("cpu", "gpu", "auto"):
            raise McpmError(f"unknown device {device!r}", "use cpu, gpu or auto")
        lib = open_library(library if library is not None else build_library(bundle_dir))
        params = lib.mcpm_default_params()
        params.threads = threads
        params.verify = 1 if verify else 0
        if workspace_bytes:
            params.workspace_bytes = workspace_bytes
        params.device = device.encode()
        params.profile = 1 if profile else 0
        cache = str(cache_dir).encode() if cache_dir is not None else None
        params.cache_dir = cache
        variant = kernel_variant.encode() if kernel_variant else None  # kept alive for the load
        params.kernel_variant = variant
        handle = lib.mcpm_model_load(str(bundle_dir).encode(), ctypes.byref(params))
        if not handle:
            raise McpmError(f"the C runtime cannot load {bundle_dir}: {_text(lib.mcpm_last_error(None))}",
                            "re-export the bundle")
        return cls(lib, handle, bundle_dir)

    def _handle(self) -> int:
        if self._h is None:
            raise McpmError("the model is closed", "load it again")
        return self._h

    def _check(self, rc: int) -> None:
        if rc != 0:
            raise McpmError(_text(self._lib.mcpm_last_error(self._h)) or "the C runtime failed")

    def prefill(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Feed tokens [n >= 1]; returns float32 logits [vocab] of the last position."""
        h = self._handle()
        toks = token_ids(tokens, "prefill")  # [n]
        if toks.size == 0:
            raise McpmError("prefill needs at least one token")
        out = np.empty(self.vocab_size, np.float32)  # [vocab]
        self._check(self._lib.mcpm_prefill(h, toks.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), int(toks.size),
                                           out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out

    def decode(self, token: int) -> np.ndarray:
        """One token; returns float32 logits [vocab]."""
        h = self._handle()
        out = np.empty(self.vocab_size, np.float32)  # [vocab]
        token_id = int(token_ids([token], "decode")[0])
        self._check(self._lib.mcpm_decode(h, token_id, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out

    def reset(self) -> None:
        """Forget the context (position 0)."""
        self._lib.mcpm_reset(self._handle())

    def set_abort(self, should_stop: Callable[[], bool] | None) -> None:
        """Stop long work when should_stop() is true, asked at the runtime's cancel points (each prefill chunk, each
        vision run of an image, each generated token: mcpm_set_abort_callback); None: never stop."""
        h = self._handle()
        self._abort = ABORT_CALLBACK(lambda _user: 1 if should_stop() else 0) if should_stop is not None else None
        self._lib.mcpm_set_abort_callback(h, self._abort or ABORT_CALLBACK(), None)

    def set_sampleable(self, allowed: np.ndarray | None) -> None:
        """Ids ``generate`` may draw: bool [vocab] (e.g. Tokenizer.decodable_mask), or None for every id."""
        h = self._handle()
        if allowed is None:
            self._check(self._lib.mcpm_set_sampleable(h, None, self.vocab_size))
            return
        flags = np.ascontiguousarray(allowed, dtype=np.uint8).reshape(-1)  # [vocab]
        self._check(self._lib.mcpm_set_sampleable(h, flags.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                  int(flags.size)))

    def generate(self, prompt_ids: Sequence[int] | np.ndarray, max_new_tokens: int,
                 sampling: Sampling | Mapping[str, Any] | None = None, stop_ids: Sequence[int] = (),
                 on_token: Callable[[int], bool | None] | None = None) -> list[int]:
        """Feed prompt_ids at the current position and sample up to max_new_tokens in C (mcpm_generate).

        Stops after a token of stop_ids (included in the result), when the context is full, or when on_token
        (called with each token) returns True. An exception in on_token cancels and is raised again here.
        """
        h = self._handle()
        params = Sampling.of(sampling).to_c()
        prompt = token_ids(prompt_ids, "generate")  # [n_prompt]
        stops = token_ids(list(stop_ids), "generate stop_ids")  # [n_stop]
        tokens: list[int] = []
        failure: list[BaseException] = []

        def callback(token: int, _user: int | None) -> int:
            tokens.append(int(token))
            if on_token is None:
                return 0
            try:
                return 1 if on_token(int(token)) else 0
            except BaseException as exc:  # noqa: BLE001 - re-raised after the C call returns
                failure.append(exc)
                return 1

        c_callback = TOKEN_CALLBACK(callback)  # kept alive for the call
        n = self._lib.mcpm_generate(h, prompt.ctypes.data_as(_I32P), int(prompt.size), int(max_new_tokens),
                                    ctypes.byref(params), stops.ctypes.data_as(_I32P), int(stops.size), c_callback,
                                    None)
        if failure:
            raise failure[0]
        if n < 0:
            self._check(n)
        assert n == len(tokens), (n, tokens)
        return tokens

    def stats(self) -> dict[str, Any]:
        """Timing of the load and of the last generate (mcpm_stats_json): load_ms, prefill_tokens, prefill_tok_s,
        decode_tokens, decode_tok_s, ttft_ms, peak_rss_kb, threads."""
        buf = ctypes.create_string_buffer(STATS_JSON_MAX)
        self._check(self._lib.mcpm_stats_json(self._handle(), buf, len(buf)))
        result: dict[str, Any] = json.loads(buf.value.decode())
        return result

    def kernel_variants(self) -> list[dict[str, Any]]:
        """The bundle's CPU kernel sets in preference order, [{"name", "supported"}] (mcpm_kernel_variants_json);
        [] for a bundle with one set."""
        buf = ctypes.create_string_buffer(4096)
        self._check(self._lib.mcpm_kernel_variants_json(self._handle(), buf, len(buf)))
        variants: list[dict[str, Any]] = json.loads(buf.value.decode())
        return variants

    @property
    def device(self) -> str:
        """Where prefill/decode run: "cpu" or "gpu"."""
        return _text(self._lib.mcpm_model_device(self._handle()))

    @property
    def notice(self) -> str:
        """Why a model loaded with device="auto" runs on the CPU ("" otherwise)."""
        return _text(self._lib.mcpm_model_notice(self._handle()))

    def kernel_times(self) -> list[dict[str, Any]]:
        """GPU kernel times (load with profile=True) since the load or the last generate, slowest first:
        [{"kernel", "count", "launches", "ms"}]; [] on the CPU."""
        size = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(size)
            if self._lib.mcpm_kernel_times_json(self._handle(), buf, len(buf)) == 0:
                times: list[dict[str, Any]] = json.loads(buf.value.decode())
                return times
            if size >= 1 << 24:
                self._check(-1)
            size *= 4

    @property
    def has_vision(self) -> bool:
        """True for a MiniCPM-V bundle (it has a vision encoder: Session.encode_image works)."""
        h = self._handle()
        return self._lib.mcpm_model_has_vision(h) == 1

    @property
    def position(self) -> int:
        """Tokens in the context."""
        return int(self._lib.mcpm_position(self._handle()))

    @property
    def closed(self) -> bool:
        return self._h is None

    def _free(self, h: int) -> None:
        self._lib.mcpm_model_free(h)



class Session(_Owned):
    """A text session of the C runtime (mcpm_session): chat turns with the bundle's template and tokenizer in C.

    The model must stay open while the session is used; one thread at a time, like the model."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self._lib = model._lib
        handle = self._lib.mcpm_session_new(model._handle())
        if not handle:
            raise McpmError(f"cannot open a C session on {model.bundle_dir}: "
                            f"{_text(self._lib.mcpm_last_error(model._handle()))}", "re-export the bundle")
        self._h: int | None = handle

    def _handle(self) -> int:
        if self._h is None or self.model.closed:
            raise McpmError("the session is closed", "open a new one")
        return self._h

    def _run(self, fn: Any, text: str, max_new_tokens: int, sampling: Sampling | Mapping[str, Any] | None,
             on_piece: Callable[[bytes], bool | None] | None) -> tuple[int, bytes]:
        h = self._handle()
        params = Sampling.of(sampling).to_c()
        pieces: list[bytes] = []
        failure: list[BaseException] = []

        def callback(data: int | None, length: int, _user: int | None) -> int:
            piece = ctypes.string_at(data, length) if data else b""
            pieces.append(piece)
            if on_piece is None:
                return 0
            try:
                return 1 if on_piece(piece) else 0
            except BaseException as exc:  # noqa: BLE001 - re-raised after the C call returns
                failure.append(exc)
                return 1

        c_callback = TEXT_CALLBACK(callback)  # kept alive for the call
        n = fn(h, _c_text(text), int(max_new_tokens), ctypes.byref(params), c_callback, None)
        if failure:
            raise failure[0]
        if n < 0:
            raise McpmError(_text(self._lib.mcpm_session_last_error(h)) or "the C session failed")
        return int(n), b"".join(pieces)

    def chat(self, message: str, max_new_tokens: int, sampling: Sampling | Mapping[str, Any] | None = None,
             on_piece: Callable[[bytes], bool | None] | None = None) -> tuple[int, str]:
        """One chat turn (mcpm_session_chat): (tokens generated, reply text). on_piece gets each UTF-8 piece
        (bytes); returning True cancels."""
        n, data = self._run(self._lib.mcpm_session_chat, message, max_new_tokens, sampling, on_piece)
        return n, data.decode("utf-8")

    def complete(self, prompt: str, max_new_tokens: int, sampling: Sampling | Mapping[str, Any] | None = None,
                 on_piece: Callable[[bytes], bool | None] | None = None) -> tuple[int, str]:
        """Plain continuation of BOS + prompt from a new conversation (mcpm_session_complete)."""
        n, data = self._run(self._lib.mcpm_session_complete, prompt, max_new_tokens, sampling, on_piece)
        return n, data.decode("utf-8")

    def encode_image(self, rgb: np.ndarray) -> int:
        """Run the vision encoder on an RGB8 image (np.ndarray uint8 [h, w, 3]; a strided view is copied) and
        attach it to the next chat turn (mcpm_encode_image). Returns the vision runs (overview + slices); the time
        is ``model.stats()["image_encode_ms"]``. Several images attach in order; ``clear_images`` drops them."""
        h = self._handle()
        if not isinstance(rgb, np.ndarray):
            raise McpmError(f"the image must be a numpy array (uint8 [height, width, 3]), not {type(rgb).__name__}",
                            "decode files with mcpm.export.models.minicpmv.preprocess.load_image")
        if rgb.dtype != np.uint8:
            raise McpmError(f"image pixels must be uint8, got {rgb.dtype}", "convert the image to 8-bit RGB")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise McpmError(f"the image array has shape {tuple(rgb.shape)}, not [height, width, 3] (RGB)",
                            "convert it to RGB (drop alpha, repeat gray)")
        height, width = int(rgb.shape[0]), int(rgb.shape[1])
        if height == 0 or width == 0:
            raise McpmError(f"the image is empty ({width}x{height} pixels)")
        if height * width * 3 > 2**31 - 1:
            raise McpmError(f"the image is too large ({width}x{height} pixels)", "downscale it first")
        pixels = np.ascontiguousarray(rgb)  # uint8 [h, w, 3], C order (a copy only for strided views)
        n = self._lib.mcpm_encode_image(h, pixels.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), width, height)
        if n < 0:
            raise McpmError(_text(self._lib.mcpm_session_last_error(h)) or "the C runtime could not encode the image")
        return int(n)

    @property
    def max_pixels(self) -> int:
        """The most pixels an image is encoded at; larger ones are downscaled first (the bundle's vision.max_pixels;
        0 without a vision encoder)."""
        return int(self._lib.mcpm_session_max_pixels(self._handle()))

    def clear_images(self) -> None:
        """Drop the images attached to the next turn (no-op when none is)."""
        self._lib.mcpm_session_clear_images(self._handle())

    def reset(self) -> None:
        """Forget the conversation (and any images attached to the next turn: mcpm_session_reset drops them)."""
        self._lib.mcpm_session_reset(self._handle())

    def self_test(self) -> dict[str, Any]:
        """The bundle's golden check on this model (mcpm_self_test_json): {"pass", "reason", "kernel_variant",
        "device", "steps", "argmax_equal", "near_ties", "max_logit_diff", "tolerance", "tokenizer", ...}. Raises
        McpmError when the test cannot run (no golden results in the bundle: re-export it)."""
        h = self._handle()
        buf = ctypes.create_string_buffer(SELF_TEST_JSON_MAX)
        if self._lib.mcpm_self_test_json(h, buf, len(buf)) != 0:
            raise McpmError(_text(self._lib.mcpm_session_last_error(h)) or "the self-test could not run")
        result: dict[str, Any] = json.loads(buf.value.decode())
        return result

    def _free(self, h: int) -> None:  # the model stays open
        self._lib.mcpm_session_free(h)



def _c_text(text: str) -> bytes:
    """UTF-8 bytes for the C session; text it cannot take whole is refused rather than cut or garbled."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise McpmError("the text is not valid Unicode (it holds a lone surrogate)",
                        "decode input with errors='replace' or fix the text") from None
    if b"\0" in data:
        raise McpmError("the text holds a NUL character, which the C session cannot take", "remove it")
    return data


def sampler_probs(lib: ctypes.CDLL, logits: np.ndarray, history: Sequence[int] | np.ndarray,
                  sampling: Sampling | Mapping[str, Any] | None = None) -> np.ndarray:
    """The distribution the C sampler draws from (mcpm_sampler_probs, a test hook): float32 [vocab]."""
    lg = np.ascontiguousarray(logits, dtype=np.float32).reshape(-1)  # [vocab]
    hist = np.ascontiguousarray(history, dtype=np.int32).reshape(-1)  # [n_history]
    out = np.empty_like(lg)  # [vocab]
    params = Sampling.of(sampling).to_c()
    rc = lib.mcpm_sampler_probs(lg.ctypes.data_as(_F32P), int(lg.size), hist.ctypes.data_as(_I32P), int(hist.size),
                                ctypes.byref(params), out.ctypes.data_as(_F32P))
    if rc != 0:
        raise McpmError(_text(lib.mcpm_last_error(None)) or "mcpm_sampler_probs failed")
    return out
