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
# # 3. The variational bound, bits/dim, and L_simple
#
# A diffusion model is a latent-variable model: $p_\theta(x_0) = \int p(x_T)\prod_t p_\theta(x_{t-1}\mid x_t)\,dx_{1:T}$.
# Its negative log-likelihood is bounded by a sum of one term per step (DDPM eq. 5):
#
# $$-\log p_\theta(x_0) \le
# \underbrace{D_{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T}
# + \sum_{t>1}\underbrace{D_{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}}
# \;\underbrace{-\,\log p_\theta(x_0\mid x_1)}_{L_0}.$$
#
# $L_T$ has no parameters; each $L_{t-1}$ is a KL between two Gaussians (closed form); $L_0$ is
# a discretized Gaussian decoder over the 256 pixel levels (DDPM eq. 13). Divided by
# $D\ln 2$ the bound is in **bits per dimension**.
#
# Below we train a small model on the 8x8 digits, evaluate all $T$ terms, and show that
# DDPM's simple loss is this bound with the per-step weights removed.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from difflab import DiffusionConfig
from difflab.data import load_dataset, uint8_to_float
from difflab.losses import LOG2
from difflab.nn.mlp import ToyMLP, ToyMLPConfig
from difflab.schedules import eps_bound_weights
from difflab.toy import train_denoiser
from difflab import viz

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "03"
STEPS = 600 if FAST else 4000
N_EVAL = 64 if FAST else 360
torch.manual_seed(0)

# %% [markdown]
# ## A small model on the digits
#
# The 1,797 8x8 digits (scaled to $[-1,1]$ and flattened to 64 numbers) are small enough for an
# MLP denoiser to learn in seconds. `train_denoiser` is DDPM Algorithm 1: draw $x_0$, a uniform
# $t$ and $\epsilon$, and take a gradient step on the diffusion's loss, here
# $L_\text{simple} = \|\epsilon - \epsilon_\theta(x_t, t)\|^2$ with the reverse variance fixed to
# $\tilde\beta_t$.

# %%
train_x = uint8_to_float(load_dataset("digits", split="train").images).reshape(-1, 64)
test_x = uint8_to_float(load_dataset("digits", split="test").images).reshape(-1, 64)[:N_EVAL]
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps", variance="fixed_small").build()
T = diffusion.num_timesteps


def draw(n, gen):
    return train_x[torch.randint(len(train_x), (n,), generator=gen)], None


net = ToyMLP(ToyMLPConfig(dim=64, hidden=256, depth=3))
losses = train_denoiser(net, diffusion, draw, steps=STEPS, batch_size=128, lr=2e-3)
viz.plot_losses(list(range(1, STEPS + 1)), losses, OUT / "loss.png", title="L_simple while training")
print(f"L_simple: first 50 steps {np.mean(losses[:50]):.3f}, last 50 {np.mean(losses[-50:]):.3f}")
assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:50])

# %% [markdown]
# ## Every term of the bound
#
# `bits_per_dim` walks all $T$ steps for a batch of held-out digits: at each $t$ it draws
# $x_t \sim q(x_t\mid x_0)$ and evaluates $L_{t-1}$ (or $L_0$ at the first step) with one network
# call. It returns the terms, $L_T$ (`prior_bpd`), their sum, and the noise-prediction error at
# every step.

# %%
result = diffusion.bits_per_dim(net, test_x, generator=torch.Generator().manual_seed(1))
untrained = diffusion.bits_per_dim(ToyMLP(ToyMLPConfig(dim=64, hidden=256, depth=3)), test_x,
                                   generator=torch.Generator().manual_seed(1))
vb = result["vb"].mean(0).numpy()           # [T]: L_0 at index 0, L_{t-1} at index t-1 ... (bits/dim)
L_T, L_0 = float(result["prior_bpd"].mean()), vb[0]
total = float(result["total_bpd"].mean())
print(f"L_T = {L_T:.2e}   sum of L_(t-1) = {vb[1:].sum():.3f}   L_0 = {L_0:.3f}   total = {total:.3f} bits/dim")
print(f"the same bound for the untrained network: {float(untrained['total_bpd'].mean()):.3f} bits/dim")

fig, ax = plt.subplots(figsize=(7, 4))
ax.semilogy(np.arange(2, T + 1), vb[1:], label="L_(t-1): trained")
ax.semilogy(np.arange(2, T + 1), untrained["vb"].mean(0).numpy()[1:], alpha=0.6, label="L_(t-1): untrained")
ax.scatter([1], [L_0], color="C3", zorder=3, label="L_0 (decoder)")
ax.set_xlabel("t")
ax.set_ylabel("bits/dim")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
plt.show()

# %%
# the bound is exactly the sum of its terms, per example
assert torch.allclose(result["total_bpd"], result["prior_bpd"] + result["vb"].sum(1))
assert L_T < 1e-3                                            # the linear schedule ends in (almost) pure noise
assert total < 0.7 * float(untrained["total_bpd"].mean())   # training lowered the bound
assert vb[1:10].mean() > 10 * vb[-100:].mean()              # the first steps carry most of the bound

# %% [markdown]
# ## L_simple is the bound without its weights
#
# With $\sigma_t^2 = \tilde\beta_t$ both Gaussians in $L_{t-1}$ have the same variance, so the KL is
# just the squared distance of the means, and with the mean written in terms of the noise
# (DDPM eq. 11) it becomes (DDPM eq. 12)
#
# $$L_{t-1} = \lambda_t\,\mathbb E\,\|\epsilon - \epsilon_\theta(x_t, t)\|^2,\qquad
# \lambda_t = \frac{\beta_t^2}{2\sigma_t^2\alpha_t(1-\bar\alpha_t)} .$$
#
# `schedules.eps_bound_weights` computes $\lambda_t$. The bound's terms measured above must be
# exactly $\lambda_t$ times the measured noise error (over $\ln 2$, for bits). $L_\text{simple}$
# sets every $\lambda_t = 1$: compared with the bound it down-weights the first steps, where
# $\lambda_t$ is large, and the DDPM paper found that this gives better samples.

# %%
lam = eps_bound_weights(diffusion.terms, "fixed_small")
per_step = result["vb"][:, 1:].numpy()
predicted = lam[1:] * result["mse"][:, 1:].numpy() / LOG2
rel = np.abs(per_step - predicted).max() / per_step.max()
print(f"max |L_(t-1) - lambda_t * mse_t / ln 2| relative to the largest term: {rel:.1e}")
assert rel < 1e-4

fig, ax = plt.subplots(figsize=(7, 4))
ax.loglog(np.arange(2, T + 1), lam[1:] / lam[1:].mean(), label="the bound: lambda_t / mean(lambda)")
ax.axhline(1.0, color="k", ls="--", lw=1, label="L_simple: 1")
ax.set_xlabel("t")
ax.set_ylabel("relative weight of ||eps - eps_theta||^2")
ax.legend()
ax.grid(True, which="both", alpha=0.3)
plt.show()
print(f"lambda at t = 2: {lam[1]:.3f}, at t = 100: {lam[99]:.2e}, at t = T: {lam[-1]:.2e}")
assert lam[1] > 50 * lam[-1] and np.all(np.diff(lam[1:100]) < 0)   # the bound weights the first steps most

# %% [markdown]
# ## bits/dim from the command line
#
# For an image model trained with the CLI, the same bound over a test split is
# `difflab eval nll --checkpoint runs/NAME --dataset digits -n 100 --out runs/NAME/nll`, which also
# writes this per-term plot. Notebook 5 trains the variance as well and looks at what that does
# to these terms.
