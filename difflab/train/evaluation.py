"""Evaluation during training: sample quality against held-out images, as an engine callback.

Every ``train.eval_every_minutes`` of training time (the clock checkpoints carry, so the schedule
survives resume) and once at the end, :class:`Evaluation` draws ``train.eval_n`` samples from the
EMA weights with the run's sample settings (a class-conditional run asks for the classes in the
training data's proportions: :func:`proportional_labels`), measures Frechet distance and precision/recall against
the held-out images (:mod:`difflab.eval.reference`) and the denoising loss on them, and logs

- a metrics row (``fd``, ``fd_floor``, ``fd_over_floor``, ``precision``, ``recall`` and their floors,
  ``heldout_loss``, ``eval_n``, ``eval_s``) through :meth:`RunState.log_metrics`: metrics.jsonl and
  TensorBoard; a resumed run drops rows after its checkpoint and evaluates again from there, so no row
  is lost or repeated;
- ``eval.png`` (the loss and, beside it, FD with its floor) through :meth:`RunState.log_figure`;
- one line with every figure beside its floor, the featurizer and the reference named.

The featurizer comes in the order of :func:`difflab.eval.plan_featurizer`: the FID Inception network
when its weights are present; else the dataset's evaluation classifier (cached, or trained once on
the training images: a folder's on its training side only); for unlabelled data without Inception
weights, a message says so and only the held-out denoising loss is logged.

Cost: an evaluation takes about ``eval_n x sample.steps`` network evaluations (twice that with
guidance); the next one waits until the evaluations so far are at most ``train.eval_max_share`` of
the training time (evaluation time is not training time: ``train.max_minutes`` is not used up).
Everything runs on rank 0 under ``torch.random.fork_rng``, so training's random stream is untouched.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import torch

from ..conditioning import conditioning_needed
from ..config import ConfigError, RunConfig
from ..data import fingerprint_files
from ..eval import (EvalClassifierConfig, HeldoutReference, classifier_featurizer, classifier_side,
                    default_classifier_epochs, default_classifier_path, evaluate_against, featurizer_key,
                    folder_featurizer, format_result, load_or_train_eval_classifier, open_featurizer,
                    plan_featurizer, prepare_reference)
from ..rng import randint, randn
from ..runs import CONFIG_NAME
from ..sampling import sample_images, with_default_guidance
from ..eval.frechet import compute_stats, frechet_distance
from .guidance_choice import CHOOSE_SAMPLES, REFERENCE_IMAGES, apply_guidance, search_guidance
from .heldout import HeldoutData
from .metrics import plot_eval
from .task import Callback, RunState, TrainResult


def proportional_labels(train_labels: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` labels in the training data's class proportions, as exactly as ``n`` allows (largest
    remainders), classes in turn. Not a random draw: in a classifier's feature space the class mix moves
    the mean, and a multinomial draw of 500 labels moved the Frechet distance of one MNIST model from 27.6
    (balanced) to 43.3."""
    counts = torch.bincount(train_labels.long())
    share = counts.double() * n / counts.sum()
    take = share.floor().long()
    rest = n - int(take.sum())
    if rest:
        take[torch.argsort(share - take, descending=True, stable=True)[:rest]] += 1
    order = torch.cat([torch.full((int(c),), k) for k, c in enumerate(take.tolist())])
    # interleave the classes (0, 1, 2, ..., 0, 1, ...) so that any prefix is mixed too
    rank = torch.cat([torch.arange(int(c), dtype=torch.double) / max(int(c), 1) for c in take.tolist()])
    return order[torch.argsort(rank, stable=True)]


class Evaluation(Callback):
    """See the module docstring. ``clock`` times the evaluations (for the cost bound)."""

    def __init__(self, config: RunConfig, data: HeldoutData, clock: Callable[[], float] = time.perf_counter):
        tc = config.train
        if conditioning_needed(config):
            raise ConfigError("train.eval_every_minutes: evaluation during training measures pixel-space runs "
                              "(unconditional or class labels), not latent, text or super-resolution runs")
        self.config, self.data, self.clock = config, data, clock
        self.period = 60.0 * tc.eval_every_minutes
        self.ref: HeldoutReference | None = None
        self.eval_seconds, self.last_step, self.next_due = 0.0, -1, math.inf
        self.train_stats = None          # the training images' features, for train.choose_guidance

    # ------------------------------------------------------------------ set-up (rank 0)
    def on_start(self, run: RunState) -> None:
        self.next_due = (math.floor(run.train_seconds / self.period) + 1) * self.period
        if not run.env.info.is_main:
            return
        log, tc = run.env.log, self.config.train
        t0 = self.clock()
        with torch.random.fork_rng(devices=[]):
            heldout = self.data.load_heldout(log, tc.eval_split)
            train = self.data.load_train(log)
            n_loss = min(tc.eval_n, len(heldout))
            idx = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(0))[:n_loss]
            self.loss_x, self.loss_y = heldout.get_batch(idx)
            self.train_labels = train.labels
            feat = self._featurizer(run, heldout, train)
            if feat is not None:
                n = min(tc.eval_n, len(train))
                pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
                self.ref = prepare_reference(feat, heldout.to_float(), train.get_batch(pick)[0], n,
                                             dataset=self.key)
                if tc.choose_guidance:
                    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:REFERENCE_IMAGES]
                    feats = feat.features(train.get_batch(pick)[0], batch_size=256)
                    self.train_stats = compute_stats(feats, feat.name, self.key, "train")
        floor = self.ref.floor if self.ref is not None else None
        log(f"evaluation every {tc.eval_every_minutes:g} min of training and at the end: "
            + (f"{self.ref.n} samples against {self.ref.stats.n} held-out images; floor ({self.ref.n} training "
               f"images) FD {floor['fd']:.4g}, precision {floor['precision']:.3f}, recall {floor['recall']:.3f}"
               if self.ref is not None else f"the denoising loss of {n_loss} held-out images")
            + f"; set up in {self.clock() - t0:.0f} s")

    def _featurizer(self, run: RunState, heldout, train):
        d, tc, log, device = self.data, self.config.train, run.env.log, run.env.device
        cache = tc.eval_cache_dir
        m = self.config.model
        if d.split is not None:
            files = d.split.train + d.split.heldout
            self.key = featurizer_key(fingerprint_files(d.folder, files), m.image_size, m.in_channels, d.split)
        else:
            self.key = d.data.dataset
        labelled = train.labels is not None and heldout.labels is not None
        plan = plan_featurizer(labelled=labelled, classifier_dir=default_classifier_path(self.key, cache),
                               cache_dir=cache)
        log(plan.message)
        if plan.kind == "none":
            return None
        if plan.kind == "inception" or (plan.kind == "classifier" and d.split is None):
            return open_featurizer(plan, self.key, device)
        if d.split is not None:     # cached or trained now, on the training side only; says its held-out accuracy
            ff = folder_featurizer(d.folder, d.split, image_size=m.image_size, channels=m.in_channels,
                                   cache_dir=cache, train_ds=train, heldout_ds=heldout, device=device)
            log(ff.describe())
            return ff.featurizer
        epochs = default_classifier_epochs(len(train))
        log(f"training the evaluation classifier on {train.name} {train.split} ({len(train)} images, {epochs} "
            f"epochs; once, cached in {plan.path})")
        load_or_train_eval_classifier(
            self.key, train.to_float(), train.labels, cache_dir=cache, device=device, epochs=epochs, seed=0,
            config=EvalClassifierConfig(in_channels=train.channels, image_size=classifier_side(m.image_size),
                                        num_classes=max(2, train.num_classes)))
        return classifier_featurizer(plan.path, self.key, device)

    # ------------------------------------------------------------------ schedule
    def on_step_end(self, run: RunState) -> None:
        if run.train_seconds < self.next_due:
            return
        self.evaluate(run)
        # the next one waits for the period, and until evaluations are at most eval_max_share of the training
        wait_until = self.eval_seconds / self.config.train.eval_max_share
        self.next_due = max((math.floor(run.train_seconds / self.period) + 1) * self.period, wait_until)

    def on_end(self, run: RunState, result: TrainResult) -> None:
        if result.interrupted:
            return
        if run.step != self.last_step:
            self.evaluate(run)
        if self.train_stats is not None and run.env.info.is_main:
            self.choose_guidance(run, result)

    # ------------------------------------------------------------------ train.choose_guidance
    def choose_guidance(self, run: RunState, result: TrainResult) -> float:
        """Search the guidance weight on the final EMA weights (``difflab.train.guidance_choice``), write it
        into the run's config and draw samples.png again with it."""
        t0, cfg = self.clock(), self.config
        model = run.eval_model
        model.eval()
        start = cfg.sample.guidance_scale
        n = min(self.ref.n, CHOOSE_SAMPLES)

        def measure(w: float) -> float:
            with torch.random.fork_rng(devices=[run.env.device] if run.env.device.type == "cuda" else []):
                x = self._samples(run, model, guidance=w, n=n)
            feats = self.ref.featurizer.features(x, batch_size=256)
            d = frechet_distance(compute_stats(feats, self.ref.featurizer.name, "samples", "generated"),
                                 self.train_stats)
            run.env.log(f"guidance w={w:g}: FD {d:.4g} to {self.train_stats.n} training images ({n} samples)")
            return d

        run.env.log(f"choosing the guidance weight (train.choose_guidance): {n} samples per weight, "
                    f"against {self.train_stats.n} training images (not the held-out ones)")
        best, tried = search_guidance(measure, start)
        took = self.clock() - t0
        new = apply_guidance(run.run_dir, cfg, result.checkpoint, best, tried,
                             {"n": n, "reference_images": self.train_stats.n, "step": run.step,
                              "featurizer": self.ref.featurizer.name, "seconds": round(took, 1)})
        run.env.log(f"guidance: w={best:g} chosen (was {start if start is not None else 'none'}; tried "
                    + ", ".join(f"{w:g}: {d:.4g}" for w, d in sorted(tried.items()))
                    + f"; {took:.0f} s); written to {run.run_dir / CONFIG_NAME}")
        self.config = run.task.config = new
        if result.samples is not None:
            result.samples = run.task.sample(model, result.samples)
            run.log_figure(run.task.sample_tag, result.samples)
        return best

    # ------------------------------------------------------------------ one evaluation
    def evaluate(self, run: RunState) -> dict | None:
        """Measure the EMA weights now, log the row, the line and the figure (rank 0)."""
        self.last_step = run.step
        if not run.env.info.is_main:
            return None
        t0 = self.clock()
        with torch.random.fork_rng(devices=[run.env.device] if run.env.device.type == "cuda" else []):
            model = run.eval_model
            was_training = model.training
            model.eval()
            try:
                row = {"heldout_loss": self._heldout_loss(run, model)}
                if self.ref is not None:
                    r = evaluate_against(self.ref, self._samples(run, model))
                    row.update(fd=r["fd"], fd_floor=r["floor_fd"], fd_over_floor=r["fd_over_floor"],
                               precision=r["precision"], precision_floor=r["floor_precision"],
                               recall=r["recall"], recall_floor=r["floor_recall"], eval_n=r["n"])
            finally:
                model.train(was_training)
        took = self.clock() - t0
        self.eval_seconds += took
        row["eval_s"] = took
        run.log_metrics(row)
        share = self.eval_seconds / max(run.train_seconds, 1e-9)
        what = format_result(r) if self.ref is not None else "no featurizer (see above)"
        run.env.log(f"eval at step {run.step} ({run.train_seconds / 60:.1f} min of training): {what} | held-out "
                    f"loss {row['heldout_loss']:.4g} | took {took:.0f} s (evaluations so far: {share:.0%} of the training "
                    f"time; the next waits until they are at most {self.config.train.eval_max_share:.0%}, "
                    f"train.eval_max_share)")
        path = plot_eval(run.run_dir)
        if path is not None:
            run.log_figure("eval", path)
        return row

    def _samples(self, run: RunState, model, guidance: float | None = None, n: int | None = None) -> torch.Tensor:
        """``n`` (default ``ref.n``) samples with the run's sample settings (``guidance``: this weight instead
        of the run's)."""
        cfg, n = self.config, n or self.ref.n
        if guidance is not None:
            cfg = dataclasses.replace(cfg, sample=dataclasses.replace(cfg.sample, guidance_scale=guidance))
        m = cfg.model
        labels = None
        if m.num_classes is not None and self.train_labels is not None:
            labels = proportional_labels(self.train_labels.clamp_max(m.num_classes - 1), n)
        out = sample_images(with_default_guidance(model, cfg), run.task.diffusion, cfg.sample,
                            shape=(m.in_channels, m.image_size, m.image_size), n=n, num_classes=m.num_classes,
                            labels=labels, device=run.env.device)
        return out.sample.float().cpu().clamp(-1, 1)

    @torch.no_grad()
    def _heldout_loss(self, run: RunState, model) -> float:
        """The training loss on the held-out images, with t and noise from a fixed generator."""
        diffusion, device = run.task.diffusion, run.env.device
        gen = torch.Generator().manual_seed(0)
        x_0 = self.loss_x
        t = randint(diffusion.num_timesteps, len(x_0), gen)
        noise = randn(x_0.shape, gen)
        total, bs = 0.0, self.config.sample.batch_size
        for i in range(0, len(x_0), bs):
            kwargs = {}
            if self.config.model.num_classes is not None:
                y = self.loss_y if self.loss_y is not None else None
                kwargs["y"] = (y[i:i + bs] if y is not None else
                               torch.full((len(x_0[i:i + bs]),), self.config.model.num_classes)).to(device)
            losses = diffusion.training_losses(model, x_0[i:i + bs].to(device), t[i:i + bs].to(device),
                                               noise=noise[i:i + bs].to(device), model_kwargs=kwargs)["loss"]
            total += float(losses.sum())
        return total / len(x_0)
