"""Training: the one engine (``engine``) and its tasks (``diffusion``, ``classifier``, ``autoencoder``),
with EMA, metrics, multi-process data parallelism. Run folders are read with ``difflab.runs``."""

from ..runs import (CheckpointError, LoadedClassifier, LoadedRun, list_checkpoints, load_autoencoder,
                    load_classifier, load_run, read_latest, resolve_checkpoint)
from ..sampling import (GuidanceOptions, GuidedModel, build_guided_model, check_classifier_matches, class_grid_labels,
                        class_labels, sample_images)
from .autoencoder import AutoencoderTask, AutoencoderTrainResult, train_autoencoder
from .classifier import ClassifierTask, ClassifierTrainResult, resolve_classifier_config, train_classifier
from .diffusion import DiffusionTask, train
from .distributed import DistInfo
from .ema import EMA
from .engine import train_task
from .runtime import learning_rate, resolve_device
from .task import Callback, Env, Networks, NonFiniteLossError, RunState, Task, TrainResult, Update

__all__ = [
    "AutoencoderTask", "AutoencoderTrainResult", "Callback", "CheckpointError", "ClassifierTask",
    "ClassifierTrainResult", "DiffusionTask", "DistInfo", "EMA", "Env", "GuidanceOptions", "GuidedModel",
    "LoadedClassifier", "LoadedRun", "Networks", "NonFiniteLossError", "RunState", "Task", "TrainResult", "Update",
    "build_guided_model", "check_classifier_matches", "class_grid_labels", "class_labels", "learning_rate",
    "list_checkpoints", "load_autoencoder", "load_classifier", "load_run", "read_latest", "resolve_checkpoint",
    "resolve_classifier_config", "resolve_device", "sample_images", "train", "train_autoencoder", "train_classifier",
    "train_task",
]
