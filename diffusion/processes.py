"""The processes a model can be trained on, by --process: the registry and its one factory.

    ddpm   the discrete DDPM of Ho et al. 2020 (diffusion/gaussian.py): T steps, linear or cosine betas
    vdm    a variational diffusion model in continuous time (Kingma et al. 2021; diffusion/continuous.py)
    flow   flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; diffusion/continuous.py)
"""
from diffusion.continuous import VDM, Flow
from diffusion.gaussian import GaussianDiffusion

PROCESSES = {"ddpm": GaussianDiffusion, "vdm": VDM, "flow": Flow}
Process = GaussianDiffusion | VDM | Flow  # what the samplers, the training step and the tools are handed


def make_process(config, device="cpu"):
    """The process a DiffusionConfig describes, with its coefficients on `device`."""
    return PROCESSES[config.process](config, device)
