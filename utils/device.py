"""Device, precision and thread choices, each in a few lines."""
import os
from contextlib import nullcontext

import torch

from utils.errors import UserError


def select_device(name="auto"):
    """auto: CUDA if present, else Apple MPS, else CPU. Otherwise the named torch device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (try cpu, cuda, cuda:1 or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: MPS is not available on this machine")
    return device


def cpu_has_fast_bf16():
    """True on CPUs with bf16 dot-product instructions (AVX512-BF16 or AMX) that PyTorch uses: not
    when its kernels are capped below AVX-512 (ATEN_CPU_CAPABILITY=avx2, as on an AVX2-only CPU)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    capable = torch.backends.cpu.get_cpu_capability().startswith(("AVX512", "AMX"))
    return capable and any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision, device):
    """The autocast dtype for --precision on this device (None = plain fp32; the loss and the diffusion
    coefficients always stay fp32). auto: bf16 on CPUs with bf16 instructions and on GPUs that support
    it, fp16 on older GPUs, fp32 elsewhere."""
    if precision == "auto":
        if device.type == "cpu":
            precision = "bf16" if cpu_has_fast_bf16() else "fp32"
        elif device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def sampling_batch_size(device):
    """Samples per batch that run fastest: small batches stay in the CPU's caches (measured on a
    2-core CPU: 730 network evaluations/s at batch 100, 495 at batch 500); GPUs want large ones."""
    return 100 if device.type == "cpu" else 1000


def autocast(device, dtype, cache=True):
    """Autocast to dtype on device, or a no-op context for fp32. cache=False inside a CUDA graph
    capture (the cast weights must not be cached across replays)."""
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache) if dtype is not None else nullcontext()


def set_cpu_threads():
    """Cap PyTorch's threads (one per physical core) at the CPUs this process may run on, as in a
    container limited to fewer CPUs than the host has, unless OMP_NUM_THREADS is set."""
    if "OMP_NUM_THREADS" not in os.environ and hasattr(os, "sched_getaffinity"):
        torch.set_num_threads(max(1, min(torch.get_num_threads(), len(os.sched_getaffinity(0)))))
