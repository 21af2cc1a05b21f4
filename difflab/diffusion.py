"""Gaussian diffusion: forward process, posterior, model parametrisations, variational bound.

The network is always an argument (``p_mean_variance(model, x_t, t)``), never an
attribute, so the same math drives any model function with the contract
``model(x_t, t, **model_kwargs) -> output`` (see docs/CONVENTIONS.md).

Notation (indices 0-based; index ``t`` is the paper's step ``t + 1``):

=====================  ==========================================================
``x_0``                data
``x_t``                noisy sample, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps   (DDPM eq. 4)
``eps``                the noise; the "eps" prediction target
``pred_x0``            model's estimate of x_0
``v``                  v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  (progressive distillation)
``score``              grad log q(x_t) = -eps / sqrt(1 - abar_t)
``abar``               alphas_cumprod
=====================  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import schedules as S
from .losses import CDFS, LOG2, discretized_gaussian_log_likelihood, mean_flat, normal_kl

PREDICTIONS = ("eps", "x0", "v")
VARIANCES = ("fixed_small", "fixed_large", "learned", "learned_range")
LOSSES = ("simple", "vlb", "hybrid")
LOSS_WEIGHTINGS = ("none", "min_snr")

ModelFn = Callable[..., torch.Tensor]


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything that defines a GaussianDiffusion; serialisable as plain data."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    prediction: str = "eps"
    variance: str = "fixed_small"
    loss: str = "simple"
    hybrid_lambda: float = 0.001
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0
    schedule_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        _choice("schedule", self.schedule, S.SCHEDULES)
        _choice("prediction target", self.prediction, PREDICTIONS)
        _choice("variance type", self.variance, VARIANCES)
        _choice("loss", self.loss, LOSSES)
        _choice("loss weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be a positive integer, got {self.num_timesteps!r}")
        if self.hybrid_lambda < 0:
            raise ValueError(f"hybrid_lambda must be >= 0, got {self.hybrid_lambda}")
        if self.loss == "hybrid" and self.variance not in ("learned", "learned_range"):
            raise ValueError("the hybrid loss trains a learned variance: use variance 'learned' or 'learned_range'")

    def build(self) -> "GaussianDiffusion":
        betas = S.make_betas(self.schedule, self.num_timesteps, **self.schedule_kwargs)
        return GaussianDiffusion(betas, prediction=self.prediction, variance=self.variance, loss=self.loss,
                                 hybrid_lambda=self.hybrid_lambda, loss_weighting=self.loss_weighting,
                                 min_snr_gamma=self.min_snr_gamma)


class GaussianDiffusion:
    """The DDPM forward/reverse process on a fixed beta schedule.

    ``timestep_map`` (set by :meth:`respace`) maps this chain's indices to the
    indices of the chain the model was trained on; the model always sees those.
    """

    def __init__(self, betas, *, prediction: str = "eps", variance: str = "fixed_small", loss: str = "simple",
                 hybrid_lambda: float = 0.001, loss_weighting: str = "none", min_snr_gamma: float = 5.0,
                 timestep_map: Sequence[int] | None = None, original_num_timesteps: int | None = None):
        _choice("prediction target", prediction, PREDICTIONS)
        _choice("variance type", variance, VARIANCES)
        _choice("loss", loss, LOSSES)
        _choice("loss weighting", loss_weighting, LOSS_WEIGHTINGS)
        self.terms = S.schedule_terms(betas)
        self.num_timesteps = self.terms.num_timesteps
        self.prediction = prediction
        self.variance = variance
        self.loss = loss
        self.hybrid_lambda = float(hybrid_lambda)
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = float(min_snr_gamma)
        self.timestep_map = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        if len(self.timestep_map) != self.num_timesteps:
            raise ValueError("timestep_map must have one entry per timestep")
        self.original_num_timesteps = original_num_timesteps or self.num_timesteps
        self._cache: dict = {}

    # ------------------------------------------------------------------ helpers
    @property
    def learns_variance(self) -> bool:
        return self.variance in ("learned", "learned_range")

    def _options(self) -> dict:
        return dict(prediction=self.prediction, variance=self.variance, loss=self.loss,
                    hybrid_lambda=self.hybrid_lambda, loss_weighting=self.loss_weighting,
                    min_snr_gamma=self.min_snr_gamma)

    def with_options(self, **changes) -> "GaussianDiffusion":
        """A copy with other prediction / variance / loss options on the same chain."""
        opts = {**self._options(), **changes}
        return GaussianDiffusion(self.terms.betas, timestep_map=self.timestep_map,
                                 original_num_timesteps=self.original_num_timesteps, **opts)

    def respace(self, use_timesteps: Sequence[int]) -> "GaussianDiffusion":
        """iDDPM section 4: the sub-chain on ``use_timesteps`` (indices into this chain)."""
        ts = sorted({int(t) for t in use_timesteps})
        if not ts or ts[0] < 0 or ts[-1] >= self.num_timesteps:
            raise ValueError(f"respaced timesteps must be a non-empty subset of [0, {self.num_timesteps - 1}]")
        betas = S.respaced_betas(self.terms.alphas_cumprod, ts)
        return GaussianDiffusion(betas, timestep_map=self.timestep_map[ts],
                                 original_num_timesteps=self.original_num_timesteps, **self._options())

    def respaced(self, steps, spacing: str = "linspace") -> "GaussianDiffusion":
        """Respace to ``steps`` (count, list or spec string) with the given spacing."""
        _choice("spacing", spacing, S.SPACINGS)
        if steps is None or (isinstance(steps, (int, np.integer)) and steps == self.num_timesteps):
            return self
        return self.respace(S.space_timesteps(self.num_timesteps, steps, spacing))

    def _table(self, name: str, device, dtype) -> torch.Tensor:
        key = (name, str(device), dtype)
        if key not in self._cache:
            if name == "timestep_map":
                arr = torch.as_tensor(self.timestep_map, dtype=torch.long)
                self._cache[key] = arr.to(device)
            else:
                self._cache[key] = torch.as_tensor(getattr(self.terms, name), dtype=torch.float64).to(device, dtype)
        return self._cache[key]

    def check_t(self, t: torch.Tensor, x: torch.Tensor) -> None:
        """Validate a timestep batch against a sample batch (raises ValueError)."""
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"t must be an integer tensor of timestep indices, got "
                             f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.ndim != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have shape [{x.shape[0]}] to match x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps - 1}], "
                             f"got values in [{int(t.min())}, {int(t.max())}]")
        if not torch.is_floating_point(x):
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")

    def extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Schedule quantity ``name`` at ``t``, shaped to broadcast against ``x``."""
        out = self._table(name, x.device, x.dtype)[t.to(x.device).long()]
        return out.reshape(-1, *([1] * (x.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """This chain's indices mapped to the training chain's, for the model call."""
        return self._table("timestep_map", t.device, torch.long)[t.long()]

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x_0, t):
        """Mean, variance and log-variance of q(x_t | x_0) (DDPM eq. 4)."""
        self.check_t(t, x_0)
        mean = self.extract("sqrt_alphas_cumprod", t, x_0) * x_0
        var = (1.0 - self.extract("alphas_cumprod", t, x_0)).expand_as(x_0)
        log_var = self.extract("log_one_minus_alphas_cumprod", t, x_0).expand_as(x_0)
        return mean, var, log_var

    def q_sample(self, x_0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps  (DDPM eq. 4, closed form)."""
        self.check_t(t, x_0)
        if noise is None:
            noise = torch.randn_like(x_0)
        if noise.shape != x_0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x_0 {tuple(x_0.shape)}")
        return (self.extract("sqrt_alphas_cumprod", t, x_0) * x_0
                + self.extract("sqrt_one_minus_alphas_cumprod", t, x_0) * noise)

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One step of the forward chain, x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)
        (DDPM eq. 2); ``t`` steps applied one by one give the marginal that :meth:`q_sample` draws."""
        self.check_t(t, x_prev)
        return (torch.sqrt(self.extract("alphas", t, x_prev)) * x_prev
                + torch.sqrt(self.extract("betas", t, x_prev)) * noise)

    def q_posterior_mean_variance(self, x_0, x_t, t):
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde_t, beta-tilde_t I)  (DDPM eqs. 6-7)."""
        if x_0.shape != x_t.shape:
            raise ValueError(f"x_0 has shape {tuple(x_0.shape)} but x_t {tuple(x_t.shape)}")
        mean = self.extract("posterior_mean_coef1", t, x_t) * x_0 + self.extract("posterior_mean_coef2", t, x_t) * x_t
        var = self.extract("posterior_variance", t, x_t).expand_as(x_t)
        log_var = self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, var, log_var

    # ------------------------------------------------------------------ parametrisations (the one place)
    def pred_x0_from_eps(self, x_t, t, eps):
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (DDPM eq. 4 solved for x_0)."""
        return self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t) * eps

    def eps_from_pred_x0(self, x_t, t, pred_x0):
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return (self.extract("sqrt_recip_alphas_cumprod", t, x_t) * x_t - pred_x0) / self.extract(
            "sqrt_recipm1_alphas_cumprod", t, x_t)

    def v_from_x0_eps(self, x_0, t, eps):
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0."""
        return self.extract("sqrt_alphas_cumprod", t, x_0) * eps - self.extract(
            "sqrt_one_minus_alphas_cumprod", t, x_0) * x_0

    def pred_x0_from_v(self, x_t, t, v):
        """x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v."""
        return self.extract("sqrt_alphas_cumprod", t, x_t) * x_t - self.extract(
            "sqrt_one_minus_alphas_cumprod", t, x_t) * v

    def eps_from_v(self, x_t, t, v):
        """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v."""
        return self.extract("sqrt_one_minus_alphas_cumprod", t, x_t) * x_t + self.extract(
            "sqrt_alphas_cumprod", t, x_t) * v

    def score_from_eps(self, x_t, t, eps):
        """score = grad log q(x_t) = -eps / sqrt(1 - abar_t)  (Song et al.; guided-diffusion eq. 11)."""
        return -eps / self.extract("sqrt_one_minus_alphas_cumprod", t, x_t)

    def eps_from_score(self, x_t, t, score):
        return -score * self.extract("sqrt_one_minus_alphas_cumprod", t, x_t)

    def to_x0_eps(self, x_t, t, prediction_out):
        """(pred_x0, eps) from a mean output in this diffusion's prediction target."""
        if self.prediction == "eps":
            return self.pred_x0_from_eps(x_t, t, prediction_out), prediction_out
        if self.prediction == "x0":
            return prediction_out, self.eps_from_pred_x0(x_t, t, prediction_out)
        return self.pred_x0_from_v(x_t, t, prediction_out), self.eps_from_v(x_t, t, prediction_out)

    def to_x0_eps_at(self, x_t, abar, prediction_out):
        """(pred_x0, eps) from a mean output at an arbitrary noise level ``abar`` (a tensor that
        broadcasts against ``x_t``), for samplers that evaluate the model between the chain's
        timesteps (EDM / Karras sigmas, where abar = 1 / (1 + sigma^2)). Same formulas as
        :meth:`to_x0_eps`, with abar given instead of looked up at an integer t; needs abar < 1.
        """
        a, s = torch.sqrt(abar), torch.sqrt(1 - abar)
        if self.prediction == "eps":
            return (x_t - s * prediction_out) / a, prediction_out
        if self.prediction == "x0":
            return prediction_out, (x_t - a * prediction_out) / s
        return a * x_t - s * prediction_out, s * x_t + a * prediction_out

    def output_shift_for_x0_shift(self, x_t, t, delta_x0):
        """How the mean output must move so that pred_x0 moves by ``delta_x0`` (x_t fixed).

        eps target: x_0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps  =>  d eps = -d x_0 / sqrt(1/abar - 1);
        x0 target: d x_0; v target: x_0 = sqrt(abar) x_t - sqrt(1 - abar) v  =>  d v = -d x_0 / sqrt(1 - abar).
        """
        if self.prediction == "eps":
            return -delta_x0 / self.extract("sqrt_recipm1_alphas_cumprod", t, x_t)
        if self.prediction == "x0":
            return delta_x0
        return -delta_x0 / self.extract("sqrt_one_minus_alphas_cumprod", t, x_t)

    def from_x0_eps(self, x_t, t, pred_x0, eps):
        """The prediction target (eps, x0 or v) that corresponds to (pred_x0, eps)."""
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return pred_x0
        return self.v_from_x0_eps(pred_x0, t, eps)

    def training_target(self, x_0, t, noise):
        """What the network regresses onto: eps, x_0 or v."""
        return self.from_x0_eps(None, t, x_0, noise)

    # ------------------------------------------------------------------ reverse process
    def split_output(self, model_output: torch.Tensor, x_t: torch.Tensor):
        """Split a model output into (mean part, variance part or None), checking shapes."""
        if self.learns_variance:
            C = x_t.shape[1]
            if model_output.shape[1] != 2 * C or model_output.shape[2:] != x_t.shape[2:]:
                raise ValueError(f"a learned-variance model must output {2 * C} channels for {C} input channels; "
                                 f"got output of shape {tuple(model_output.shape)}")
            return model_output[:, :C], model_output[:, C:]
        if model_output.shape != x_t.shape:
            raise ValueError(f"model output has shape {tuple(model_output.shape)}, expected {tuple(x_t.shape)}")
        return model_output, None

    def model_log_variance(self, var_values, x_t, t):
        """log sigma_t^2 of p(x_{t-1} | x_t) for this diffusion's variance type."""
        if self.variance == "learned":
            return var_values
        if self.variance == "learned_range":
            # iDDPM eq. 15: Sigma = exp(v log beta_t + (1 - v) log beta-tilde_t), v = (out + 1) / 2
            min_log = self.extract("posterior_log_variance_clipped", t, x_t)
            max_log = torch.log(self.extract("betas", t, x_t))
            frac = (var_values + 1) / 2
            return frac * max_log + (1 - frac) * min_log
        if self.variance == "fixed_small":
            return self.extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        # fixed_large: sigma_t^2 = beta_t, with beta-tilde_2 at the first step so L_0 stays finite
        return self.extract("log_fixed_large_variance", t, x_t).expand_as(x_t)

    def p_mean_variance(self, model: ModelFn, x_t: torch.Tensor, t: torch.Tensor, *, clip_denoised: bool = False,
                        denoised_fn: Callable | None = None, model_kwargs: dict | None = None,
                        model_output: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """p(x_{t-1} | x_t): mean, variance, log-variance, pred_x0 and eps.

        mean = mu-tilde_t(pred_x0, x_t) (DDPM eq. 7 with x_0 replaced by its prediction,
        which for the eps target equals DDPM eq. 11).
        """
        self.check_t(t, x_t)
        if model_output is None:
            model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_out, var_values = self.split_output(model_output, x_t)
        log_variance = self.model_log_variance(var_values, x_t, t)
        pred_x0, eps = self.to_x0_eps(x_t, t, mean_out)
        if denoised_fn is not None or clip_denoised:
            if denoised_fn is not None:
                pred_x0 = denoised_fn(pred_x0)
            if clip_denoised:
                pred_x0 = pred_x0.clamp(-1, 1)
            eps = self.eps_from_pred_x0(x_t, t, pred_x0)
        mean, _, _ = self.q_posterior_mean_variance(pred_x0, x_t, t)
        return {"mean": mean, "variance": torch.exp(log_variance), "log_variance": log_variance,
                "pred_x0": pred_x0, "eps": eps, "model_output": model_output}

    # ------------------------------------------------------------------ variational bound
    def vb_term(self, model, x_0, x_t, t, *, clip_denoised=False, model_kwargs=None, model_output=None,
                cdf: str = "exact"):
        """One term of the bound, in bits/dim, per example (DDPM eq. 5).

        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and
        L_0 = -log p(x_0 | x_1) with the discretized Gaussian decoder at t = 0, whose normal
        CDF is ``cdf``: "exact" (erf) or "approx" (the tanh form of the DDPM / iDDPM code).
        """
        _choice("cdf", cdf, CDFS)
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_0, x_t, t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                   model_output=model_output)
        kl = mean_flat(normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / LOG2
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(   # DDPM eq. 13, log-scale = log sigma
            x_0, out["mean"], 0.5 * out["log_variance"], exact_cdf=cdf == "exact")) / LOG2
        return torch.where(t == 0, decoder_nll, kl), out

    def prior_bpd(self, x_0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per example (DDPM eq. 5)."""
        t = torch.full((x_0.shape[0],), self.num_timesteps - 1, dtype=torch.long, device=x_0.device)
        mean, _, log_var = self.q_mean_variance(x_0, t)
        return mean_flat(normal_kl(mean, log_var, torch.zeros_like(mean), 0.0)) / LOG2

    def training_losses(self, model: ModelFn, x_0: torch.Tensor, t: torch.Tensor, *, noise=None,
                        model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """Per-example training losses for this diffusion's loss type.

        - ``simple``: || target - model ||^2 (DDPM eq. 14 for the eps target), mean over dims,
          optionally min-SNR weighted.
        - ``vlb``: the bound term L_{t} in bits/dim (DDPM eq. 5); mean and variance both train.
        - ``hybrid``: L_simple + lambda * L_vlb, lambda = 0.001, with L_vlb estimated as
          T * L_t and the gradient stopped through the mean (iDDPM section 3.1, eq. 16).
        """
        self.check_t(t, x_0)
        if noise is None:
            noise = torch.randn_like(x_0)
        x_t = self.q_sample(x_0, t, noise)
        model_output = model(x_t, self.model_timesteps(t), **(model_kwargs or {}))
        mean_out, var_values = self.split_output(model_output, x_t)
        terms: dict[str, torch.Tensor] = {}
        if self.loss in ("simple", "hybrid"):
            target = self.training_target(x_0, t, noise)
            mse = mean_flat((target - mean_out) ** 2)
            terms["mse"] = mse * self.loss_weights(t, x_0)
        if self.loss == "vlb" or (self.loss == "hybrid" and self.learns_variance):
            out_for_vb = model_output
            if self.loss == "hybrid":
                # iDDPM section 3.1: L_vlb trains only the variance, so stop the gradient through the mean
                out_for_vb = torch.cat([mean_out.detach(), var_values], dim=1)
            vb, _ = self.vb_term(None, x_0, x_t, t, model_output=out_for_vb)
            terms["vb"] = vb
        if self.loss == "simple":
            terms["loss"] = terms["mse"]
        elif self.loss == "vlb":
            terms["loss"] = terms["vb"]
        else:
            terms["loss"] = terms["mse"] + self.hybrid_lambda * self.num_timesteps * terms["vb"]
        return terms

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t)."""
        abar = self._table("alphas_cumprod", t.device, torch.float64)[t]
        return abar / (1 - abar)

    def loss_weights(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Per-example weights of the simple loss.

        ``min_snr`` (Hang et al. 2023): weight so that the effective x_0-loss weight is
        min(SNR, gamma): eps target -> min(SNR, g) / SNR, v target -> min(SNR, g) / (SNR + 1),
        x0 target -> min(SNR, g).
        """
        if self.loss_weighting == "none":
            return torch.ones(t.shape[0], dtype=x.dtype, device=x.device)
        snr = self.snr(t)
        clipped = torch.clamp(snr, max=self.min_snr_gamma)
        w = {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}[self.prediction]
        return w.to(x.dtype)

    @torch.no_grad()
    def bits_per_dim(self, model: ModelFn, x_0: torch.Tensor, *, clip_denoised: bool = False,
                     model_kwargs: dict | None = None, generator=None, progress: bool = False,
                     cdf: str = "exact") -> dict[str, Any]:
        """The full variational bound L_T + sum_{t>1} L_{t-1} + L_0 in bits/dim, per example.

        Every one of the T terms is evaluated (one model call per timestep for the batch), with
        the noise of term t drawn from ``generator`` in the order t = T-1, ..., 0; ``cdf`` is the
        normal CDF of the decoder L_0 (see :meth:`vb_term`).
        Returns total_bpd [B], prior_bpd [B], vb [B, T] (the terms, index t = L_t) and
        mse [B, T] (eps-prediction error per timestep).
        """
        from .rng import randn
        from tqdm.auto import tqdm

        _choice("cdf", cdf, CDFS)
        B = x_0.shape[0]
        vb = torch.zeros(B, self.num_timesteps, dtype=torch.float64, device=x_0.device)
        mse = torch.zeros_like(vb)
        for i in tqdm(range(self.num_timesteps - 1, -1, -1), disable=not progress, desc="bits/dim", leave=False):
            t = torch.full((B,), i, dtype=torch.long, device=x_0.device)
            noise = randn(x_0.shape, generator, device=x_0.device, dtype=x_0.dtype)
            x_t = self.q_sample(x_0, t, noise)
            term, out = self.vb_term(model, x_0, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs,
                                     cdf=cdf)
            vb[:, i] = term.double()
            mse[:, i] = mean_flat((out["eps"] - noise) ** 2).double()
        prior = self.prior_bpd(x_0).double()
        return {"total_bpd": vb.sum(dim=1) + prior, "prior_bpd": prior, "vb": vb, "mse": mse}
