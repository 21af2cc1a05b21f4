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
# # 2. The reverse conditional, and why the model predicts noise
#
# Generating data means running the chain backwards: drawing $x_{t-1}$ given $x_t$. The true
# reverse step $q(x_{t-1} \mid x_t)$ depends on the whole data distribution, but once $x_0$ is
# also given it is a Gaussian in closed form (DDPM eqs. 6-7):
#
# $$q(x_{t-1} \mid x_t, x_0) = \mathcal N(\tilde\mu_t, \tilde\beta_t I),\quad
# \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}\,x_0
#             + \frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}\,x_t,\quad
# \tilde\beta_t = \frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\,\beta_t .$$
#
# The model's reverse step $p_\theta(x_{t-1} \mid x_t)$ is this Gaussian with $x_0$ replaced by a
# prediction. This notebook checks the posterior by simulation, writes its mean three ways
# (from $x_0$, from the noise $\epsilon$, from $v$) and checks that they agree, then looks at
# what each prediction target asks of a network, using the exact denoiser of a Gaussian mixture.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from difflab import DiffusionConfig
from difflab.data import mixture_params
from difflab.exact import GaussianMixture

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "02"
N = 20_000 if FAST else 200_000
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000).build()
terms = diffusion.terms       # every schedule quantity, float64 (difflab/schedules.py)

# %% [markdown]
# ## The posterior, checked by simulation
#
# Fix $x_0$. Draw $x_{t-1} \sim q(x_{t-1} \mid x_0)$ and then one forward step
# $x_t \sim q(x_t \mid x_{t-1})$. The pair $(x_{t-1}, x_t)$ is jointly Gaussian, so regressing
# $x_{t-1}$ on $x_t$ recovers the posterior: the slope must be the coefficient of $x_t$ in
# $\tilde\mu_t$, the intercept the $x_0$ term, and the residual variance $\tilde\beta_t$.

# %%
gen = torch.Generator().manual_seed(0)
x0_value = 0.7
rows = []
for i in (1, 10, 100, 500, 900):                   # array index i = paper step t = i + 1
    x_0 = torch.full((N, 1), x0_value, dtype=torch.float64)
    x_prev = diffusion.q_sample(x_0, torch.full((N,), i - 1), torch.randn(N, 1, generator=gen, dtype=torch.float64))
    x_t = diffusion.q_step(x_prev, torch.full((N,), i), torch.randn(N, 1, generator=gen, dtype=torch.float64))
    slope, intercept = np.polyfit(x_t[:, 0].numpy(), x_prev[:, 0].numpy(), 1)
    resid = x_prev[:, 0].numpy() - (slope * x_t[:, 0].numpy() + intercept)
    mean, var, _ = diffusion.q_posterior_mean_variance(x_0[:1], torch.zeros(1, 1, dtype=torch.float64),
                                                       torch.tensor([i]))
    rows.append((i, slope, terms.posterior_mean_coef2[i], intercept, float(mean), resid.var(), float(var)))
    print(f"t={i + 1:4d}  slope {slope:.4f} vs {terms.posterior_mean_coef2[i]:.4f}   "
          f"intercept {intercept:.4f} vs {float(mean):.4f}   residual var {resid.var():.3e} vs {float(var):.3e}")
    assert abs(slope - terms.posterior_mean_coef2[i]) < 0.02
    assert abs(intercept - float(mean)) < 0.02
    assert abs(resid.var() / float(var) - 1) < 0.05

# %% [markdown]
# ## The posterior mean, three ways
#
# $x_t = \sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ ties $x_0$ and $\epsilon$ together, so
# a network may predict either one, or the velocity $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# (Salimans & Ho 2022). Substituting $x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$
# into $\tilde\mu_t$ gives DDPM eq. 11, the mean in terms of the noise:
#
# $$\tilde\mu_t = \frac{1}{\sqrt{\alpha_t}}\Big(x_t - \frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\,\epsilon\Big).$$
#
# difflab converts every target in one place (`GaussianDiffusion.to_x0_eps`): a model of any
# target that outputs the *true* value must give the true posterior mean. Below, three
# "perfect models" output the true $x_0$, $\epsilon$ and $v$; `p_mean_variance` must return
# $\tilde\mu_t(x_0, x_t)$ for each, and eq. 11 written out by hand must agree too.

# %%
B, D = 8, 5
x_0 = torch.rand(B, D, generator=gen, dtype=torch.float64) * 2 - 1
eps = torch.randn(B, D, generator=gen, dtype=torch.float64)
t = torch.tensor([0, 1, 5, 50, 250, 500, 800, 999])
x_t = diffusion.q_sample(x_0, t, eps)
v = diffusion.v_from_x0_eps(x_0, t, eps)

mu_true, _, _ = diffusion.q_posterior_mean_variance(x_0, x_t, t)
perfect = {"x0": x_0, "eps": eps, "v": v}
for target, value in perfect.items():
    model = lambda x, s, value=value: value          # a "network" that knows the answer
    out = diffusion.with_options(prediction=target).p_mean_variance(model, x_t, t)
    err = float((out["mean"] - mu_true).abs().max())
    print(f"{target:3s}-prediction: max |mu - mu_tilde| = {err:.1e}")
    assert err < 1e-10
    assert torch.allclose(out["pred_x0"], x_0, atol=1e-9) and torch.allclose(out["eps"], eps, atol=1e-9)

# DDPM eq. 11 by hand, from the schedule arrays
col = lambda a: torch.as_tensor(a[t.numpy()])[:, None]
mu_eq11 = (x_t - col(terms.betas) / col(terms.sqrt_one_minus_alphas_cumprod) * eps) / col(terms.alphas) ** 0.5
print(f"eq. 11 by hand: max |mu - mu_tilde| = {float((mu_eq11 - mu_true).abs().max()):.1e}")
assert torch.allclose(mu_eq11, mu_true, atol=1e-10)

# %% [markdown]
# ## What each target asks of the network
#
# The three targets are equivalent when they are exact, but not when they are learned. For data
# from a Gaussian mixture the best possible prediction of each target given $x_t$ is known in
# closed form (`difflab.exact`): the optimal noise prediction is
# $\epsilon^*(x_t) = -\sqrt{1-\bar\alpha_t}\,\nabla\log q_t(x_t)$, the score of the noisy
# marginal up to scale (which is why predicting noise is denoising score matching, and why
# `score_from_eps` is one line). The error that even this perfect predictor must make shows
# where each target is hard: the noise is unpredictable at small $t$ (there is little of it in
# $x_t$) and trivial at large $t$ (where $x_t$ is almost all noise); $x_0$ is the opposite, and
# $v$ behaves like $\epsilon$ at small $t$ and like $x_0$ at large $t$.

# %%
w, means, covs = mixture_params("gaussian_mixture")
mixture = GaussianMixture(means, covs, w)
eps_star = mixture.eps_model(terms.alphas_cumprod)            # model(x_t, t) -> optimal eps
n = 4_000 if FAST else 20_000
x_0, _ = mixture.sample(n, gen)
ts = np.unique(np.geomspace(1, 1000, 25).astype(int)) - 1
mse = {"eps": [], "x0": [], "v": []}
for i in ts:
    tt = torch.full((n,), int(i))
    noise = torch.randn(x_0.shape, generator=gen, dtype=torch.float64)
    x_t = diffusion.q_sample(x_0, tt, noise)
    e = eps_star(x_t, tt)
    p_x0 = diffusion.pred_x0_from_eps(x_t, tt, e)
    # the score identity: eps* is -sqrt(1 - abar) times the exact score
    score = mixture.score(x_t, torch.full((n,), terms.alphas_cumprod[i], dtype=torch.float64))
    assert torch.allclose(diffusion.score_from_eps(x_t, tt, e), score, atol=1e-8)
    mse["eps"].append(float(((e - noise) ** 2).mean()))
    mse["x0"].append(float(((p_x0 - x_0) ** 2).mean()))
    mse["v"].append(float(((diffusion.v_from_x0_eps(p_x0, tt, e) - diffusion.v_from_x0_eps(x_0, tt, noise)) ** 2).mean()))

# %% [markdown]
# A network never reaches the optimum: it leaves an excess error $\delta$ in its target, and what
# matters for sampling is what that does to the predicted $x_0$. Holding $x_t$ fixed,
# an $\epsilon$-error $\delta$ moves $\hat x_0$ by $\delta\sqrt{(1-\bar\alpha_t)/\bar\alpha_t}$, which explodes
# near $t = T$; a $v$-error moves it by $\delta\sqrt{1-\bar\alpha_t} \le \delta$. The library knows these
# factors (`output_shift_for_x0_shift`, used by guidance); this is why difflab's toy and latent
# recipes predict $v$ on the cosine schedule, where $\bar\alpha_T \approx 10^{-9}$.

# %%
x_one = torch.ones(len(ts), 1, dtype=torch.float64)
amplification = {p: (1 / diffusion.with_options(prediction=p).output_shift_for_x0_shift(
    x_one, torch.as_tensor(ts), x_one).abs())[:, 0].numpy() for p in ("eps", "x0", "v")}

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name in mse:
    axes[0].loglog(ts + 1, mse[name], marker="o", ms=3, label=f"{name} target")
    axes[1].loglog(ts + 1, amplification[name], marker="o", ms=3, label=f"{name} target")
axes[0].set_ylabel("error of the optimal prediction (MSE per dim)")
axes[1].set_ylabel("|change in pred_x0| per unit error in the target")
for ax in axes:
    ax.set_xlabel("t")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
OUT.mkdir(parents=True, exist_ok=True)
fig.tight_layout()
fig.savefig(OUT / "targets.png", dpi=120)
plt.show()

# %%
first, last = 0, -1
print({k: (f"{v[first]:.4f}", f"{v[last]:.4f}") for k, v in mse.items()})
print({k: (f"{v[first]:.3g}", f"{v[last]:.3g}") for k, v in amplification.items()})
assert mse["eps"][first] > 0.5 and mse["eps"][last] < 1e-3          # eps: hard at t = 1, trivial at t = T
assert mse["x0"][first] < 1e-3 and mse["x0"][last] > 0.5            # x_0: the opposite
assert abs(mse["v"][first] / mse["eps"][first] - 1) < 0.01 and abs(mse["v"][last] / mse["x0"][last] - 1) < 0.01
assert amplification["eps"][last] > 100 and np.all(amplification["v"] <= 1) and np.all(amplification["x0"] == 1)
