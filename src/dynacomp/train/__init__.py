"""The one training loop every system uses: ``train(task, TrainConfig(...), out_dir)``.

See ``dynacomp.train.loop`` for the loop and the task protocol, ``checkpoint`` for the checkpoint
format and exact resume, ``distributed`` for torchrun / DDP / FSDP2, ``schedule`` for ``lr_at``,
``run`` for reading a finished run's record and model back (``load_trained_run``).
"""

from dynacomp.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_weights,
    seed_everything,
    verify_checkpoint,
)
from dynacomp.train.distributed import is_main_process, world_info
from dynacomp.train.loop import TrainConfig, Trainer, TrainResult, TrainTask, default_param_groups, train
from dynacomp.train.run import LoadedRun, load_trained_run
from dynacomp.train.schedule import lr_at

__all__ = [
    "CheckpointError", "LoadedRun", "TrainConfig", "TrainResult", "TrainTask", "Trainer", "default_param_groups",
    "is_main_process", "latest_checkpoint", "load_trained_run", "load_weights", "lr_at", "seed_everything",
    "train", "verify_checkpoint", "world_info",
]
