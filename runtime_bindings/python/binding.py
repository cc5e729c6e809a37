"""ctypes binding of the C runtime (runtime_bindings/c/mcpm.h) for one bundle's shared library.

    model = Model.load(bundle_dir, threads=0)   # builds (or finds cached) libmcpm_bundle.so, then mcpm_model_load
    logits = model.prefill([1, 2, 3])           # np.ndarray float32 [vocab]: logits of the last position
    logits = model.decode(4)
    model.close()

One Model must be used by one thread at a time (as the C API says); errors raise McpmError with the runtime's
message (mcpm_last_error).
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mcpm.errors import McpmError
from mcpm.runtime.build import build_library


class Params(ctypes.Structure):
    """struct mcpm_params."""

    _fields_ = [("threads", ctypes.c_int), ("workspace_bytes", ctypes.c_size_t), ("verify", ctypes.c_int)]


_P = ctypes.c_void_p  # mcpm_model*
_SIGNATURES: dict[str, tuple[list[object], object]] = {
    "mcpm_default_params": ([], Params),
    "mcpm_model_load": ([ctypes.c_char_p, ctypes.POINTER(Params)], _P),
    "mcpm_prefill": ([_P, ctypes.POINTER(ctypes.c_int32), ctypes.c_int, ctypes.POINTER(ctypes.c_float)], ctypes.c_int),
    "mcpm_decode": ([_P, ctypes.c_int32, ctypes.POINTER(ctypes.c_float)], ctypes.c_int),
    "mcpm_reset": ([_P], None),
    "mcpm_vocab_size": ([_P], ctypes.c_int),
    "mcpm_context_length": ([_P], ctypes.c_int),
    "mcpm_position": ([_P], ctypes.c_int),
    "mcpm_last_error": ([_P], ctypes.c_char_p),
    "mcpm_model_free": ([_P], None),
}

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


class Model:
    """A bundle loaded by the C runtime (an mcpm_model handle)."""

    def __init__(self, lib: ctypes.CDLL, handle: int, bundle_dir: Path) -> None:
        self._lib = lib
        self._h: int | None = handle
        self.bundle_dir = bundle_dir
        self.vocab_size: int = lib.mcpm_vocab_size(handle)
        self.context_length: int = lib.mcpm_context_length(handle)

    @classmethod
    def load(cls, bundle_dir: str | Path, threads: int = 0, verify: bool = False, workspace_bytes: int = 0,
             library: Path | None = None) -> Model:
        """Build (or reuse) the bundle's library and load the bundle; threads=0: one per online CPU."""
        bundle_dir = Path(bundle_dir)
        if threads < 0:
            raise McpmError(f"threads must be >= 0, not {threads}", "pass 0 for one per CPU")
        lib = open_library(library if library is not None else build_library(bundle_dir))
        params = lib.mcpm_default_params()
        params.threads = threads
        params.verify = 1 if verify else 0
        if workspace_bytes:
            params.workspace_bytes = workspace_bytes
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
        toks = np.ascontiguousarray(tokens, dtype=np.int32).reshape(-1)  # [n]
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
        self._check(self._lib.mcpm_decode(h, int(token), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return out

    def reset(self) -> None:
        """Forget the context (position 0)."""
        self._lib.mcpm_reset(self._handle())

    @property
    def position(self) -> int:
        """Tokens in the context."""
        return int(self._lib.mcpm_position(self._handle()))

    @property
    def closed(self) -> bool:
        return self._h is None

    def close(self) -> None:
        """Free the model (idempotent)."""
        h, self._h = self._h, None
        if h is not None:
            self._lib.mcpm_model_free(h)

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_h", None) is not None:
            self.close()
