"""Neural networks (torch modules only; no diffusion math)."""

from .autoencoder import AE_PRESETS, AutoencoderConfig, AutoencoderKL, get_ae_preset
from .attention import MultiHeadAttention, SelfAttention2d, SpatialTransformer
from .classifier import ClassifierConfig, EncoderClassifier
from .embeddings import ClassEmbedding, TimestepEmbedding, timestep_embedding
from .io import load_pretrained, save_pretrained
from .presets import CLASSIFIER_PRESETS, UNET_PRESETS, get_classifier_preset, get_unet_preset
from .text import ClassEncoder, TextEncoder
from .unet import UNet, UNetConfig

__all__ = [
    "AE_PRESETS", "AutoencoderConfig", "AutoencoderKL", "get_ae_preset", "ClassEncoder", "TextEncoder",
    "CLASSIFIER_PRESETS", "ClassEmbedding", "ClassifierConfig", "EncoderClassifier", "MultiHeadAttention",
    "SelfAttention2d", "SpatialTransformer", "TimestepEmbedding", "UNET_PRESETS", "UNet", "UNetConfig",
    "get_classifier_preset", "get_unet_preset", "load_pretrained", "save_pretrained", "timestep_embedding",
]
