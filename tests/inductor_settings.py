"""A fixture for the tests that compile with inductor on the CPU.

The suite compiles a handful of steps, on a cold inductor cache wherever it runs fresh
(a new machine, CI), and two of inductor's defaults are tuned for the opposite case:

- Before its first C++ kernel, inductor checks each vector instruction set the CPU
  reports (AVX2, AVX-512) by building and loading a probe for it: about 8 s of compiler
  time. Trusting the CPU's flags instead gives the same kernels on a machine whose
  compiler builds them; one that cannot fails the test instead of falling back to a
  narrower set, so nothing checked is looser.
- Precompiled headers (about 140 MB each, one per set of compiler flags, kept in
  /tmp/torchinductor_$USER whatever TORCHINDUCTOR_CACHE_DIR says) save a second or two
  per later compile, and cost 5-8 s to build: a loss for two or three compiles of each
  kind. Without them the same headers are read as text: the same code is built.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture
def few_compiles() -> Iterator[None]:
    import torch._inductor.config as inductor_config  # a second of imports: only where used

    settings = {
        "cpp.vec_isa_ok": True,
        "cpp_cache_precompile_headers": False,
        "aot_inductor.precompile_headers": False,
    }
    with inductor_config.patch(settings):
        yield
