"""The settings of a diffusion process and of sampling: what a checkpoint's diffusion_config holds,
and how samples are drawn. Their choices come from the registries here in diffusion/ (processes,
weightings, training times, samplers, time grids), and a process's own defaults and the values it
refuses from its class (diffusion/processes.py), so a new one of each is one function or class
and one registry line. The flag machinery: utils/flags.py.
"""
from dataclasses import dataclass, replace

from diffusion.grids import GRIDS
from diffusion.processes import PROCESSES
from diffusion.samplers import SAMPLERS
from diffusion.times import TIMES
from diffusion.weightings import CONTINUOUS_ONLY, WEIGHTINGS
from utils.errors import UserError
from utils.flags import check_fields, option, recorded


def refuse_flags_of_other_processes(config, typed):
    """A flag typed for another process alone (--bootstrap_guidance without shortcut) is one line."""
    for name in sorted(typed):
        owners = [owner for owner, kind in PROCESSES.items() if name in kind.own_flags]
        if owners and config.process not in owners:
            raise UserError(f"--{name} is for --process {' or '.join(owners)}; a {config.process} run has none: "
                            "drop it")


def own(field_name):
    """' (ddpm: min_snr, vdm: elbo, ...)': each process's own value of a DiffusionConfig field, for --help."""
    return " (" + ", ".join(f"{name}: {kind.defaults.get(field_name)}" for name, kind in PROCESSES.items()) + ")"


@dataclass
class DiffusionConfig:
    process: str = option("ddpm", lambda: "the noise process: " + "; ".join(f"{name} ({kind.about})" for name, kind
                                                                      in PROCESSES.items()), choices=PROCESSES.keys())
    num_timesteps: int = option(1000, "ddpm: T, the number of diffusion steps (Ho et al. 2020: 1000)", bounds="[2, inf)")
    schedule: str = option("linear", "ddpm: beta schedule, linear (Ho et al. 2020) or cosine (Nichol & Dhariwal 2021)",
                           choices=("linear", "cosine"))
    beta_start: float = option(1e-4, "ddpm: first beta of the linear schedule", bounds="(0, 1)")
    beta_end: float = option(0.02, "ddpm: last beta of the linear schedule", bounds="(0, 1)")
    gamma_min: float = option(-13.3, "vdm: gamma = -log SNR at t = 0 (Kingma et al. 2021: -13.3, sigma about 1e-3); "
                              "gamma in [-50, 50] keeps alpha and sigma well inside float32", bounds="[-50, 50]")
    gamma_max: float = option(5.0, "vdm: gamma at t = 1 (Kingma et al. 2021: 5), in [-50, 50]", bounds="[-50, 50]")
    clip_x0: bool = recorded(None, "vdm: the denoiser clamps its x0 estimate to the data range [-1, 1] in the loss and "
                             "the likelihood too, as the samplers always do: never a worse bound, and better samples "
                             "(docs/RESULTS.md); True for every new VDM, False in one trained before (and other processes)")
    prediction: str = option(None, lambda: "what the network predicts: eps (noise), x0, v (Salimans & Ho 2022) or "
                             "velocity (dx_t/dt); default: the process's own" + own("prediction"),
                             choices=("eps", "x0", "v", "velocity"))
    weighting: str = option(None, lambda: "the loss's weight of each time (diffusion/weightings.py): target (the plain "
                            "MSE of what the network predicts), simple, min_snr (Hang et al. 2023), elbo, velocity (flow "
                            "matching's) or edm (Karras et al. 2022); default: the process's own" + own("weighting"),
                            choices=WEIGHTINGS.keys())
    t_sampling: str = option(None, lambda: "how training draws its times (diffusion/times.py): uniform or stratified "
                             "(one uniform number a batch, Kingma et al. 2021); default: the process's own"
                             + own("t_sampling"), choices=TIMES.keys())
    min_snr_gamma: float = option(5.0, "gamma of --weighting min_snr (Hang et al. 2023); 0 = target, the plain MSE",
                                  bounds="[0, inf)")
    bootstrap_guidance: float = option(1.0, "shortcut: classifier-free guidance w built into the targets of its "
                                       "smallest jumps, so that its 1-4 step samples are guided at one evaluation "
                                       "per step (1.0: FID 0.75 against 1.93 at 0.1, docs/RESULTS.md)",
                                       bounds="[0, inf)")
    few_steps: int = recorded(None, "the steps a few-step model (shortcut, or a student of --teacher) samples in "
                              "unless told: ddim on the jump grid, no noise, no guidance; 0 = the usual defaults")

    def __post_init__(self):
        kind = PROCESSES.get(self.process)  # None: check_fields says which processes there are
        for name, value in (kind.defaults if kind else {}).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_fields(self)
        if self.beta_start > self.beta_end:
            raise UserError("need beta_start <= beta_end")
        if self.gamma_min >= self.gamma_max:
            raise UserError("need gamma_min < gamma_max")
        if kind.discrete and self.weighting in CONTINUOUS_ONLY:
            raise UserError(f"--weighting {self.weighting} needs a continuous-time process, not {self.process}")
        for name, values in kind.allowed.items():
            if getattr(self, name) not in values:
                raise UserError(f"{name} {getattr(self, name)} is not for a {self.process} model, which takes "
                                f"{', '.join(map(str, values))}")


@dataclass
class SamplingConfig:
    """How samples are drawn; shared by inference.py, evaluate.py, training's grids and the benchmarks."""
    sampler: str = option("dpm++", "dpm++ (DPM-Solver++(2M), Lu et al. 2022), ddim (Song et al. 2021), heun (the "
                          "probability-flow ODE, Karras et al. 2022) or ddpm (ancestral, Ho et al. 2020; always all "
                          "T steps, 1000 for continuous time); a few-step checkpoint (shortcut, a --teacher's student) "
                          "samples by ddim on the jump grid in its own steps, eta 0, guidance 0, unless typed",
                          choices=SAMPLERS.keys())
    steps: int = option(8, "steps of ddim, dpm++ and heun (spaced by --grid)", bounds="[1, inf)")
    grid: str = option("", "the times of those steps (diffusion/grids.py): t (even in t), lambda (even in log-SNR), "
                       "karras (Karras et al. 2022's rho = 7) or jump (even in t, the last step a jump to the "
                       "data: few-step models); default: lambda for dpm++, t for ddim and heun",
                       choices=lambda: ("", *GRIDS))
    eta: float = option(1.0, "noise of the ddim and dpm++ steps: 0 = deterministic (the probability-flow ODE), "
                        "1 = stochastic (the DDPM posterior / the reverse SDE)", bounds="[0, 1]")
    guidance: float = option(0.1, "classifier-free guidance w for class-conditional models: out = cond + w (cond - "
                             "uncond); 0 = plain conditional sampling, 1-3 = crisper digits, less variety",
                             bounds="[0, inf)")
    guidance_interval: tuple = option((0.25, 0.7), "guide only the steps whose time is LO to HI of the way from "
                                      "the data to the noise (t / T for ddpm; Kynkaanniemi et al. 2024); a guided "
                                      "step costs two network evaluations (0 1 = every step)", bounds="[0, 1]")
    seed: int = option(0, "seed of the starting noise (same seed, same noise, same samples) and of --inpaint's "
                       "choice of test images", bounds="[0, inf)")

    def __post_init__(self):
        self.guidance_interval = tuple(self.guidance_interval)
        check_fields(self)
        if len(self.guidance_interval) != 2 or self.guidance_interval[0] > self.guidance_interval[1]:
            raise UserError("--guidance_interval needs two fractions of T, 0 <= LO <= HI <= 1; got "
                            + " ".join(map(str, self.guidance_interval)))

    def for_model(self, diffusion_config, typed):
        """This sampling with a few-step model's own defaults (DiffusionConfig.few_steps: ddim on the
        jump grid in that many steps, no noise, no guidance) in place of each setting not typed."""
        if not getattr(diffusion_config, "few_steps", 0):
            return self
        own = {"sampler": "ddim", "grid": "jump", "steps": diffusion_config.few_steps, "eta": 0.0, "guidance": 0.0}
        return replace(self, **{k: v for k, v in own.items() if k not in typed})

    def describe(self, conditional=True):
        """e.g. 'dpm++ 8 steps eta 1, guidance 0.1 for t in [0.25, 0.7] of the way'."""
        text = f"{self.sampler} " + ("all steps" if self.sampler == "ddpm" else f"{self.steps} steps eta {self.eta:g}")
        text += f" on the {self.grid} grid" if self.grid and self.sampler != "ddpm" else ""
        if conditional:
            lo, hi = self.guidance_interval
            text += f", guidance {self.guidance:g}" + (f" for t in [{lo:g}, {hi:g}] of the way" if self.guidance else "")
        return text
