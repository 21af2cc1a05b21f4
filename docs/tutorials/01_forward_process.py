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
# # 1. The forward process
#
# A diffusion model starts from a fixed *forward process* that destroys data by adding a little
# Gaussian noise at each of $T$ steps (DDPM eq. 2):
#
# $$q(x_t \mid x_{t-1}) = \mathcal N\big(\sqrt{1-\beta_t}\,x_{t-1},\ \beta_t I\big).$$
#
# Because a Gaussian step of a Gaussian is Gaussian, the $t$ steps collapse into one closed form
# (DDPM eq. 4), with $\alpha_t = 1-\beta_t$ and $\bar\alpha_t = \prod_{s \le t}\alpha_s$:
#
# $$q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t) I\big),
# \qquad x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon .$$
#
# This notebook checks that claim by simulation, compares the linear schedule of DDPM with the
# cosine schedule of Improved DDPM, and shows the process on real images.
#
# In difflab the forward process lives in `GaussianDiffusion` (`difflab/diffusion.py`): `q_step`
# is eq. 2, `q_sample` is eq. 4. Arrays are indexed from 0, so index `t` is the paper's step `t + 1`.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display

from difflab import DiffusionConfig
from difflab.data import load_dataset, uint8_to_float
from difflab.exact import GaussianMixture
from difflab.schedules import make_betas, schedule_terms
from difflab import viz

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"   # smaller sizes, for the test suite
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "01"
N = 10_000 if FAST else 50_000
print("figures go to", OUT)

# %% [markdown]
# ## The chain against the closed form
#
# Take one-dimensional data from a mixture of three Gaussians. Run the chain step by step with
# `q_step`, and separately jump straight to step $t$ with `q_sample`. If eq. 4 is right the two
# sets of samples have the same distribution at every $t$, and that distribution is the data
# distribution blurred and shrunk: each component $\mathcal N(\mu_k, s_k^2)$ becomes
# $\mathcal N(\sqrt{\bar\alpha_t}\mu_k,\ \bar\alpha_t s_k^2 + 1 - \bar\alpha_t)$, whose density
# `GaussianMixture.log_prob(x, a, s2)` gives exactly.

# %%
data = GaussianMixture(means=[[-1.5], [0.4], [1.8]], covs=[0.05, 0.02, 0.1], weights=[0.3, 0.3, 0.4])
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000).build()
gen = torch.Generator().manual_seed(0)
x_0, _ = data.sample(N, gen)                     # float64 [N, 1]

checkpoints = [0, 49, 199, 499, 999]
chain, x = {}, x_0
for i in range(diffusion.num_timesteps):
    x = diffusion.q_step(x, torch.full((N,), i), torch.randn(x.shape, generator=gen, dtype=x.dtype))
    if i in checkpoints:
        chain[i] = x
closed = {i: diffusion.q_sample(x_0, torch.full((N,), i), torch.randn(x_0.shape, generator=gen, dtype=x_0.dtype))
          for i in checkpoints}

# %%
fig, axes = plt.subplots(1, len(checkpoints), figsize=(15, 3), sharey=False)
grid = torch.linspace(-3.5, 3.5, 400, dtype=torch.float64)[:, None]
for ax, i in zip(axes, checkpoints):
    abar = diffusion.terms.alphas_cumprod[i]
    ax.hist(chain[i][:, 0].numpy(), bins=80, density=True, alpha=0.5, label="chain (eq. 2, step by step)")
    ax.hist(closed[i][:, 0].numpy(), bins=80, density=True, alpha=0.5, label="closed form (eq. 4)")
    ax.plot(grid[:, 0], data.log_prob(grid, a=abar**0.5, s2=1 - abar).exp(), "k", lw=1, label="exact density")
    ax.set_title(f"t = {i + 1}, abar = {abar:.3f}")
axes[0].legend(fontsize=7)
fig.tight_layout()
plt.show()


# %% [markdown]
# The check, as numbers: the largest gap between the two empirical CDFs (the two-sample
# Kolmogorov-Smirnov statistic) must stay below its 0.1% critical value $1.95\sqrt{2/N}$, and the
# mean and variance must be the exact ones, $\sqrt{\bar\alpha_t}\,\mathbb E[x_0]$ and
# $\bar\alpha_t \mathrm{Var}[x_0] + 1 - \bar\alpha_t$.

# %%
def ks_statistic(a, b):
    both = torch.cat([a, b]).sort().values
    cdf_a = torch.searchsorted(a.sort().values, both, right=True) / len(a)
    cdf_b = torch.searchsorted(b.sort().values, both, right=True) / len(b)
    return float((cdf_a - cdf_b).abs().max())


critical = 1.95 * (2 / N) ** 0.5
m0, v0 = float(data.mean()), float(data.covariance())
for i in checkpoints:
    abar = diffusion.terms.alphas_cumprod[i]
    ks = ks_statistic(chain[i][:, 0], closed[i][:, 0])
    mean, var = abar**0.5 * m0, abar * v0 + 1 - abar
    print(f"t={i + 1:4d}  KS={ks:.4f} (critical {critical:.4f})  mean {float(chain[i].mean()):+.3f} vs {mean:+.3f}"
          f"  var {float(chain[i].var()):.3f} vs {var:.3f}")
    assert ks < critical, (i, ks)
    for sample in (chain[i], closed[i]):
        assert abs(float(sample.mean()) - mean) < 5 * (var / N) ** 0.5
        assert abs(float(sample.var()) / var - 1) < 5 * (2 / N) ** 0.5

# %% [markdown]
# At the last step $\bar\alpha_T \approx 4\cdot 10^{-5}$: whatever the data were, $x_T$ is a
# standard normal to within sampling error. That is why sampling can start from pure noise.

# %% [markdown]
# ## Linear against cosine schedules
#
# DDPM uses $\beta_t$ rising linearly from $10^{-4}$ to $0.02$. Improved DDPM (eq. 17) instead
# defines $\bar\alpha_t = f(t)/f(0)$ with $f(t) = \cos^2\!\big(\tfrac{t/T+s}{1+s}\tfrac{\pi}{2}\big)$,
# because the linear schedule destroys information too fast: a large part of its chain is
# almost pure noise and contributes little to learning. The signal-to-noise ratio
# $\mathrm{SNR}(t) = \bar\alpha_t/(1-\bar\alpha_t)$ shows it.

# %%
T = 1000
terms = {name: schedule_terms(make_betas(name, T)) for name in ("linear", "cosine")}
snr = {name: DiffusionConfig(schedule=name, num_timesteps=T).build().snr(torch.arange(T)).numpy()
       for name in terms}
steps = np.arange(1, T + 1)
viz.plot_curve(steps, {name: tm.alphas_cumprod for name, tm in terms.items()}, OUT / "alphas_cumprod.png",
               xlabel="t", ylabel="alpha-bar_t", marker="")
viz.plot_curve(steps, {name: np.log(s) for name, s in snr.items()}, OUT / "log_snr.png",
               xlabel="t", ylabel="log SNR(t)", marker="")
display(Image(filename=OUT / "alphas_cumprod.png"), Image(filename=OUT / "log_snr.png"))

# %%
for name in terms:
    abar = terms[name].alphas_cumprod
    print(f"{name:7s} abar at T/2 = {abar[T // 2 - 1]:.3f}, at T = {abar[-1]:.1e}; "
          f"steps with SNR < 0.01: {np.mean(snr[name] < 0.01):.0%}")
    assert np.all(np.diff(abar) < 0) and abar[-1] < 1e-4     # monotone, ends in (almost) pure noise
# the cosine schedule keeps more of the signal in the middle of the chain ...
assert terms["cosine"].alphas_cumprod[T // 2 - 1] > 5 * terms["linear"].alphas_cumprod[T // 2 - 1]
# ... and wastes far fewer steps on (almost) pure noise
assert np.mean(snr["linear"] < 0.01) > 0.3 and np.mean(snr["cosine"] < 0.01) < 0.1

# %% [markdown]
# ## The forward process on images
#
# The embedded 8x8 digits of scikit-learn need no download (`load_dataset("mnist", root=...)`
# gives MNIST from its four `.gz` files the same way). Images are scaled to $[-1, 1]$, the range
# the forward process assumes: a pixel's variance then stays at about 1 all along the chain.
# The command line draws the same grid: `difflab show-forward --dataset digits --out forward.png`.
# The columns are labelled with the array index (the paper's step is one more).

# %%
digits = load_dataset("digits", split="test")
x_img = uint8_to_float(digits.images[:6])                # [6, 1, 8, 8] in [-1, 1]
ts = [0, 50, 100, 200, 400, 600, 999]
for name in ("linear", "cosine"):
    d = DiffusionConfig(schedule=name, num_timesteps=T).build()
    g = torch.Generator().manual_seed(1)
    cols = [d.q_sample(x_img, torch.full((6,), t), torch.randn(x_img.shape, generator=g)) for t in ts]
    viz.forward_process_grid(cols, ts, OUT / f"forward_{name}.png", title=f"{name} schedule")
    display(Image(filename=OUT / f"forward_{name}.png"))

# %% [markdown]
# With the same noise, the cosine schedule keeps the digit visible for longer. At the last step
# nothing of the image is left: over the whole test split, $x_T$ has mean 0, variance 1 and no
# correlation with $x_0$.

# %%
x_all = uint8_to_float(digits.images).reshape(len(digits), -1)
x_T = diffusion.q_sample(x_all, torch.full((len(digits),), T - 1), torch.randn(x_all.shape, generator=gen))
corr = np.corrcoef(x_all.flatten().numpy(), x_T.flatten().numpy())[0, 1]
print(f"x_T: mean {float(x_T.mean()):+.3f}, variance {float(x_T.var()):.3f}, correlation with x_0 {corr:+.4f}")
assert abs(float(x_T.mean())) < 0.02 and abs(float(x_T.var()) - 1) < 0.03 and abs(corr) < 0.02
