"""Sizes and paths of the fast kernels (``zfcore.core._kernels``, ``_winograd``), in one place: the chunk
sizes that keep a kernel's working set in cache, the layout and algorithm switches, and ``tuning``, the
context manager the tests use to force each path. What the defaults rest on (ad-hoc measurements
that no script under benchmarks/ reproduces), and which of them were not measured: docs/design.md
("Measurements behind the thresholds")."""
import contextlib
from dataclasses import dataclass


@dataclass
class Tuning:
    """Sizes of the chunks the kernels work in, and which path they take (None: by the rules below)."""
    fast: bool = True                # ops: the fast kernels (True) or the plain im2col + GEMM and scatter
    chunk_bytes: int = 2 * 2**20     # im2col columns + GEMM result of one conv chunk (stay in cache)
    min_cols: int = 1024             # ... but at least this many GEMM columns per chunk
    pool_chunk_bytes: int = 2**20    # max-pool window copies of one chunk of planes
    wino_band_bytes: int = 4 * 2**20  # Winograd: V + M of one band of tile rows
    wino_min_tiles: int = 512        # ... but at least this many tiles per GEMM
    winograd: bool | None = None     # force Winograd on (True) / off (False) for 3x3 stride-1 convs
    deconv_as_conv: bool | None = None  # force the stride-1 deconv strategy
    flat: bool | None = None         # force the flat (True) / strided (False) im2col layout at stride 1
    pool_t_width: int = 8            # max-pool values: planes-last layout below this output width
    nhwc: bool | None = None         # Network.infer: every conv channels last (True), none (False)
    nhwc_min_channels: int = 16      # ... or (None) by nhwc_pays, which needs this many input channels
    nhwc_chunk_bytes: int = 8 * 2**20  # channels-last im2col columns of one chunk


TUNING = Tuning()


@contextlib.contextmanager
def tuning(**changes):
    """Test hook: run a block with some fields of ``TUNING`` changed (e.g. tiny chunks, forced paths)."""
    old = dict(TUNING.__dict__)
    try:
        for k, v in changes.items():
            if not hasattr(TUNING, k):
                raise ValueError(f"unknown tuning field {k!r}")
            setattr(TUNING, k, v)
        yield TUNING
    finally:
        TUNING.__dict__.update(old)
