# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 6. DDIM: fewer steps, a deterministic sampler, and inversion
#
# DDPM needs all $T$ steps because its reverse process mirrors a Markov chain. Song, Meng & Ermon
# (DDIM, 2021) observed that $L_\text{simple}$ only ever uses the marginals $q(x_t\mid x_0)$,
# and that a whole family of non-Markovian forward processes shares those marginals. Each member
# has its own reverse update (DDIM eq. 12):
#
# $$x_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat x_0 + \sqrt{1-\bar\alpha_{t-1}-\sigma_t^2}\;\epsilon_\theta(x_t,t) + \sigma_t z,
# \qquad \hat x_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t,t)}{\sqrt{\bar\alpha_t}},$$
#
# with $\sigma_t = \eta\sqrt{(1-\bar\alpha_{t-1})/(1-\bar\alpha_t)}\sqrt{1-\bar\alpha_t/\bar\alpha_{t-1}}$ (eq. 16):
# $\eta = 1$ is DDPM, $\eta = 0$ is deterministic. Because the update only needs $\bar\alpha$ at
# two times, it can jump over steps. This notebook checks each of these claims.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from difflab import DiffusionConfig
from difflab.data import mixture_params, sample_toy
from difflab.eval import frechet_distance_gaussians
from difflab.exact import GaussianMixture
from difflab.samplers import ddim_invert, ddim_sample, ddim_step, ddpm_sample
from difflab.toy import train_toy

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "06"
N = 2000 if FAST else 10_000
STEPS = 1500 if FAST else 5000
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps").build()
terms = diffusion.terms
w, means, covs = mixture_params("gaussian_mixture")
mixture = GaussianMixture(means, covs, w)
exact = mixture.eps_model(terms.alphas_cumprod)       # the optimal eps-model for this data

# %% [markdown]
# ## Every eta has DDPM's marginals
#
# Start from $x_t \sim q(x_t\mid x_0)$ and take one DDIM step with the *true* $x_0$ and $\epsilon$
# (`ddim_step`). Whatever $\eta$, $x_{t-1}$ must have the marginal $q(x_{t-1}\mid x_0)$, mean
# $\sqrt{\bar\alpha_{t-1}}x_0$ and variance $1-\bar\alpha_{t-1}$ (DDIM Lemma 1). So the training
# objective, and a model trained by it, are the same for every member of the family: that is why
# a DDPM-trained network can be sampled with DDIM.

# %%
gen = torch.Generator().manual_seed(0)
n, i = 100_000 if not FAST else 40_000, 600
x_0 = torch.full((n, 1), 0.5, dtype=torch.float64)
eps = torch.randn(n, 1, generator=gen, dtype=torch.float64)
x_t = diffusion.q_sample(x_0, torch.full((n,), i), eps)
abar, abar_prev = torch.tensor(terms.alphas_cumprod[i]), torch.tensor(terms.alphas_cumprod_prev[i])
for eta in (0.0, 0.5, 1.0):
    x_prev = ddim_step(x_0, eps, abar, abar_prev, eta, torch.randn(n, 1, generator=gen, dtype=torch.float64))
    mean, var = float(x_prev.mean()), float(x_prev.var())
    print(f"eta={eta}: mean {mean:.4f} vs {float(abar_prev.sqrt() * 0.5):.4f}, variance {var:.4f} vs {float(1 - abar_prev):.4f}")
    # within 5 standard errors of the exact moments
    assert abs(mean - float(abar_prev.sqrt() * 0.5)) < 5 * (var / n) ** 0.5
    assert abs(var / float(1 - abar_prev) - 1) < 5 * (2 / n) ** 0.5

# %% [markdown]
# ## eta = 1 on every step is DDPM
#
# With $\eta = 1$, $\sigma_t^2 = \tilde\beta_t$ and eq. 12 is exactly DDPM's ancestral step with the
# posterior variance. Given the same noise (both samplers draw it from the generator in the
# same order), the two samplers must return the same points.

# %%
x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ddim_full = ddim_sample(exact, diffusion, x_T, steps=1000, eta=1.0, generator=torch.Generator().manual_seed(2)).sample
ddpm_full = ddpm_sample(exact, diffusion, x_T, variance="fixed_small", generator=torch.Generator().manual_seed(2)).sample
print(f"max |DDIM(eta=1) - DDPM| = {float((ddim_full - ddpm_full).abs().max()):.1e}")
assert torch.allclose(ddim_full, ddpm_full, atol=1e-8)

# %% [markdown]
# ## Fewer steps, and the effect of eta
#
# With the exact denoiser any error in the samples comes from the sampler alone. Two measures
# of how far the samples are from the data: the Frechet distance between the Gaussians fitted
# to samples and to the data (FID's statistic, on raw 2-D points), and the mean negative
# log-density of the samples under the true data density beside that of real data (lower than
# the data's means the samples crowd into the modes, higher means they spill out).

# %%
def frechet(s):
    s = s.double()
    return frechet_distance_gaussians(s.mean(0).numpy(), torch.cov(s.T).numpy(),
                                      mixture.mean().numpy(), mixture.covariance().numpy())


data_nll = float(-mixture.log_prob(mixture.sample(N, gen)[0]).mean())
step_counts = [5, 10, 20, 50, 100]
fd, nll = {}, {}
for eta in (0.0, 0.5, 1.0):
    runs = [ddim_sample(exact, diffusion, x_T, steps=s, eta=eta, generator=torch.Generator().manual_seed(3)).sample
            for s in step_counts]
    fd[eta] = [frechet(s) for s in runs]
    nll[eta] = [float(-mixture.log_prob(s).mean()) for s in runs]
    print(f"eta={eta}: FD " + "  ".join(f"{s}:{v:.4f}" for s, v in zip(step_counts, fd[eta])))

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for eta in fd:
    axes[0].loglog(step_counts, fd[eta], marker="o", label=f"eta = {eta}")
    axes[1].semilogx(step_counts, nll[eta], marker="o", label=f"eta = {eta}")
axes[1].axhline(data_nll, color="k", ls="--", lw=1, label="real data")
axes[0].set_ylabel("Frechet distance to the data")
axes[1].set_ylabel("mean -log q(sample)")
for ax in axes:
    ax.set_xlabel("sampling steps")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
fig.tight_layout()
plt.show()

# %%
assert fd[0.0][1] < fd[1.0][1]                               # at 10 steps the deterministic sampler is better
assert fd[0.0][0] > fd[0.0][1] > fd[0.0][3]                   # more steps, smaller error
assert all(fd[eta][-1] < 0.01 for eta in fd)                   # at 100 steps every eta is close

# %% [markdown]
# ## A network trained as a DDPM, sampled with DDIM
#
# Now a real model: an MLP trained with $L_\text{simple}$ exactly as in notebook 4. Nothing about
# DDIM enters training. It is sampled with 1,000 DDPM steps and with 50 and 20 DDIM steps.

# %%
torch.manual_seed(0)
net = train_toy("gaussian_mixture", steps=STEPS, batch_size=256,
                diffusion=DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps")).model
x_T32 = x_T.float()
samples = {
    "DDPM, 1000 steps": ddpm_sample(net, diffusion, x_T32, generator=torch.Generator().manual_seed(4)).sample,
    "DDIM eta=0, 50 steps": ddim_sample(net, diffusion, x_T32, steps=50).sample,
    "DDIM eta=0, 20 steps": ddim_sample(net, diffusion, x_T32, steps=20).sample,
}
data = sample_toy("gaussian_mixture", N, torch.Generator().manual_seed(5))
fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), sharex=True, sharey=True)
for ax, (name, s) in zip(axes, samples.items()):
    ax.scatter(data[:, 0], data[:, 1], s=1, color="0.8")
    ax.scatter(s[:, 0], s[:, 1], s=1, color="C3")
    ax.set_title(f"{name}: FD {frechet(s):.3f}")
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()
assert frechet(samples["DDIM eta=0, 50 steps"]) < 0.05 and frechet(samples["DDPM, 1000 steps"]) < 0.05

# %% [markdown]
# ## Inversion and reconstruction
#
# With $\eta = 0$ the sampler is a deterministic map from $x_T$ to $x_0$: the discretisation of an
# ODE. Running the same update the other way (`ddim_invert`) maps data to the noise that
# generates it; sampling from that noise gives the data back, up to discretisation error. The
# inverted points of real data must look like standard normal noise.

# %%
x_data = mixture.sample(N, torch.Generator().manual_seed(6))[0]
for name, model, x in (("exact", exact, x_data), ("trained", net, x_data.float())):
    z = ddim_invert(model, diffusion, x, steps=100).sample
    back = ddim_sample(model, diffusion, z, steps=100, eta=0.0).sample
    rmse = float((back.double() - x.double()).pow(2).mean().sqrt())
    cov = torch.cov(z.double().T)
    print(f"{name:8s} inverted: mean {np.round(z.double().mean(0).numpy(), 3)}, cov {np.round(cov.numpy().ravel(), 3)};"
          f" reconstruction RMSE {rmse:.4f}")
    assert rmse < 0.05
    assert z.double().mean(0).abs().max() < 0.1 and torch.allclose(cov, torch.eye(2, dtype=torch.float64), atol=0.15)

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
for ax, pts, title in zip(axes, (x_data, z, back), ("data x_0", "ddim_invert: x_T", "ddim_sample(x_T): x_0 again")):
    ax.scatter(pts[:, 0], pts[:, 1], s=1, c=x_data[:, 0], cmap="viridis")
    ax.set_title(title)
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()

# %% [markdown]
# The colours (each point coloured by its starting $x$ coordinate) show that the map is smooth:
# neighbours in the data stay neighbours in the noise. On images the command line does the same:
# `difflab sample --checkpoint runs/NAME --sampler ddim --steps 50 --eta 0`.
