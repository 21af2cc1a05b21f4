"""Guidance as wrappers: each takes a model function and returns a guided model function.

The returned function has the usual contract ``model(x_t, t, **model_kwargs)`` (t = the
training chain's timesteps) and works with any sampler and any prediction target: every
guidance rule here is an affine change of the output, and eps, x_0 and v are affine in
each other for fixed x_t (GaussianDiffusion.output_shift_for_x0_shift does the conversion).

Classifier-free guidance (Ho & Salimans 2022), guidance weight w:
    eps~(x_t, c) = (1 + w) eps(x_t, c) - w eps(x_t, null)                       (CFG eq. 6)
equivalently, with the "scale" convention s = 1 + w used by GLIDE / Stable Diffusion,
    eps~ = eps(x_t, null) + s (eps(x_t, c) - eps(x_t, null)).

Classifier guidance (Dhariwal & Nichol 2021) with a noise-aware classifier p_phi(y | x_t):
    DDPM mean shift:  mu~ = mu + s Sigma grad_x log p_phi(y | x_t)               (guided-diffusion Alg. 1)
    eps form (DDIM):  eps~ = eps - sqrt(1 - abar_t) s grad_x log p_phi(y | x_t)  (guided-diffusion eq. 14)
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .diffusion import GaussianDiffusion

CONVENTIONS = ("w", "scale")
CLASSIFIER_RULES = ("eps", "mean_shift")


def null_label(null_class: int, key: str = "y") -> Callable[[dict], dict]:
    """Unconditional kwargs for a class-conditional model: every label replaced by ``null_class``."""

    def make(kwargs: dict) -> dict:
        if key not in kwargs:
            raise ValueError(f"classifier-free guidance needs the conditioning {key!r} in model_kwargs")
        return {**kwargs, key: torch.full_like(kwargs[key], null_class)}

    return make


def _split_mean_var(out: torch.Tensor, x: torch.Tensor):
    """(mean part, variance part or None): a learned-variance output has 2C channels."""
    C = x.shape[1]
    if out.shape[1] == 2 * C and out.shape[1] != C:
        return out[:, :C], out[:, C:]
    return out, None


def classifier_free(model, guidance: float, *, uncond: Callable[[dict], dict], convention: str = "w",
                    rescale: float = 0.0):
    """Classifier-free guidance wrapper.

    ``guidance`` is the weight w (``convention="w"``, w = 0 is the plain conditional model) or
    the scale s = 1 + w (``convention="scale"``, s = 1 is the conditional model, s = 0 the
    unconditional). ``uncond(model_kwargs)`` gives the kwargs of the unconditional branch
    (e.g. :func:`null_label`, or the empty prompt's context).

    Batch layout of the single network call: ``[conditional batch; unconditional batch]``, i.e.
    rows 0..B-1 carry the conditioning and rows B..2B-1 the null conditioning; tensors in the
    kwargs are concatenated the same way (kwargs equal in both branches are repeated).
    Every channel of the mean output is guided; a learned variance (the second half of a 2C
    output) is taken from the conditional branch. The returned function has ``nfe_per_call = 2``
    (twice the wrapped model's): samplers count each call as two network evaluations, the usual
    convention for guided sampling, although the two branches share one batched call.

    ``rescale`` = phi in [0, 1] (Lin et al. 2024, eq. 15-16): the guided output is rescaled to
    the per-sample standard deviation of the conditional one and mixed with weight phi,
    which counters over-exposure at large w.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown guidance convention {convention!r}; allowed: 'w' (eps = (1+w) c - w u) "
                         "or 'scale' (eps = u + s (c - u))")
    if not math.isfinite(float(guidance)):
        raise ValueError(f"guidance must be a finite number, got {guidance}")
    w = float(guidance) if convention == "w" else float(guidance) - 1.0
    if convention == "w" and w < 0:
        raise ValueError(f"guidance weight w must be >= 0 (0 = conditional model), got {guidance}")
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale must lie in [0, 1], got {rescale}")

    def guided(x_t, t, **model_kwargs):
        un_kwargs = uncond(model_kwargs)
        B = x_t.shape[0]
        both = {}
        for key in set(model_kwargs) | set(un_kwargs):
            c, u = model_kwargs.get(key), un_kwargs.get(key)
            if isinstance(c, torch.Tensor) or isinstance(u, torch.Tensor):
                if c is None or u is None:
                    raise ValueError(f"conditioning {key!r} must be given for both branches")
                both[key] = torch.cat([c, u])
            else:
                both[key] = c if c is not None else u
        out = model(torch.cat([x_t, x_t]), torch.cat([t, t]), **both)
        out_c, out_u = out[:B], out[B:]
        mean_c, var_c = _split_mean_var(out_c, x_t)
        mean_u, _ = _split_mean_var(out_u, x_t)
        mean = mean_c + w * (mean_c - mean_u)          # (1 + w) c - w u
        if rescale > 0:
            dims = tuple(range(1, mean.ndim))
            std_c = mean_c.std(dim=dims, keepdim=True)
            std_g = mean.std(dim=dims, keepdim=True).clamp(min=1e-12)
            mean = rescale * (mean * std_c / std_g) + (1 - rescale) * mean
        return mean if var_c is None else torch.cat([mean, var_c], dim=1)

    guided.guidance = w
    guided.nfe_per_call = 2 * getattr(model, "nfe_per_call", 1)
    return guided


def classifier_log_prob_grad(classifier, x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad_x log p_phi(y | x_t, t), computed with gradients on even inside torch.no_grad()."""
    with torch.enable_grad():
        x = x_t.detach().requires_grad_(True)
        log_probs = torch.log_softmax(classifier(x, t), dim=-1)
        selected = log_probs[torch.arange(len(y), device=x.device), y.to(x.device)]
        (grad,) = torch.autograd.grad(selected.sum(), x)
    return grad.to(x_t.dtype)


def classifier_guidance(model, classifier, diffusion: GaussianDiffusion, scale: float, *, rule: str = "eps",
                        label_key: str = "y", model_takes_labels: bool = False):
    """Classifier guidance wrapper for a model function.

    ``classifier(x_t, t) -> logits`` is the noise-aware classifier (trained on the same
    forward process; it receives the training chain's timesteps). The requested class comes
    in ``model_kwargs[label_key]``; it is removed before calling an unconditional model
    unless ``model_takes_labels``.

    The classifier's forward and backward pass are not counted as network evaluations: the returned
    function keeps the wrapped model's ``nfe_per_call``.

    ``rule="eps"``: eps~ = eps - sqrt(1 - abar_t) s grad log p(y|x_t) -- for DDIM, DPM-Solver,
    Heun and any sampler. ``rule="mean_shift"``: the DDPM rule mu~ = mu + s Sigma_t grad log
    p(y|x_t); Sigma_t is the variance of the chain being sampled, so ``diffusion`` must be that
    chain (for a respaced DDPM, pass ``diffusion.respaced(steps)`` and sample it with steps=None).
    """
    if rule not in CLASSIFIER_RULES:
        raise ValueError(f"unknown classifier-guidance rule {rule!r}; allowed: {', '.join(CLASSIFIER_RULES)}")
    if not (math.isfinite(float(scale)) and scale >= 0):
        raise ValueError(f"classifier guidance scale must be a finite number >= 0, got {scale}")
    index_of = {int(m): i for i, m in enumerate(diffusion.timestep_map)}

    def guided(x_t, t, **model_kwargs):
        if label_key not in model_kwargs:
            raise ValueError(f"classifier guidance needs the requested class as model_kwargs[{label_key!r}]")
        y = model_kwargs[label_key]
        kwargs = model_kwargs if model_takes_labels else {k: v for k, v in model_kwargs.items() if k != label_key}
        out = model(x_t, t, **kwargs)
        if scale == 0:
            return out
        try:
            i = torch.tensor([index_of[int(s)] for s in t.tolist()], device=x_t.device)
        except KeyError:
            raise ValueError("the model was called at a timestep that is not on the guidance chain: "
                             "pass the chain being sampled as `diffusion`") from None
        grad = classifier_log_prob_grad(classifier, x_t, t, y)
        mean, var = _split_mean_var(out, x_t)
        if rule == "eps":
            # eps~ = eps - sqrt(1 - abar) s g  <=>  pred_x0 moves by (1 - abar) / sqrt(abar) s g
            delta_x0 = (diffusion.extract("sqrt_one_minus_alphas_cumprod", i, x_t)
                        * diffusion.extract("sqrt_recipm1_alphas_cumprod", i, x_t)) * scale * grad
        else:
            # mu = coef1 pred_x0 + coef2 x_t, so mu + s Sigma g  <=>  pred_x0 + s Sigma g / coef1
            log_var = diffusion.model_log_variance(var, x_t, i)
            delta_x0 = scale * torch.exp(log_var) * grad / diffusion.extract("posterior_mean_coef1", i, x_t)
        mean = mean + diffusion.output_shift_for_x0_shift(x_t, i, delta_x0)
        return mean if var is None else torch.cat([mean, var], dim=1)

    guided.nfe_per_call = getattr(model, "nfe_per_call", 1)
    return guided


def dynamic_threshold(percentile: float = 0.995) -> Callable[[torch.Tensor], torch.Tensor]:
    """Imagen's dynamic thresholding of pred_x0 (Saharia et al. 2022, section 2.3), as a ``denoised_fn``.

    s = the ``percentile`` of |pred_x0| per sample, at least 1; pred_x0 <- clip(pred_x0, -s, s) / s.
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"dynamic-threshold percentile must lie in (0, 1], got {percentile}")

    def fn(pred_x0: torch.Tensor) -> torch.Tensor:
        flat = pred_x0.reshape(pred_x0.shape[0], -1).abs()
        s = torch.quantile(flat.float(), percentile, dim=1).to(pred_x0.dtype).clamp(min=1.0)
        s = s.reshape(-1, *([1] * (pred_x0.ndim - 1)))
        return pred_x0.clamp(-s, s) / s

    return fn
