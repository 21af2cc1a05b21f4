"""How training draws timesteps: uniformly, or by loss-aware importance sampling.

iDDPM section 3.3: L_vlb = sum_t L_t has terms of very different size, so sampling t
uniformly gives a noisy estimate. Importance sampling with p_t proportional to
sqrt(E[L_t^2]) and weights 1 / (T p_t) keeps the estimate unbiased and lowers its
variance (iDDPM eq. 18). E[L_t^2] is tracked from the last ``history`` losses seen at each
t; until every t has a full history, t is drawn uniformly; a small uniform share
(``uniform_prob``) keeps every t reachable.

Both samplers return ``(t, weights)``: multiply the per-example losses by ``weights``
before averaging. Their state is plain tensors, so training checkpoints and resumes exactly.
"""

from __future__ import annotations

import torch

from .rng import randint

TIMESTEP_SAMPLERS = ("uniform", "loss_aware")


class UniformTimesteps:
    """t ~ U{0, ..., T-1}, weights 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = int(num_timesteps)

    def probabilities(self) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        return randint(self.num_timesteps, batch_size, generator), torch.ones(batch_size)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossAwareTimesteps(UniformTimesteps):
    """iDDPM section 3.3: p_t proportional to sqrt(E[L_t^2]) over the last ``history`` losses at t."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"history must be >= 1 and uniform_prob in [0, 1], got {history}, {uniform_prob}")
        self.history = int(history)
        self.uniform_prob = float(uniform_prob)
        self.losses = torch.zeros(self.num_timesteps, self.history, dtype=torch.float64)
        self.counts = torch.zeros(self.num_timesteps, dtype=torch.long)

    @property
    def warmed_up(self) -> bool:
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> torch.Tensor:
        if not self.warmed_up:
            return super().probabilities()
        p = torch.sqrt((self.losses**2).mean(dim=1))                   # sqrt(E[L_t^2])  (iDDPM eq. 18)
        p = p / p.sum()
        return p * (1 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def sample(self, batch_size: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.warmed_up:
            return super().sample(batch_size, generator)
        p = self.probabilities()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])                       # unbiased: E_p[w L_t] = mean_t L_t
        return t, weights.float()

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-example losses (detached) seen at timesteps ``t``."""
        for ti, loss in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self.counts[ti] >= self.history:
                self.losses[ti, :-1] = self.losses[ti, 1:].clone()       # drop the oldest
                self.losses[ti, -1] = loss
            else:
                self.losses[ti, self.counts[ti]] = loss
            self.counts[ti] += 1

    def state_dict(self) -> dict:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["losses"].shape) != tuple(self.losses.shape):
            raise ValueError(f"timestep-sampler state has shape {tuple(state['losses'].shape)}, "
                             f"expected {tuple(self.losses.shape)}")
        self.losses = state["losses"].clone().to(torch.float64)
        self.counts = state["counts"].clone().to(torch.long)


def make_timestep_sampler(name: str, num_timesteps: int):
    if name == "uniform":
        return UniformTimesteps(num_timesteps)
    if name == "loss_aware":
        return LossAwareTimesteps(num_timesteps)
    raise ValueError(f"unknown timestep sampling {name!r}; allowed: {', '.join(TIMESTEP_SAMPLERS)}")
