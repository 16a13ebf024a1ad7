"""The callbacks every training run wants: resume after interruption, stop on NaN, log."""

from __future__ import annotations

from pathlib import Path

import keras


def standard(out: str | Path, name: str = "train", tensorboard: bool = False) -> list:
    """BackupAndRestore (an interrupted run resumes from its last epoch when rerun with the
    same --out), TerminateOnNaN, and a CSV log (`OUT/NAME_log.csv`), optionally TensorBoard."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup" / name)),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(out / f"{name}_log.csv"), append=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard" / name)))
    return callbacks
