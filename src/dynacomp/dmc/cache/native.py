"""dynacomp's native CPU kernel for DMC decoding (``csrc/paged_decode.cpp``).

One call per layer reads every row's pages through its block table with an online softmax,
where the PyTorch path (``DMCLayer.attend``) scores each page separately and then combines the
partial results in a dozen further ops. It is built on first use with PyTorch's C++ extension
loader (a C++ compiler is needed; about 30 s once, then cached under ``$TORCH_EXTENSIONS_DIR``).
It reads float32, bfloat16 and float16 pages and computes in float32. Where it cannot be built,
off the CPU, for other dtypes, head sizes other than 64 and 128, or with ``DYNACOMP_NATIVE=0`` in
the environment, the PyTorch path is used.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor

HEAD_SIZES = (64, 128)

# Vector instructions per PyTorch CPU capability; the capability is part of the extension's name, so
# a build cached on one machine is not loaded on a machine without those instructions.
# F16C (every AVX2 CPU has it) turns a float16 to float32 conversion into one instruction.
_X86_FLAGS = {"AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c"],
              "AVX2": ["-mavx2", "-mfma", "-mf16c"]}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def _extension():
    if os.environ.get("DYNACOMP_NATIVE", "1") == "0":
        return None
    from torch.utils.cpp_extension import load

    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-ffast-math"]
    if platform.machine().lower() in ("x86_64", "amd64") and capability in _X86_FLAGS:
        # ATen's vector types take their width from these macros; without them, plain arrays.
        flags += _X86_FLAGS[capability] + [f"-DCPU_CAPABILITY={capability}", f"-DCPU_CAPABILITY_{capability}"]
    else:
        flags.append("-DCPU_CAPABILITY=DEFAULT")
    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []   # else at::parallel_for is serial
    name = f"dynacomp_paged_decode_{capability.lower()}"
    _announce_first_build(name)
    try:
        return load(name=name,
                    sources=[str(Path(__file__).with_name("csrc") / "paged_decode.cpp")],
                    extra_cflags=flags + openmp, extra_ldflags=openmp)
    except Exception as error:  # no compiler, no OpenMP, ...: decoding still works, more slowly
        warnings.warn(f"dynacomp's native DMC decode kernel could not be built, using the PyTorch path: {error}", stacklevel=2)
        return None


def _announce_first_build(name: str) -> None:
    """Say why the first DMC decoding step is slow: the kernel is compiled, once per machine."""
    from torch.utils import cpp_extension
    try:  # a private helper of torch's loader; without it, no notice
        build_directory = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:
        return
    if not any(build_directory.glob(f"{name}*.so")):
        print(f"dynacomp: building the native DMC decode kernel in {build_directory} "
              "(once per machine, about 30 s)", file=sys.stderr)


def supports(pool: Tensor) -> bool:
    """Whether the native kernel can decode over ``pool`` (N, P, D)."""
    return (pool.device.type == "cpu" and pool.dtype in DTYPES and pool.shape[-1] in HEAD_SIZES
            and _extension() is not None)


def paged_decode_attention(queries: Tensor, k_pool: Tensor, v_pool: Tensor, block_table: Tensor,
                           visible: Tensor, scale: float) -> Tensor:
    """Softmax attention of each row's queries (R, M, D) over its first ``visible`` (R,) slots,
    found through ``block_table`` (R, pages) in the pools (N, P, D). Returns float32 (R, M, D);
    rows with nothing visible get 0."""
    return _extension().paged_decode_attention(queries.float().contiguous(), k_pool, v_pool,
                                               block_table, visible.contiguous(), scale)
