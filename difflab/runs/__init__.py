"""What a run folder is: the checkpoint format (one atomic writer, the readers), the run-folder
lock, and loading a trained diffusion run, classifier or autoencoder. Used by training, the
command line, evaluation and the benchmarks alike."""

from .autoencoder import DISC_NAME, autoencoder_checkpoint, load_autoencoder, load_autoencoder_config
from .checkpoint import (AE_CONFIG_NAME, CHECKPOINT_FILES, CHECKPOINTS_DIR, CLASSIFIER_CONFIG_NAME, CONFIG_NAME,
                         EMA_NAME, LATEST_NAME, MODEL_NAME, STATE_NAME, CheckpointError, CheckpointWriteError,
                         checkpoint_error, checkpoint_name, checkpoint_of_kind, checkpoint_step, cpu_state,
                         list_checkpoints, load_state_into, load_training_state, load_weights, prune_checkpoints,
                         read_latest, resolve_checkpoint, save_checkpoint_files, weights_writer)
from .classifier import (LoadedClassifier, classifier_checkpoint, load_classifier, load_classifier_config,
                         save_classifier_checkpoint)
from .diffusion import LoadedRun, load_checkpoint_config, load_run, read_conditioning
from .kinds import saved_run_config
from .lock import RunFolderLocked, RunLock

__all__ = [
    "AE_CONFIG_NAME", "CHECKPOINT_FILES", "CHECKPOINTS_DIR", "CLASSIFIER_CONFIG_NAME", "CONFIG_NAME", "DISC_NAME",
    "EMA_NAME", "LATEST_NAME", "MODEL_NAME", "STATE_NAME", "CheckpointError", "CheckpointWriteError",
    "LoadedClassifier", "LoadedRun", "RunFolderLocked", "RunLock", "autoencoder_checkpoint", "checkpoint_error",
    "checkpoint_name", "checkpoint_of_kind", "checkpoint_step", "classifier_checkpoint", "cpu_state",
    "list_checkpoints", "load_autoencoder", "load_autoencoder_config", "load_checkpoint_config", "load_classifier",
    "load_classifier_config", "load_run", "load_state_into", "load_training_state", "load_weights",
    "prune_checkpoints", "read_conditioning", "read_latest", "resolve_checkpoint", "save_checkpoint_files",
    "save_classifier_checkpoint", "saved_run_config", "weights_writer",
]
