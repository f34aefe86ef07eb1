"""torch.compile's kernels kept in the studio's cache, so that later runs compile in seconds.

Inductor keeps compiled graphs and autotuned kernels in the system's temporary folder unless
told otherwise, and many systems empty that at every boot. Kept next to the studio's other
cached files instead, they survive: BENCHMARKS.md has the first step of a compiled training
with a cold and a warm cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from studio.models.default import cache_dir


def use_persistent_compile_cache() -> Path:
    """Point inductor at ``<studio cache>/torch-compile`` unless the user set ``TORCHINDUCTOR_CACHE_DIR``.

    Importing diffusers already sets that variable to inductor's temporary default, so that
    value counts as unset.
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "torch-compile")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
