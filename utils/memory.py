"""Will a batch fit in memory? An estimate made before the work starts, so that a batch far too
large is refused in one line instead of ending in an allocation traceback or the kernel's OOM killer:
the most bytes one image's tensors hold at once in a pass through the network (counted on PyTorch's
meta device: shapes only, no memory, no arithmetic), times the batch, against the memory free on the
device. For the default network's training step: 3.6 MiB per image counted, 4.1 MiB of peak RSS
measured (2-core AMD Zen 4, fp32); its forward pass 0.48 against 0.58.
"""
import copy
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from utils.errors import UserError

USABLE = 0.9  # of the free memory: the rest for the data, the weights and the allocator's slack
UNCHECKED = 256  # images: the MNIST networks here need at most about 2 GiB for so few; counting takes a second
MARGIN = 1.2  # the peak RSS measured on a CPU came 13-20% above the count (oneDNN's workspaces)


class _PeakBytes(TorchDispatchMode):
    """The most bytes held at once by the tensors made under this mode (views share their base's
    memory and are not counted; a tensor counts until it is freed)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0

    def _free(self, size):
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in (*args, *(kwargs or {}).values()) if isinstance(a, torch.Tensor)]
        for t in out if isinstance(out, (tuple, list)) else (out,):
            # a view, or the result of an in-place operation (one of its inputs), takes no new memory
            if isinstance(t, torch.Tensor) and not t._is_view() and not any(t is a for a in inputs):
                size = t.numel() * t.element_size()
                self.live += size
                weakref.finalize(t, self._free, size)
        self.peak = max(self.peak, self.live)
        return out


def forward_pass(net, x, t):
    """The network's forward pass without gradients (sampling, the likelihood)."""
    with torch.no_grad():
        net(x, t, None)


def bytes_per_image(model, work=forward_pass):
    """Bytes that one more image adds to the peak memory of `work(net, x, t)` in fp32 (train.py hands in
    its forward and backward pass): batch 2 less batch 1. Remembered per network config and work."""
    config = model.config
    key = (type(model).__name__, repr(config), work)
    if key not in _PER_IMAGE:
        meta, peaks = copy.deepcopy(model).to("meta"), []
        for batch in (1, 2):
            x = torch.zeros(batch, config.in_channels, config.image_size, config.image_size, device="meta")
            with _PeakBytes() as counter:
                work(meta, x, torch.zeros(batch, device="meta"))
            peaks.append(counter.peak)
        _PER_IMAGE[key] = peaks[1] - peaks[0]
    return _PER_IMAGE[key]


_PER_IMAGE = {}


def free_bytes(device):
    """Memory free for this process on `device`: the GPU's free memory, or on Linux the smaller of
    MemAvailable and what a cgroup limit leaves; None where unknown (then nothing is checked)."""
    if device.type == "cuda":  # free on the card, plus what PyTorch holds in its cache unused
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    if device.type != "cpu":
        return None
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        free = int(meminfo["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":  # the cgroup's use less its reclaimable page cache
            stat = dict(line.split() for line in Path("/sys/fs/cgroup/memory.stat").read_text().splitlines())
            used = int(Path("/sys/fs/cgroup/memory.current").read_text()) - int(stat.get("inactive_file", 0))
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def check_batch(model, batch, device, flag="--batch_size", copies=1, work=forward_pass, what="forward pass"):
    """Refuse, in one line naming the memory needed and a batch that fits, a batch whose estimated
    memory for `work` (see bytes_per_image) exceeds the free memory of `device`; `copies`: images
    the network sees per image of the batch (2 under classifier-free guidance)."""
    if batch * copies <= UNCHECKED:
        return
    free = free_bytes(torch.device(device))
    if free is None:
        return
    try:
        per_image = bytes_per_image(model, work) * MARGIN * copies
    except Exception:  # noqa: BLE001 (a network the meta device cannot run: no estimate, no check)
        return
    if batch * per_image > USABLE * free:
        fits = max(1, int(USABLE * free // per_image))
        raise UserError(f"{flag} {batch} needs about {batch * per_image / 2 ** 30:.1f} GiB for the network's {what}, "
                        f"more than the {free / 2 ** 30:.1f} GiB free on {torch.device(device).type}; "
                        f"try {flag} {fits} or less")
