"""Training: the loop, EMA, checkpoints, metrics, multi-process data parallelism."""

from .checkpoint import (CheckpointError, LoadedRun, list_checkpoints, load_run, read_latest, resolve_checkpoint,
                         save_checkpoint)
from .distributed import DistInfo
from .ema import EMA
from .loop import NonFiniteLossError, TrainResult, learning_rate, resolve_device, train
from .sampling import (GuidanceOptions, GuidedModel, build_guided_model, check_classifier_matches, class_grid_labels,
                       class_labels, sample_images)
from .classifier import (ClassifierRunConfig, LoadedClassifier, load_classifier, resolve_classifier_config,
                         train_classifier)

__all__ = [
    "CheckpointError", "DistInfo", "EMA", "LoadedRun", "NonFiniteLossError", "TrainResult", "class_labels",
    "learning_rate", "list_checkpoints", "load_run", "read_latest", "resolve_checkpoint", "resolve_device",
    "sample_images", "save_checkpoint", "train",
    "ClassifierRunConfig", "GuidanceOptions", "GuidedModel", "LoadedClassifier", "build_guided_model",
    "check_classifier_matches", "class_grid_labels", "load_classifier", "resolve_classifier_config",
    "train_classifier",
]
