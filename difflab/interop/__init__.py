"""Interoperability with other libraries' model folders (diffusers).

Nothing here imports diffusers at import time; the entry points that need it import it
themselves and say how to install it (``pip install 'difflab[diffusers]'``).
"""

from .diffusers import (DiffusersFolder, ExportResult, ImportResult, export_diffusers, find_diffusers_folder,
                        import_diffusers, require_diffusers)
from .scheduler import diffusion_from_scheduler, match_schedule, scheduler_config
from .unet2d import (InteropError, rename_legacy_attention, state_dict_to_difflab, state_dict_to_unet2d,
                     unet2d_config, unet_config_from_unet2d)

__all__ = [
    "DiffusersFolder", "ExportResult", "ImportResult", "InteropError", "diffusion_from_scheduler",
    "export_diffusers", "find_diffusers_folder", "import_diffusers", "match_schedule", "rename_legacy_attention",
    "require_diffusers", "scheduler_config", "state_dict_to_difflab", "state_dict_to_unet2d", "unet2d_config",
    "unet_config_from_unet2d",
]
