"""Python binding of the C runtime (runtime_bindings/c): build a bundle's shared library and run it.

``Model.load(bundle_dir)`` compiles the runtime with the bundle's kernels.o into a cache folder (once) and loads
the bundle; ``load_host_bundle`` also opens/validates the bundle and returns its tokenizer.
"""

from mcpm.runtime.binding import Model, Sampling
from mcpm.runtime.build import build_library

__all__ = ["Model", "Sampling", "build_library"]
