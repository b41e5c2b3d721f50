"""Training-time distributions: functions of (process, batch, generator, device) that draw a batch's
times as fractions u in [0, 1) of the way from the clean end to the noise end, which the process
maps to its own times (process.time_at).

    uniform       iid U[0, 1) (a discrete process: uniform over its T timesteps, Ho et al. 2020)
    stratified    (u + i / B) mod 1 for one uniform u per batch: low-discrepancy, the same density
                  with less variance between batches (Kingma et al. 2021, appendix I.1)

The density of the times is a weighting of the loss as much as the weighting is (Kingma & Gao
2023): a new distribution is one function and one line in TIMES, which --t_sampling's choices are.
"""
import torch


def uniform(process, batch, generator, device):
    if process.discrete:
        return torch.randint(0, process.num_timesteps, (batch,), generator=generator, device=device)
    return process.time_at(torch.rand(batch, generator=generator, device=device))


def stratified(process, batch, generator, device):
    u = torch.rand((), generator=generator, device=device)
    return process.time_at(torch.remainder(u + torch.arange(batch, device=device) / batch, 1.0))


TIMES = {"uniform": uniform, "stratified": stratified}
