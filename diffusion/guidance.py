"""Classifier-free guidance (Ho & Salimans 2022) for the samplers' denoiser (diffusion/pipeline.py) and the
shortcut model's targets (diffusion/shortcut.py): out = cond + w (cond - uncond), the same in eps, x0, v
or velocity, since each is affine in the network's output at fixed x_t."""
import torch


def guided(net, x, t, labels, w, step=None):
    """cond + w (cond - uncond): `net` at (x_t, t[, step]) toward `labels` ((B,) classes, or (B, num_classes
    + 1) weights that mix them) and toward the null label, in one batched pass. `w`: a number or a tensor
    that broadcasts to x_t (where 0: the conditional output)."""
    inner = net
    for attr in ("module", "_orig_mod"):  # out of DistributedDataParallel or torch.compile
        inner = getattr(inner, attr, inner)
    config = inner.config
    null = torch.full_like(labels, config.null_label)
    if labels.is_floating_point():  # mixed labels (interpolation): the null label's weights
        null = torch.nn.functional.one_hot(torch.full((len(labels),), config.null_label), config.num_classes + 1)
    out = net_output(net, torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null.to(labels)]),
                     None if step is None else torch.cat([step, step]))
    cond, uncond = out.float().chunk(2)
    return cond + w * (cond - uncond)


def net_output(net, x, t, y, step=None):
    """net(x_t, t, y), told the step's size if there is one (a network with a step condition)."""
    return net(x, t, y) if step is None else net(x, t, y, step)
