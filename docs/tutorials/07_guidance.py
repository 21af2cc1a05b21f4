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
# # 7. Guidance: classifier and classifier-free
#
# A class-conditional model samples $p(x \mid y)$. *Guidance* samples a sharpened
# $p(x \mid y)\,p(y \mid x)^{s-1}$ instead: more typical of the class, less varied. Two ways:
#
# - **Classifier guidance** (Dhariwal & Nichol 2021) adds the gradient of a classifier trained
#   on *noisy* inputs $x_t$ to an unconditional model:
#   $\tilde\epsilon = \epsilon_\theta(x_t) - \sqrt{1-\bar\alpha_t}\, s\,\nabla_{x_t}\log p_\phi(y\mid x_t)$ (ADM eq. 14).
#   Since $\nabla\log p(x_t\mid y) = \nabla\log p(x_t) + \nabla\log p(y\mid x_t)$, scale $s=1$ is
#   exactly the conditional model.
# - **Classifier-free guidance** (Ho & Salimans 2022) trains one network both with labels and
#   with a null label (the label is dropped with some probability) and extrapolates:
#   $\tilde\epsilon = (1+w)\,\epsilon_\theta(x_t, y) - w\,\epsilon_\theta(x_t, \varnothing)$ (CFG eq. 6).
#
# In difflab both are *wrappers* (`difflab.guidance`): they take a model function and return a
# guided model function that any sampler accepts. On a mixture of three overlapping Gaussians,
# with the component as the class, everything can be measured exactly.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from difflab import DiffusionConfig
from difflab.exact import GaussianMixture
from difflab.guidance import classifier_free, classifier_guidance, null_label
from difflab.nn.mlp import ToyMLP, ToyMLPConfig
from difflab.samplers import ddim_sample
from difflab.toy import train_denoiser, train_noisy_classifier

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "07"
STEPS = 1500 if FAST else 5000
PER_CLASS = 300 if FAST else 1000
K = 3
diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps").build()
abar = torch.as_tensor(diffusion.terms.alphas_cumprod)
# three overlapping classes: even the best classifier of clean points is right only ~85% of the time
mixture = GaussianMixture(means=[[-1.0, -0.5], [1.0, -0.5], [0.0, 1.0]], covs=[0.45, 0.45, 0.45])

# %% [markdown]
# ## The exact models
#
# For a mixture, the unconditional and the class-conditional optimal denoisers and the noisy
# class posterior $p(y\mid x_t)$ are all closed-form. The exact models are eps-models; the
# exact classifier's log-probabilities serve as logits. First, the identity behind classifier
# guidance: unconditional model + exact noisy classifier at scale 1 = the conditional model.

# %%
eps_diffusion = diffusion      # the exact models predict eps, like the networks below
exact_cond = mixture.eps_model(diffusion.terms.alphas_cumprod, conditional=True)   # y = K: unconditional
exact_uncond = lambda x, t: exact_cond(x, t, y=torch.full((len(x),), K))
exact_classifier = lambda x, t: mixture.class_log_prob(x, abar[t])

gen = torch.Generator().manual_seed(0)
x_t = torch.randn(500, 2, generator=gen, dtype=torch.float64) * 1.5
t = torch.randint(0, 1000, (500,), generator=gen)
y = torch.randint(0, K, (500,), generator=gen)
guided = classifier_guidance(exact_uncond, exact_classifier, eps_diffusion, 1.0)
gap = float((guided(x_t, t, y=y) - exact_cond(x_t, t, y=y)).abs().max())
print(f"max |classifier-guided(s=1) - conditional| = {gap:.1e}")
assert gap < 1e-8


# %% [markdown]
# ## Accuracy against diversity
#
# Two numbers for a set of samples drawn for requested classes: **accuracy**, the share of
# samples whose most likely component (exact posterior) is the one requested, and **diversity**,
# the spread of the samples that landed in the requested component $k$ as a share of that
# component's spread, $\mathrm{tr}\,\mathrm{Cov}(\text{samples}_k) / \mathrm{tr}\,\Sigma_k$,
# averaged over classes.
# Each point below is one guidance strength; all samplers use DDIM with 50 steps from the
# same noise.

# %%
labels = torch.arange(K).repeat_interleave(PER_CLASS)
x_T = torch.randn(len(labels), 2, generator=torch.Generator().manual_seed(1))


def measure(samples):
    s = samples.double()
    owner = mixture.class_log_prob(s, torch.ones(len(s), dtype=torch.float64)).argmax(1)
    accuracy = float((owner == labels).double().mean())
    hit = owner == labels
    diversity = float(np.mean([torch.cov(s[hit & (labels == k)].T).trace() / mixture.covs[k].trace()
                               for k in range(K)]))
    return accuracy, diversity


SAMPLES = {}      # (curve, strength) -> samples, for the pictures below


def sweep(name, make_model, strengths, chain, x_start):
    points = []
    for g in strengths:
        SAMPLES[name, g] = ddim_sample(make_model(g), chain, x_start, steps=50, model_kwargs={"y": labels}).sample
        points.append(measure(SAMPLES[name, g]))
    return strengths, points


cfg_weights = [0.0, 0.5, 1.0, 2.0, 4.0]
curves = {"exact, classifier-free": sweep("exact, classifier-free",
                                          lambda w: classifier_free(exact_cond, w, uncond=null_label(K)),
                                          cfg_weights, eps_diffusion, x_T.double())}
print(curves["exact, classifier-free"][1])

# %% [markdown]
# ## Trained models
#
# One class-conditional MLP, trained with its label replaced by the null class 10% of the time
# (`class_dropout`), serves as both branches of classifier-free guidance. A second MLP with
# three outputs is the noisy classifier, trained on $x_t$ at every noise level
# (`train_noisy_classifier`); it guides the first network's *unconditional* branch.

# %%
def draw(n, gen):
    x, y = mixture.sample(n, gen)
    return x.float(), y


torch.manual_seed(0)
net = ToyMLP(ToyMLPConfig(num_classes=K))
train_denoiser(net, diffusion, draw, steps=STEPS, batch_size=256, class_dropout=0.1)
classifier = ToyMLP(ToyMLPConfig(out_dim=K))
clf_losses = train_noisy_classifier(classifier, diffusion, draw, steps=STEPS // 2, batch_size=256)
net_uncond = lambda x, t: net(x, t, y=torch.full((len(x),), net.null_class))

# how well does the noisy classifier do, against the exact posterior, at each noise level?
x_0, y_0 = draw(3000, torch.Generator().manual_seed(2))
for i in (0, 300, 600, 900):
    tt = torch.full((len(x_0),), i)
    xt = diffusion.q_sample(x_0, tt, torch.randn(x_0.shape, generator=gen))
    with torch.no_grad():
        acc = float((classifier(xt, tt).argmax(1) == y_0).float().mean())
    best = float((exact_classifier(xt.double(), tt).argmax(1) == y_0).double().mean())
    print(f"t={i + 1:4d}  noisy classifier accuracy {acc:.3f}   exact posterior {best:.3f}")
    assert acc > best - 0.05

scales = [0.0, 0.5, 1.0, 2.0, 4.0]
curves["trained, classifier-free"] = sweep(
    "trained, classifier-free", lambda w: classifier_free(net, w, uncond=null_label(net.null_class)),
    cfg_weights, diffusion, x_T)
# the eps rule needs the chain being sampled to look up alpha-bar: the 50-step respaced chain
chain50 = diffusion.respaced(50)
curves["trained, classifier guidance"] = sweep(
    "trained, classifier guidance", lambda s: classifier_guidance(net_uncond, classifier, chain50, s),
    scales, chain50, x_T)

# %%
fig, ax = plt.subplots(figsize=(6.5, 4.5))
for name, (strengths, points) in curves.items():
    acc, div = zip(*points)
    ax.plot(div, acc, marker="o", label=name)
    for g, a, d in zip(strengths, acc, div):
        ax.annotate(f"{g:g}", (d, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
ax.set_xlabel("diversity (share of the class's spread kept)")
ax.set_ylabel("accuracy (share in the requested component)")
ax.legend()
ax.grid(True, alpha=0.3)
plt.show()
for name, (strengths, points) in curves.items():
    print(name, [(g, round(a, 3), round(d, 3)) for g, (a, d) in zip(strengths, points)])

# %% [markdown]
# Guidance trades diversity for accuracy: the stronger it is, the more samples land in the
# requested component and the more they crowd together. Classifier guidance from an
# unconditional model starts from chance (1/3) at scale 0 and reaches the same corner.
#
# The samples themselves show a second effect. Guidance samples $p(x\mid y)\,p(y\mid x)^{w}$,
# which pushes samples away from the other classes; the exact model stays compact, but the
# trained one, pushed into regions where it saw no data, stretches its clusters at large
# strength (the diversity measure even rises again). This is why useful guidance weights are
# moderate, and why difflab measures them (the repository's `benchmarks/RESULTS.md` has the
# same trade-off on MNIST).

# %%
shown = [("exact, classifier-free", 0.0), ("trained, classifier-free", 0.0), ("trained, classifier guidance", 0.0),
         ("exact, classifier-free", 4.0), ("trained, classifier-free", 4.0), ("trained, classifier guidance", 4.0)]
fig, axes = plt.subplots(2, 3, figsize=(11, 7.5), sharex=True, sharey=True)
for ax, key in zip(axes.ravel(), shown):
    s = SAMPLES[key]
    ax.scatter(s[:, 0], s[:, 1], s=1, c=labels, cmap="brg")
    ax.set_title(f"{key[0]}, strength {key[1]:g}", fontsize=9)
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
    ax.set_aspect("equal")
fig.tight_layout()
plt.show()

# %%
for name, (strengths, points) in curves.items():
    acc, div = zip(*points)
    assert acc[2] >= acc[0] and acc[3] > 0.97, name                 # stronger guidance, more accurate
exact_acc, exact_div = zip(*curves["exact, classifier-free"][1])
assert np.all(np.diff(exact_div) < 0) and exact_div[-1] < 0.6 * exact_div[0]    # ... and less diverse
assert exact_acc[0] < 0.9                                                    # the classes overlap
cfg_acc, cfg_div = zip(*curves["trained, classifier-free"][1])
assert cfg_div[2] < 0.8 * cfg_div[0]
cg_acc, cg_div = zip(*curves["trained, classifier guidance"][1])
assert abs(cg_acc[0] - 1 / 3) < 0.1 and cg_div[-1] < cg_div[2]              # chance without guidance

# %% [markdown]
# Guidance strength has two conventions: difflab's `classifier_free(..., w)` uses the CFG paper's
# $w$ ($w=0$ is the conditional model); `convention="scale"` takes $s = 1 + w$ as in GLIDE and
# Stable Diffusion. On images: `difflab sample --checkpoint runs/NAME --guidance-scale 2` for a
# class-conditional run, `--classifier runs/CLF --classifier-scale 2 --class-label 3` with a
# classifier trained by `difflab train-classifier`.
