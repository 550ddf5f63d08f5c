"""Training: configs and recipes, batched augmentation, the loop, and the run folder.

Example::

    from ferkit.train import resolve_config, train
    result = train(resolve_config("fer2013", train_dir="fer/train", val_dir="fer/validation", out="runs/f"))
    result.best_val_acc

``ferkit.train.config`` (TrainConfig, recipes) imports without torch, so the CLI builds its parser
from it cheaply; the loop loads on first use.
"""
from .config import MONITORS, OPTIMIZERS, RECIPES, SCHEDULES, TrainConfig, config_fields, resolve_config

_LAZY = {"RunResult": "loop", "load_train_val": "loop", "train": "loop", "HISTORY_FIELDS": "run_folder",
         "RunFolder": "run_folder", "plot_curves": "run_folder"}

__all__ = ["MONITORS", "OPTIMIZERS", "RECIPES", "SCHEDULES", "TrainConfig", "config_fields", "resolve_config",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(name)
