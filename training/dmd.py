"""Distribution matching distillation (Yin et al. 2024, "One-step Diffusion with Distribution Matching
Distillation", and DMD2, Yin et al. 2024): a generator x = G(z, y) learns to draw what the teacher
draws, not the teacher's ODE map. At a noised copy x_t ~ q(x_t | x) of its own digit, the gradient
of KL(p_G || p_teacher) is the difference of two scores,

    s_fake(x_t) - s_real(x_t) = alpha_t / sigma_t^2 (x0_real(x_t) - x0_fake(x_t)),

x0_real the teacher's estimate of the clean digit and x0_fake that of the critic: a copy of the
teacher trained by the teacher's own loss on the generator's digits, so that it knows p_G. With
DMD's weight (eq. 8) the generator's digit moves by

    grad = (x0_fake - x0_real) / mean |x - x0_real|,    loss = 1/2 ||x - sg(x - grad)||^2

at teacher times in TIMES (DMD2 keeps clear of both ends). x0_real is guided as the teacher samples
by default (classifier-free guidance w inside its interval, DMD sec. 3.3), so the generator learns
the distribution the teacher draws, not its unguided one. The critic takes CRITIC_STEPS AdamW
steps on the generator's digits for each of the generator's (DMD2's two time-scale update rule).

The generator is a flow model (diffusion/continuous.py's Flow) started from the teacher's weights,
x = z - v(z, 1): one ddim step on the jump grid, well conditioned in bf16 where an eps network's
x0 = (z - sigma eps) / alpha at alpha_T = 0.007 is not. Its odd rows learn the second step of the
two-step jump grid, from the ddim step to t_max / 2 of its own first (DMD2's backward simulation),
so that it samples in 1 or 2 steps.
"""
import torch
from torch.nn.parallel import DistributedDataParallel

from diffusion.config import SamplingConfig
from diffusion.grids import time_grid
from diffusion.guidance import guided
from training.step import make_optimizer, step_unless

TIMES = (0.02, 0.98)  # the teacher's times of the matching gradient, as fractions of its range
SEED = 2 ** 29        # the critic's and the gradient's noise: from --seed + SEED + rank
CRITIC_STEPS = 2      # the critic's AdamW steps per step of the generator (DMD2: 5)
REAL_SCORE = SamplingConfig()  # the real score's guidance w and its interval: the teacher's default sampling's


class DistributionMatching:
    """What a --distill dmd run trains by: training_loss as a process's, and the critic it keeps (in
    DistributedDataParallel under torchrun: it learns on every process)."""

    def __init__(self, process, teacher, teacher_process, critic, cfg, ranks=(0, 1)):
        self.process, self.teacher, self.teacher_process = process, teacher.requires_grad_(False), teacher_process
        self.critic = self.critic_net = critic.train().requires_grad_(True)
        device, (rank, world_size) = next(critic.parameters()).device, ranks
        if world_size > 1:
            ids = None if device.index is None else [device.index]
            self.critic_net = DistributedDataParallel(critic, device_ids=ids)
        self.optimizer = make_optimizer(critic, cfg, device)
        self.grad_clip = cfg.grad_clip
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + SEED + rank)
        self.guidance = (REAL_SCORE.guidance, *REAL_SCORE.guidance_interval)  # (w, lo, hi), saved with the run

    def training_loss(self, net, x0, y, z, t, amp):
        """The generator's loss on the batch's noise z and labels y (its images x0 and times t are
        not used); first the critic's step on the same digits."""
        x = self.draw(net, z, y, amp)
        for _ in range(CRITIC_STEPS):
            self.critic_step(x.detach(), y, amp)
        grad = torch.nan_to_num(self.matching_gradient(x.detach(), y, amp))
        return 0.5 * (x - (x - grad).detach()).pow(2).mean()

    def draw(self, net, z, y, amp):
        """G's digits with gradients: even rows in one step from z, odd rows by the second step of two."""
        p, n = self.process, len(z)
        first, second = time_grid("jump", p, 2)
        odd = slice(1, None, 2)
        with torch.no_grad(), amp():
            out = net(z[odd], p.model_time(first, len(z[odd]), z.device), None if y is None else y[odd])
        x0, eps = p.predict_x0_eps(z[odd], first, out.float())
        alpha, sigma = p.alpha_sigma(second)
        x_t, t = z.clone(), torch.full((n,), first, device=z.device)
        x_t[odd], t[odd] = alpha * x0 + sigma * eps, second  # ddim with eta 0 (Song et al. 2021, eq. 12)
        with amp():
            out = net(x_t, p.model_time(t, n, z.device), y)
        return p.predict_x0_eps(x_t, t, out.float())[0]

    def critic_step(self, x, y, amp):
        """One AdamW step of the critic on the teacher process's loss at the digits x: it learns p_G.
        A non-finite loss or gradient skips it (training/step.py's step_unless)."""
        tp = self.teacher_process
        t = tp.draw_t(len(x), self.noise, x.device)
        noise = torch.randn(x.shape, generator=self.noise, device=x.device)
        loss = tp.training_loss(self.critic_net, x, y, noise, t, amp)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), self.grad_clip or float("inf"))
        step_unless(self.optimizer, torch.isfinite(loss) & torch.isfinite(norm))

    def matching_gradient(self, x, y, amp):
        """(x0_fake - x0_real) / mean |x - x0_real| at x_t ~ q(x_t | x), t uniform in TIMES (DMD eq. 7-8),
        x0_real guided as the teacher samples (REAL_SCORE)."""
        tp, n = self.teacher_process, len(x)
        u = torch.rand(n, generator=self.noise, device=x.device) * (TIMES[1] - TIMES[0]) + TIMES[0]
        t = tp.time_at(u)
        x_t = tp.q_sample(x, t, torch.randn(x.shape, generator=self.noise, device=x.device))
        t_in = tp.model_time(t, n, x.device)
        (w, lo, hi), where = self.guidance, tp.fraction(t)
        with torch.no_grad(), amp():
            if y is None or w == 0:  # unconditional, or a run begun unguided: the plain pass
                real = self.teacher(x_t, t_in, y).float()
            else:
                real = guided(self.teacher, x_t, t_in, y, (w * ((where >= lo) & (where <= hi))).view(-1, 1, 1, 1))
            fake = self.critic(x_t, t_in, y).float()
        x0_real, x0_fake = tp.predict_x0_eps(x_t, t, real)[0], tp.predict_x0_eps(x_t, t, fake)[0]
        return (x0_fake - x0_real) / (x - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)

    def state_dict(self):
        return {"critic": self.critic.state_dict(), "optimizer": self.optimizer.state_dict(),
                "noise": self.noise.get_state(), "guidance": self.guidance}

    def load_state_dict(self, state):
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.noise.set_state(state["noise"])
        self.guidance = tuple(state.get("guidance", (0.0, 0.0, 1.0)))  # a run begun before the guided real score
