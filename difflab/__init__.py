"""difflab: diffusion generative models (DDPM, Improved DDPM, DDIM, guidance, latent diffusion)."""

__version__ = "0.1.0"

from .diffusion import DiffusionConfig, GaussianDiffusion  # noqa: E402
from .schedules import make_betas, space_timesteps  # noqa: E402

__all__ = ["DiffusionConfig", "GaussianDiffusion", "make_betas", "space_timesteps", "__version__"]
