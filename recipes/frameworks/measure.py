"""Timing and memory helpers shared by the framework runs; imports no framework, so that each
run's memory is its own framework's."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    From /proc/self/status (VmHWM) where there is one: getrusage's ru_maxrss survives fork and
    exec on Linux, so a process started by a larger one (the recipe, TensorFlow loaded) would
    report its parent's peak as its own."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / (
        1024 if sys.platform == "darwin" else 1)


def cpu_seconds() -> float:
    """CPU time of this process, all threads: comparable when the machine is shared."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def latency_ms(predict, images, repeats: int) -> float:
    """Median milliseconds of one batch-1 call, over `repeats` images, after 3 warm-up calls."""
    for i in range(3):
        predict(images[i:i + 1])
    times = []
    for i in range(repeats):
        j = i % len(images)
        start = time.perf_counter()
        predict(images[j:j + 1])
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def throughput(predict, images, batch: int = 256, repeats: int = 3) -> float:
    """Images per second of batch-`batch` inference (after one warm-up call)."""
    block = np.resize(images, (batch, *images.shape[1:]))  # repeats images if there are fewer
    predict(block)
    start = time.perf_counter()
    for _ in range(repeats):
        predict(block)
    return batch * repeats / (time.perf_counter() - start)


def size_kb(path: Path) -> float:
    """Size of a file, or of all files in a folder (a SavedModel)."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1024


def first_line(err: BaseException) -> str:
    """An exception as one short line, for the results of a mode or format that fails."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def marked_code(path: Path) -> list[str]:
    """The model and training lines between the markers of a framework script."""
    lines = Path(path).read_text().splitlines()
    marks = [i for i, s in enumerate(lines) if s.startswith("# ---- model and training code")]
    return lines[marks[0] + 1:marks[1]]


def code_lines(lines: list[str]) -> int:
    """Lines of code, without blank lines, comments and docstrings."""
    count, in_docstring = 0, False
    for line in (s.strip() for s in lines):
        if in_docstring:
            in_docstring = not line.endswith('"""')
        elif line.startswith('"""'):
            in_docstring = not (len(line) > 3 and line.endswith('"""'))
        elif line and not line.startswith("#"):
            count += 1
    return count


class EpochClock:
    """Wall and CPU seconds of each epoch, and with a `label` a progress line per epoch with
    the time the remaining epochs should take. `restart()` when an epoch starts, `tick()` when
    it ends (which restarts the clock for the next one)."""

    def __init__(self, label: str = "", total: int = 0):
        self.label, self.total, self.seconds, self.cpu = label, total, [], []
        self.restart()

    def restart(self) -> None:
        self.start, self.cpu_start = time.perf_counter(), cpu_seconds()

    def tick(self, epoch: int, logs: dict) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        self.seconds.append(now - self.start)
        self.cpu.append(cpu - self.cpu_start)
        self.start, self.cpu_start = now, cpu
        if self.label:
            left = (self.total - epoch - 1) * float(np.mean(self.seconds))
            print(f"  {self.label} epoch {epoch + 1}/{self.total}: {self.seconds[-1]:.1f} s, "
                  f"loss {logs['loss']:.3f}, accuracy {logs['accuracy']:.3f}"
                  + (f", about {left:.0f} s left" if left else ""), flush=True)


def seed_record(row: str, seed: int, clock: EpochClock, seconds: float, scores: np.ndarray,
                labels: np.ndarray, train_images: int) -> dict:
    """One seed's test accuracy and training speed (after the first epoch, which pays for
    tracing and compiling), printed as a progress line."""
    accuracy = float((scores.argmax(-1) == labels).mean())
    steady = float(np.mean(clock.seconds[1:]))
    print(f"  {row} seed {seed}: test accuracy {accuracy:.3f}, "
          f"{train_images / steady:.0f} train images/s", flush=True)
    return {"seed": seed, "test_accuracy": accuracy, "train_seconds": seconds,
            "epoch_seconds": clock.seconds, "first_epoch_seconds": clock.seconds[0],
            "train_images_per_second": train_images / steady,
            "train_cpu_ms_per_image": 1000 * float(np.mean(clock.cpu[1:])) / train_images}


def run_flags(description: str) -> argparse.Namespace:
    """The flags every row's process takes from recipes/frameworks."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--mode-steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50, help="batch-1 latency calls")
    p.add_argument("--no-export", action="store_true", help="skip the export formats")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="skip the torch.compile mode (minutes of C++ compiling on a small CPU)")
    return p.parse_args()
