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
# # 4. Training and sampling on 2-D data (DDPM Algorithms 1 and 2)
#
# Everything in a diffusion model can be seen at once in two dimensions. We train a small MLP
# on samples from a mixture of three Gaussians with DDPM's two algorithms:
#
# | Algorithm 1 (training) | Algorithm 2 (sampling) |
# |---|---|
# | $x_0 \sim q(x_0)$, $t \sim U\{1..T\}$, $\epsilon \sim \mathcal N(0, I)$ | $x_T \sim \mathcal N(0, I)$ |
# | gradient step on $\lVert\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\epsilon, t)\rVert^2$ | for $t = T..1$: $x_{t-1} = \frac{1}{\sqrt{\alpha_t}}\big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta(x_t,t)\big) + \sigma_t z$ |
#
# For a Gaussian mixture the *optimal* denoiser is known in closed form (`difflab.exact`), so we
# can compare the trained network with the best possible one, and check that sampling with the
# exact denoiser reproduces the data: a test of the sampler that involves no training at all.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display

from difflab import DiffusionConfig
from difflab.data import mixture_params, sample_toy
from difflab.exact import GaussianMixture
from difflab.nn.mlp import ToyMLP, ToyMLPConfig
from difflab.rng import randint, randn
from difflab.samplers import ddpm_sample
from difflab import viz

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "04"
STEPS = 1500 if FAST else 5000
N = 1000 if FAST else 4000
torch.manual_seed(0)

# %% [markdown]
# ## Algorithm 1, written out
#
# `diffusion.training_losses` draws $x_t$ with the closed form and returns the per-example loss;
# the loop around it is all of Algorithm 1. (`difflab.toy.train_denoiser` is this loop, with a
# learning-rate decay, for any network and data.)

# %%
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps").build()
net = ToyMLP(ToyMLPConfig(dim=2, hidden=128, depth=3))
opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
gen = torch.Generator().manual_seed(0)
losses = []
for step in range(STEPS):
    x_0 = sample_toy("gaussian_mixture", 256, gen)             # x_0 ~ q(x_0)
    t = randint(diffusion.num_timesteps, 256, gen)              # t ~ Uniform
    eps = randn(x_0.shape, gen)                                 # eps ~ N(0, I)
    loss = diffusion.training_losses(net, x_0, t, noise=eps)["loss"].mean()   # ||eps - eps_theta(x_t, t)||^2
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(loss.item())
net.eval()
viz.plot_losses(list(range(1, STEPS + 1)), losses, OUT / "loss.png", smooth=0.98)
display(Image(filename=OUT / "loss.png"))

# %% [markdown]
# ## Algorithm 2, with the trained and with the exact denoiser
#
# `ddpm_sample` runs the 1,000 reverse steps ($\sigma_t^2 = \tilde\beta_t$ here). Both models start
# from the same noise $x_T$ and, since the sampler draws its noise from the generator, get the
# same $z$ at every step too. The snapshots show the cloud of samples contracting onto the
# three components in the last few hundred steps; a single path is a random walk with a drift
# (`return_trajectory=True` keeps every $x_t$).

# %%
w, means, covs = mixture_params("gaussian_mixture")
mixture = GaussianMixture(means, covs, w)
exact = mixture.eps_model(diffusion.terms.alphas_cumprod)     # eps*(x_t, t), float64
x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(1))

learned_run = ddpm_sample(net, diffusion, x_T, generator=torch.Generator().manual_seed(2), return_trajectory=True)
exact_run = ddpm_sample(exact, diffusion, x_T.double(), generator=torch.Generator().manual_seed(2),
                        return_trajectory=True)
data = sample_toy("gaussian_mixture", N, torch.Generator().manual_seed(3))

fig, axes = plt.subplots(2, 6, figsize=(15, 5.4), sharex=True, sharey=True)
for row, (name, run) in enumerate((("learned", learned_run), ("exact", exact_run))):
    for ax, k in zip(axes[row], (0, 500, 800, 950, 990, 1000)):    # k reverse steps done: x at t = T - k
        ax.scatter(data[:, 0], data[:, 1], s=1, color="0.8")
        ax.scatter(run.trajectory[k][:, 0], run.trajectory[k][:, 1], s=1, color="C3" if row == 0 else "C0")
        ax.set_title(f"{name}: t = {1000 - k}", fontsize=9)
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
fig.tight_layout()
fig.savefig(OUT / "ddpm_snapshots.png", dpi=70)     # the README's figure
plt.show()

viz.plot_trajectories_2d(learned_run.trajectory, OUT / "trajectories.png", max_paths=25, data=data,
                         title="25 DDPM sampling paths (learned denoiser)")
display(Image(filename=OUT / "trajectories.png"))

# %% [markdown]
# How close are the samples to the data? Each sample can be assigned to the component most
# likely to have produced it (`class_log_prob`, the exact posterior); each component should
# hold a third of the samples, and the mean and covariance should be the mixture's.

# %%
def summary(samples):
    s = samples.double()
    owner = mixture.class_log_prob(s, torch.ones(len(s), dtype=torch.float64)).argmax(1)
    shares = torch.bincount(owner, minlength=3).double() / len(s)
    return shares, s.mean(0), torch.cov(s.T)


for name, run in (("data", None), ("exact", exact_run), ("learned", learned_run)):
    shares, mean, cov = summary(data if run is None else run.sample)
    print(f"{name:8s} shares {np.round(shares.numpy(), 3)}  mean {np.round(mean.numpy(), 3)}  "
          f"cov {np.round(cov.numpy().ravel(), 3)}")
shares, mean, cov = summary(exact_run.sample)
assert torch.all((shares - 1 / 3).abs() < 0.05) and torch.allclose(mean, mixture.mean(), atol=0.08)
assert torch.allclose(cov, mixture.covariance(), atol=0.1)
shares, mean, cov = summary(learned_run.sample)
assert torch.all((shares - 1 / 3).abs() < 0.08) and torch.allclose(mean, mixture.mean(), atol=0.15)
assert torch.allclose(cov, mixture.covariance(), atol=0.2)

# %% [markdown]
# ## The learned denoiser against the exact one
#
# $\epsilon^*(x_t, t)$ points from $x_t$ back along the noise that most likely produced it; the
# sampler's step moves against it. The arrows show $-\epsilon$ on a grid at three noise levels: at
# large $t$ they point to the centre of the data as a whole, at small $t$ to the nearest
# component. Under the plot: the lowest loss any network can reach at each $t$ (that of
# $\epsilon^*$; notebook 2 explains why it is near 1 at small $t$ and near 0 at large $t$), the
# trained network's loss, and their difference $\mathbb E\lVert\epsilon_\theta - \epsilon^*\rVert^2$.

# %%
g = torch.linspace(-2.5, 2.5, 15)
grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
for ax, i in zip(axes, (50, 300, 800)):
    tt = torch.full((len(grid),), i)
    with torch.no_grad():
        e_net = net(grid, tt)
    e_star = exact(grid.double(), tt).float()
    ax.scatter(data[:, 0], data[:, 1], s=2, color="0.75")
    ax.quiver(grid[:, 0], grid[:, 1], -e_star[:, 0], -e_star[:, 1], color="k", alpha=0.6, label="exact")
    ax.quiver(grid[:, 0], grid[:, 1], -e_net[:, 0], -e_net[:, 1], color="C3", alpha=0.6, label="learned")
    ax.set_title(f"-eps at t = {i + 1}")
    ax.set_aspect("equal")
axes[0].legend(loc="lower left")
fig.tight_layout()
plt.show()

# %%
x_0 = torch.as_tensor(data)
for i in (10, 100, 300, 600, 900):
    tt = torch.full((len(x_0),), i)
    eps = torch.randn(x_0.shape, generator=gen)
    x_t = diffusion.q_sample(x_0, tt, eps)
    with torch.no_grad():
        e_net = net(x_t, tt)
    e_star = exact(x_t.double(), tt).float()
    floor, loss, gap = (float(((a - b) ** 2).mean()) for a, b in ((eps, e_star), (eps, e_net), (e_net, e_star)))
    print(f"t={i + 1:4d}  loss of eps*: {floor:.4f}   of the network: {loss:.4f}   E||eps_theta - eps*||^2 = {gap:.4f}")
    assert gap < 0.05      # within a few percent of the target's unit variance everywhere

# %% [markdown]
# ## Try it
#
# - `difflab toy --dataset swiss_roll --out runs/toy` trains and samples another toy set
#   (`two_moons`, `eight_gaussians`, `checkerboard`, `gaussian_mixture`) and writes these plots.
# - Fewer sampling steps: `ddpm_sample(net, diffusion, x_T, steps=100)` respaces the chain
#   (Improved DDPM section 4); notebook 6 does the same with DDIM.
