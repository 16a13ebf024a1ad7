"""The callbacks every training run wants: resume after interruption, stop on NaN, log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import tensorflow as tf


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


class LoopBackup:
    """BackupAndRestore for a custom training loop (`OUT/backup/NAME/`).

        backup = LoopBackup(out, "train", model, optimizer)
        state = backup.restore() or {"epoch": 0, ...}   # None on a fresh run
        for epoch in range(state["epoch"], epochs):
            ...one epoch...
            state["epoch"] = epoch + 1
            backup.save(state)                          # weights, optimizer, your JSON state
        backup.finish()                                 # training done: remove the backup

    The weights and optimizer slots go to a `tf.train.Checkpoint` numbered by epoch; `state`
    (any JSON: epoch, history, ...) is written after it, so an interrupt between the two falls
    back to the previous epoch's checkpoint, which is kept until the next one is complete.
    """

    def __init__(self, out: str | Path, name: str, model, optimizer):
        self.directory = Path(out) / "backup" / name
        self.state_file = self.directory / "state.json"
        optimizer.build(model.trainable_variables)  # slots exist, so restoring fills them now
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.directory),
                                                  max_to_keep=2)

    def restore(self) -> dict | None:
        if not self.state_file.exists():
            return None
        state = json.loads(self.state_file.read_text())
        path = self.directory / f"ckpt-{state['epoch']}"
        self.checkpoint.restore(str(path)).assert_existing_objects_matched()
        print(f"resuming {self.directory.name} after epoch {state['epoch']} (from {path})")
        return state

    def save(self, state: dict) -> None:
        self.manager.save(checkpoint_number=state["epoch"])
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.state_file)

    def finish(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
