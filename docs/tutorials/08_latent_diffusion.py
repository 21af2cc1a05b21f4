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
# # 8. Latent diffusion and text conditioning
#
# Rombach et al. (2022) moved diffusion out of pixel space: a first-stage **autoencoder**
# compresses images to a small latent $z$, the diffusion model learns the distribution of $z$,
# and the decoder turns sampled latents back into images. The network is smaller and faster,
# and conditioning on text enters through **cross-attention**: the U-Net's features attend to
# the token vectors of a caption.
#
# This notebook builds all of it at toy size on the 8x8 digits: a KL autoencoder, the scale
# factor, a latent U-Net with cross-attention to a small text encoder trained with it, and
# classifier-free guidance on captions. A classifier trained on real digits checks that the
# prompts are obeyed.

# %%
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from IPython.display import Image, display

from difflab import DiffusionConfig
from difflab.data import load_dataset, uint8_to_float
from difflab.eval import EvalClassifierConfig, evaluate_accuracy, predict, train_eval_classifier
from difflab.guidance import classifier_free
from difflab.latent import NUMBER_WORDS, TRAIN_TEMPLATES, LatentDiffusion, make_mnist_captions
from difflab.nn import AutoencoderConfig, AutoencoderKL, TextEncoder, UNet, UNetConfig
from difflab.nn.autoencoder import autoencoder_loss
from difflab.nn.text import empty_prompt_uncond
from difflab.rng import randint
from difflab.samplers import ddim_sample
from difflab import viz

FAST = os.environ.get("DIFFLAB_TUTORIAL_FAST") == "1"
OUT = Path(os.environ.get("DIFFLAB_TUTORIAL_OUT", Path(tempfile.gettempdir()) / "difflab-tutorials")) / "08"
AE_STEPS = 200 if FAST else 1500
LDM_STEPS = 500 if FAST else 4000
BATCH = 64
torch.manual_seed(0)
gen = torch.Generator().manual_seed(0)

train = load_dataset("digits", split="train")
test = load_dataset("digits", split="test")
x_train, y_train = uint8_to_float(train.images), train.labels      # [N, 1, 8, 8] in [-1, 1]
x_test, y_test = uint8_to_float(test.images), test.labels

# %% [markdown]
# ## The first stage: a KL autoencoder
#
# The encoder outputs a diagonal Gaussian $q(z\mid x)$ over a $2\times 4\times 4$ latent (32 numbers
# for a 64-pixel image); the decoder maps $z$ back. The loss is the $L_1$ reconstruction error plus
# a very small KL to $\mathcal N(0, I)$ that keeps the latent space from drifting (latent diffusion's
# "KL-reg" first stage; the adversarial term is off here, `disc_weight=0`).

# %%
ae = AutoencoderKL(AutoencoderConfig(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2),
                                     latent_channels=2, mid_attention=False, norm_groups=8, disc_weight=0.0,
                                     disc_layers=1))
opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
for step in range(AE_STEPS):
    x = x_train[randint(len(x_train), BATCH, gen)]
    loss = autoencoder_loss(ae, x, step=step, generator=gen)["loss"].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
ae.eval()

with torch.no_grad():
    x_rec = ae.decode(ae.encode(x_test).mode()).clamp(-1, 1)
mse = float(((x_rec - x_test) ** 2).mean())
psnr = 10 * np.log10(4 / mse)                     # peak-to-peak range 2 in [-1, 1]
psnr_mean_image = 10 * np.log10(4 / float(((x_train.mean(0) - x_test) ** 2).mean()))
print(f"held-out reconstruction PSNR {psnr:.1f} dB (the mean image scores {psnr_mean_image:.1f} dB)")
viz.save_grid(torch.cat([x_test[:16], x_rec[:16]]), OUT / "reconstructions.png", nrow=16)
display(Image(filename=OUT / "reconstructions.png"))
assert psnr > psnr_mean_image + 5

# %% [markdown]
# Top row: test digits; bottom row: their reconstructions.
#
# ## The scale factor
#
# The diffusion's forward process assumes data of roughly unit variance (notebook 1), but nothing
# fixes the scale of $z$. Latent diffusion multiplies the latents by $1/\mathrm{std}(z)$ measured on
# training data. difflab computes it from data (`LatentDiffusion.from_data`) and keeps it with the
# autoencoder, never as a constant copied into code.

# %%
latent = LatentDiffusion.from_data(ae, x_train, generator=gen)
z = ae.encode(x_train).sample(gen).detach()
z_0 = latent.encode_to_latent(x_train, gen)
print(f"scale factor {float(latent.scale_factor):.3f}: std(z) = {float(z.std()):.3f}, std(z_0) = {float(z_0.std()):.3f}")
assert abs(float(z_0.std()) - 1) < 0.05

# %% [markdown]
# ## A latent U-Net with cross-attention to text
#
# Captions come from the labels ("a handwritten three", "the digit 3", ... `make_mnist_captions`).
# A one-layer transformer (`TextEncoder`, vocabulary built from the captions) turns a caption into
# a sequence of token vectors, the *context*; inside the U-Net, `SpatialTransformer` blocks let
# every latent position attend to it (queries from the image, keys and values from the text).
# The text encoder trains with the U-Net. One caption in ten is replaced by the empty prompt so
# the same network also learns the unconditional model that classifier-free guidance needs.

# %%
diffusion = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v").build()
all_captions = [tpl.format(word=w, digit=d) for tpl in TRAIN_TEMPLATES for d, w in enumerate(NUMBER_WORDS)]
text_encoder = TextEncoder.from_captions(all_captions, dim=32, depth=1, heads=2, max_length=8)
unet = UNet(UNetConfig(image_size=4, in_channels=2, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                       attention_resolutions=(), mid_attention=False, num_head_channels=16, context_dim=32,
                       cross_attention_resolutions=(4,), norm_groups=8))
print(f"U-Net {sum(p.numel() for p in unet.parameters()) / 1e3:.0f}k parameters, "
      f"text encoder {sum(p.numel() for p in text_encoder.parameters()) / 1e3:.0f}k")

params = list(unet.parameters()) + list(text_encoder.parameters())
opt = torch.optim.AdamW(params, lr=2e-3)
sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, LDM_STEPS, eta_min=1e-4)
losses = []
for step in range(LDM_STEPS):
    idx = randint(len(x_train), BATCH, gen)
    captions = make_mnist_captions(y_train[idx], gen)
    captions = ["" if drop else c for c, drop in zip(captions, (torch.rand(BATCH, generator=gen) < 0.1).tolist())]
    context, mask = text_encoder.encode(captions)             # gradients flow into the encoder
    t = randint(diffusion.num_timesteps, BATCH, gen)
    loss = latent.training_losses(unet, diffusion, x_train[idx], t, generator=gen,
                                  model_kwargs={"context": context, "context_mask": mask})["loss"].mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    losses.append(loss.item())
    if (step + 1) % 100 == 0:
        print(f"step {step + 1}: loss {np.mean(losses[-200:]):.4f}")
unet.eval()
text_encoder.eval()
viz.plot_losses(list(range(1, LDM_STEPS + 1)), losses, OUT / "latent_loss.png", smooth=0.98)
display(Image(filename=OUT / "latent_loss.png"))

# %% [markdown]
# ## Prompts to images
#
# Sampling runs DDIM in latent space from $z_T \sim \mathcal N(0, I)$ of shape $2\times4\times4$, with
# the guided model function, and decodes at the end (`LatentDiffusion.sample`). The empty prompt
# is the unconditional branch (`empty_prompt_uncond`).

# %%
@torch.no_grad()
def generate(prompts, w, seed=1):
    context, mask = text_encoder.encode(prompts)
    model = classifier_free(unet, w, uncond=empty_prompt_uncond(text_encoder)) if w > 0 else unet
    x_T = latent.noise(len(prompts), torch.Generator().manual_seed(seed))
    return latent.sample(ddim_sample, model, diffusion, x_T, steps=25,
                         model_kwargs={"context": context, "context_mask": mask}).images


# a prompt grid: one row per digit, with wordings the model was trained on
per_row = 8
prompts = [f"a handwritten {w}" for w in NUMBER_WORDS for _ in range(per_row)]
grid = generate(prompts, w=2.0)
viz.save_grid(grid, OUT / "prompts.png", nrow=per_row)
display(Image(filename=OUT / "prompts.png"))

# %% [markdown]
# ## Does the model follow the prompt?
#
# A small CNN trained on real digits (`difflab.eval.train_eval_classifier`) reads each generated
# image; the share it reads as the prompted digit is the prompt accuracy. Two sets of prompts:
# one with a wording used in training ("the digit 3"), one with wordings never seen in training
# (`HELD_OUT_TEMPLATES`: "this is a three", "someone scribbled a three", ...; words outside the
# vocabulary become `<unk>`, so only the number word or numeral carries the meaning).
# Guidance should help most where the model is least sure, as in notebook 7.

# %%
classifier = train_eval_classifier(x_train, y_train, config=EvalClassifierConfig(image_size=8), epochs=15)
print(f"classifier accuracy on real test digits: {evaluate_accuracy(classifier, x_test, y_test):.3f}")
n_per = 20 if FAST else 100
targets = torch.arange(10).repeat_interleave(n_per)
prompt_sets = {
    "trained wording": [f"the digit {int(d)}" for d in targets],
    "held-out wordings": make_mnist_captions(targets, torch.Generator().manual_seed(3), held_out=True),
}
accuracy = {}
for name, prompts in prompt_sets.items():
    for w in (0.0, 1.0, 3.0):
        images = generate(prompts, w=w, seed=2)
        accuracy[name, w] = float((predict(classifier, images) == targets).float().mean())
    print(f"{name:18s} " + "   ".join(f"w = {w}: {accuracy[name, w]:.0%}" for w in (0.0, 1.0, 3.0))
          + f"   (e.g. {prompts[n_per * 3]!r})")

# %%
for name in prompt_sets:
    assert accuracy[name, 0.0] > 0.3, name                       # the prompt is used (chance: 10%)
    assert accuracy[name, 3.0] >= accuracy[name, 0.0], name      # and guidance does not lose it
assert accuracy["trained wording", 3.0] > 0.8

# %% [markdown]
# ## At full size
#
# The command line trains the same pieces on MNIST: `difflab train-autoencoder --preset mnist-f4`
# for the first stage, then `difflab train --preset mnist-latent-text --autoencoder runs/ae-mnist-f4`
# and `difflab sample --checkpoint runs/lt --prompt "a handwritten three" --guidance-scale 2`.
# The README shows the prompt grid of such a run; `cond.text=pretrained` swaps the trainable
# encoder for a frozen all-MiniLM-L6-v2.
