"""Samplers: one file per family, one signature for all (see ``base``)."""

from .base import CountingModel, SampleOutput
from .ddim import ddim_invert, ddim_sample, ddim_step
from .ddpm import ddpm_sample, ddpm_step
from .dpm_solver import dpm_solver_pp_sample, dpm_solver_pp_sde_sample
from .heun import heun_sample
from .sigmas import SIGMA_SCHEDULES, karras_sigmas, karras_timesteps

SAMPLERS = {
    "ddpm": ddpm_sample,
    "ddim": ddim_sample,
    "dpm++2m": dpm_solver_pp_sample,
    "dpm++2m-sde": dpm_solver_pp_sde_sample,
    "heun": heun_sample,
}


def get_sampler(name: str):
    """The sampler function registered under ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {', '.join(sorted(SAMPLERS))}")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "get_sampler", "SampleOutput", "CountingModel", "ddpm_sample", "ddpm_step",
           "ddim_sample", "ddim_step", "ddim_invert", "dpm_solver_pp_sample", "dpm_solver_pp_sde_sample",
           "heun_sample", "SIGMA_SCHEDULES", "karras_sigmas", "karras_timesteps"]
