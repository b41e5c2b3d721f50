"""DistributedDataParallel from torchrun's environment variables: `torchrun --nproc_per_node=N train.py`
sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python train.py` has none and runs as rank 0 of 1."""
import os
from datetime import timedelta

import torch
import torch.distributed as dist


def setup(device_name, timeout_s=300):
    """Join the process group if launched by torchrun; return (rank, world_size, device_name)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return rank, world_size, device_name


def active():
    return dist.is_available() and dist.is_initialized()


def is_main():
    """True in the process that logs and saves: rank 0, or the only one."""
    return not active() or dist.get_rank() == 0


def _device():
    """Where collectives run: the process's GPU with NCCL, else the CPU (gloo)."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def any_rank(flag):
    """True on every rank if `flag` is true on any rank (for stopping together)."""
    if not active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_rank0(number):
    """Rank 0's value of an integer on every rank (e.g. a step count that rank 0 decided)."""
    if not active():
        return number
    value = torch.tensor([number], dtype=torch.long, device=_device())
    dist.broadcast(value, src=0)
    return int(value.item())


def ranks_agree(model):
    """True if every rank holds exactly rank 0's weights (checked once at the end of training)."""
    if not active():
        return True
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    return not any_rank(not torch.equal(flat, reference))


def cleanup():
    if active():
        dist.destroy_process_group()
