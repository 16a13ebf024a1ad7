"""What every training run wants: resume after interruption (only into the run that was
interrupted), stop on NaN, a CSV log, progress with an ETA, the plan before it starts, and
training to a time budget (`TimeBudget`)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from common import in_notebook

# Backup folders this process has written: the Ctrl-C message (cli.run_script) promises a
# resume only when something was saved.
SAVED: set[str] = set()


def verbose() -> int:
    """`verbose` for fit(): a live progress bar with an ETA in a terminal or a notebook, one
    line per epoch when the output goes to a file or a pipe (a log stays readable)."""
    return 1 if in_notebook() or sys.stdout.isatty() else 2


def run_id(args) -> str:
    """What makes two runs the same run: the recipe and every flag but --out. A backup is only
    resumed by a run with the same id (another dataset or image size would not fit it)."""
    if args is None:
        return ""
    ignored = {"out", "started", "command", "files", "model"}
    flags = {k: v for k, v in sorted(vars(args).items()) if k not in ignored}
    return hashlib.sha1(json.dumps(flags, default=str).encode()).hexdigest()[:12]


def _claim(directory: Path, owner: dict) -> None:
    """Keep `directory` only if it belongs to `owner` (written in run.json); else remove it."""
    record = directory / "run.json"
    if directory.exists():
        try:
            found = json.loads(record.read_text())
        except (OSError, ValueError):
            found = None
        if found != owner:
            print(f"note: {directory} holds a backup of another run (other flags, data or "
                  "model): starting this one from scratch", flush=True)
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(owner) + "\n")


class Backup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that resumes only the run it belongs to: the run id (see `run_id`) and
    the model's input, output and parameter count are recorded beside the checkpoint."""

    def __init__(self, directory: str | Path, run: str = ""):
        super().__init__(str(directory))
        self.directory, self.run = Path(directory), run

    def on_train_begin(self, logs=None):
        _claim(self.directory, {"run": self.run, "model": [
            str(self.model.input_shape), str(self.model.output_shape), self.model.count_params()]})
        super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        SAVED.add(str(self.directory))


def standard(out: str | Path, name: str = "train", args=None, tensorboard: bool = False) -> list:
    """Backup (an interrupted run resumes from its last epoch when rerun with the same command),
    TerminateOnNaN, and a CSV log (`OUT/NAME_log.csv`), optionally TensorBoard."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    callbacks = [
        Backup(out / "backup" / name, run_id(args)),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(out / f"{name}_log.csv"), append=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard" / name)))
    return callbacks


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class Plan:
    """Says what will be trained before training, then how long it will take once the first
    epochs are measured, and where the run is at each new model:

        plan = callbacks.Plan(["none", "geometric"], epochs=60, steps_per_epoch=16)
        model.fit(..., callbacks=[plan.callback("none"), ...])   # or, in a custom loop:
        plan.start("none"); ...; plan.epoch_done()               # after each epoch

    The estimate is the mean time of the epochs seen so far, each model's first epoch
    (which includes tracing) left out when there are others."""

    def __init__(self, names: list[str], epochs: int, steps_per_epoch: int, what: str = "models",
                 time_budget: float | None = None):
        self.names, self.epochs, self.what = list(names), epochs, what
        self.time_budget = time_budget
        self.epoch_seconds: list[float] = []
        self.models_started = 0
        self.announced = bool(time_budget)  # a budgeted run's length is known: the budget
        if time_budget:
            print(f"plan: {len(self.names)} {what} x {time_budget:g} s of training each "
                  f"(--time-budget; evaluation not counted) = "
                  f"{_duration(len(self.names) * time_budget)} of training", flush=True)
            return
        total = len(self.names) * epochs * steps_per_epoch
        print(f"plan: {len(self.names)} {what} x {epochs} epochs x {steps_per_epoch} steps "
              f"= {total:,} optimisation steps", flush=True)

    def _remaining_epochs(self) -> int:
        return (len(self.names) - self.models_started) * self.epochs + (
            self.epochs - self.epochs_this_model)

    def start(self, name: str) -> None:
        self.models_started += 1
        self.epochs_this_model = 0
        self.epoch_started = time.time()
        left = ""
        if self.time_budget and self.models_started > 1:
            models_left = len(self.names) - self.models_started + 1
            left = f", about {_duration(models_left * self.time_budget)} of training left in all"
        elif self.epoch_seconds and not self.time_budget:
            left = f", about {_duration(self._remaining_epochs() * self.mean())} left in all"
        print(f"[{self.models_started}/{len(self.names)}] {name}{left}", flush=True)

    def mean(self) -> float:
        return sum(self.epoch_seconds) / len(self.epoch_seconds)

    def epoch_done(self) -> None:
        seconds = time.time() - self.epoch_started
        self.epochs_this_model += 1
        if self.epochs_this_model > 1 or self.epochs == 1:
            self.epoch_seconds.append(seconds)
        self.epoch_started = time.time()
        if self.epoch_seconds and not self.announced:
            self.announced = True
            per_model = self.epochs * self.mean()
            print(f"measured {self.mean():.1f} s per epoch: about {_duration(per_model)} per "
                  f"model, {_duration(self._remaining_epochs() * self.mean())} left for the "
                  f"{len(self.names)} {self.what}", flush=True)

    def callback(self, name: str) -> keras.callbacks.Callback:
        plan = self

        class _Progress(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                plan.start(name)

            def on_epoch_end(self, epoch, logs=None):
                plan.epoch_done()

        return _Progress()


class TimeBudget(keras.callbacks.Callback):
    """Train for `seconds` of wall-clock time, with the learning-rate schedule fitted to it:

        budget = callbacks.TimeBudget(60, peak_learning_rate=2e-3, steps_per_epoch=469)
        model.fit(train, epochs=budget.max_epochs, callbacks=[budget, ...])

    The first `calibration_steps` steps (they count against the budget; the first one, which
    traces the graph, is left out of the speed) measure the steps per second; the total number
    of steps that fits in the rest of the budget is then planned, and the learning rate
    follows a linear warm-up (the first `warmup_fraction` of the steps) and a cosine decay that
    reaches 0 at the last planned step. The plan is revised after every step from the speed of
    the last few hundred steps (other jobs on the machine change it), so the decay ends when
    the budget does; training stops at the planned step or when the budget is spent,
    whichever comes first. Validation during
    `fit` (`validation_data`) is not counted: the budget is training time only.

    The optimizer's learning rate must be a plain number (the callback assigns it before each
    step), not a schedule. After training, `steps`, `seconds` (training time spent) and
    `planned_steps` say what happened."""

    def __init__(self, seconds: float, peak_learning_rate: float, steps_per_epoch: int,
                 warmup_fraction: float = 0.1, calibration_steps: int = 25,
                 max_epochs: int | None = None, name: str = "", verbose: bool = True):
        super().__init__()
        if not seconds > 0:
            raise ValueError(f"time budget must be positive, got {seconds}")
        self.budget, self.peak = float(seconds), float(peak_learning_rate)
        self.steps_per_epoch, self.warmup_fraction = steps_per_epoch, warmup_fraction
        self.calibration_steps = max(2, calibration_steps)
        self.name, self.verbose = name, verbose
        # fit() needs an epoch count: enough epochs for any speed, unless the caller caps it
        self.max_epochs = max_epochs or 100_000
        self.cap = self.max_epochs * steps_per_epoch
        self.learning_rates: list[float] = []

    def _spent(self) -> float:
        """Training seconds so far: wall time since the start, validation left out."""
        return time.perf_counter() - self.started - self.excluded

    def _plan(self) -> None:
        """Total steps = steps done + what the remaining budget holds at the recent speed
        (the last `window` steps, the first, traced, step left out)."""
        times = self.step_ends[-self.window:]
        rate = (len(times) - 1) / max(1e-9, times[-1] - times[0])
        left = max(0.0, self.budget - self._spent())
        self.planned_steps = min(self.cap, self.steps + max(1, int(rate * left)))
        if self.steps <= self.calibration_steps:  # the warm-up cannot end before this step
            self.warmup_steps = max(self.steps, round(self.warmup_fraction * self.planned_steps))
        self.rate = rate

    def learning_rate(self, step: int) -> float:
        """Linear warm-up from 0, then a cosine from the peak to 0 at `planned_steps`."""
        if step < self.warmup_steps:
            return self.peak * step / self.warmup_steps
        decay = max(1, self.planned_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay)
        return self.peak * 0.5 * (1 + math.cos(math.pi * progress))

    def on_train_begin(self, logs=None):
        self.started, self.excluded = time.perf_counter(), 0.0
        self.steps, self.step_ends, self.window = 0, [], 200
        # until the speed is measured: warm up over twice the calibration steps
        self.planned_steps, self.warmup_steps = self.cap, self.calibration_steps * 2
        self.learning_rates = []

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.learning_rate(self.steps)
        self.model.optimizer.learning_rate = rate
        self.learning_rates.append(rate)

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        self.step_ends.append(self._spent())  # the first step (tracing) is not part of a rate
        if len(self.step_ends) > 2 * self.window:
            del self.step_ends[:-self.window]
        if self.steps == self.calibration_steps:
            self._plan()
            if self.verbose:
                epochs = self.planned_steps / self.steps_per_epoch
                print(f"\n{self.name + ': ' if self.name else ''}time budget {self.budget:.4g} s: "
                      f"{self.rate:.1f} steps/s measured over the first {self.steps} steps; "
                      f"planned {self.planned_steps:,} steps ({epochs:.1f} epochs of "
                      f"{self.steps_per_epoch}), learning rate warm-up to {self.peak:g} over "
                      f"{self.warmup_steps:,} steps, then cosine decay to 0", flush=True)
        elif self.steps > self.calibration_steps:
            self._plan()  # revised from the recent speed
        if self.steps >= self.planned_steps or self._spent() >= self.budget:
            self.model.stop_training = True

    def on_test_begin(self, logs=None):
        self.test_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.excluded += time.perf_counter() - self.test_started

    def on_train_end(self, logs=None):
        self.seconds = self._spent()
        if self.verbose:
            reason = "the planned steps" if self.steps >= self.planned_steps else "the budget"
            print(f"{self.name + ': ' if self.name else ''}stopped at {reason}: {self.steps:,} "
                  f"steps ({self.steps / self.steps_per_epoch:.1f} epochs) in "
                  f"{self.seconds:.1f} s of training, last learning rate "
                  f"{self.learning_rates[-1] if self.learning_rates else 0:.2g}", flush=True)


class Finished:
    """Variants (policies, methods, ...) that finished before an interrupt are loaded on the
    rerun instead of being trained again: weights and a JSON record (scores, history) per
    variant in OUT/backup/finished/, kept only for the same run (see `run_id`).

        finished = callbacks.Finished(out, args)
        record = finished.load(name, model)       # None: train it, then
        finished.save(name, model, {"scores": ..., "history": ...})
        ...
        finished.clear()                          # after results.json is written
    """

    def __init__(self, out: str | Path, args):
        self.directory = Path(out) / "backup" / "finished"
        _claim(self.directory, {"run": run_id(args)})

    def load(self, name: str, model) -> dict | None:
        weights, record = self.directory / f"{name}.weights.h5", self.directory / f"{name}.json"
        if not (weights.is_file() and record.is_file()):
            return None
        model.load_weights(weights)
        print(f"{name}: finished before the interrupt, loaded from {self.directory}", flush=True)
        return json.loads(record.read_text())

    def save(self, name: str, model, record: dict) -> None:
        model.save_weights(self.directory / f"{name}.weights.h5")
        tmp = self.directory / f"{name}.json.tmp"
        tmp.write_text(json.dumps(record, default=float))
        tmp.replace(self.directory / f"{name}.json")  # the record last: it marks the variant done
        SAVED.add(str(self.directory))

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class LoopBackup:
    """BackupAndRestore for a custom training loop (`OUT/backup/NAME/`).

        backup = LoopBackup(out, "train", model, optimizer, args)
        state = backup.restore() or {"epoch": 0, ...}   # None on a fresh run
        for epoch in range(state["epoch"], epochs):
            ...one epoch...
            state["epoch"] = epoch + 1
            backup.save(state)                          # weights, optimizer, your JSON state
        backup.finish()                                 # training done: remove the backup

    The weights and optimizer slots go to a `tf.train.Checkpoint` numbered by epoch; `state`
    (any JSON: epoch, history, ...) is written after it, so an interrupt between the two falls
    back to the previous epoch's checkpoint, which is kept until the next one is complete.
    A backup of another run (other flags or model) is removed, not restored.
    """

    def __init__(self, out: str | Path, name: str, model, optimizer, args=None):
        self.directory = Path(out) / "backup" / name
        self.state_file = self.directory / "state.json"
        optimizer.build(model.trainable_variables)  # slots exist, so restoring fills them now
        _claim(self.directory, {"run": run_id(args), "model": [
            str(model.input_shape), str(model.output_shape), model.count_params()]})
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
        SAVED.add(str(self.directory))

    def finish(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
