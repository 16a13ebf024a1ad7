"""Plots a person would rather look at than read: curves, confusion matrices, image grids."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from common import in_notebook

if not in_notebook():
    matplotlib.use("Agg")  # scripts write files only: works headless and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path) -> Path:
    """Write the figure to `path` (PNG); in a notebook, also show it inline under the cell."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    if in_notebook():
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    return path


def training_curves(histories: dict[str, dict], path, metrics=("loss", "accuracy"),
                    title: str = "") -> Path:
    """One panel per metric; one solid (train) and one dashed (validation) line per run."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (name, history) in enumerate(histories.items()):
            colour = f"C{i}"
            if metric in history:
                ax.plot(range(1, len(history[metric]) + 1), history[metric], color=colour,
                        label=f"{name} train")
            if f"val_{metric}" in history:
                ax.plot(range(1, len(history[f"val_{metric}"]) + 1), history[f"val_{metric}"],
                        color=colour, linestyle="--", label=f"{name} val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def confusion_matrix(y_true, y_pred, class_names, path, title: str = "") -> Path:
    """Row-normalised confusion matrix (each row: where that true class went), with counts."""
    k = len(class_names)
    counts = np.zeros((k, k), np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix (row-normalised colour, counts)")
    return save(fig, path)


def image_grid(images, titles=None, path="grid.png", ncols: int = 8, title: str = "",
               title_colours=None, cmap=None) -> Path:
    """Images (uint8 or float) in a grid with optional per-image titles (e.g. predictions)."""
    images = list(images)
    nrows = max(1, int(np.ceil(len(images) / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.7 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.ravel()[i]
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.dtype != np.uint8 and image.ndim == 3:  # RGB floats: [0, 1] or [0, 255]
            image = np.clip(image, 0, 1) if image.max() <= 1 else np.clip(image, 0, 255) / 255
        ax.imshow(image, cmap=cmap or ("gray" if image.ndim == 2 else None))
        if titles is not None:
            colour = title_colours[i] if title_colours is not None else "black"
            ax.set_title(str(titles[i]), fontsize=7, color=colour)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def bars(values: dict[str, float], path, ylabel: str, title: str = "") -> Path:
    """A labelled bar per variant (e.g. accuracy per method)."""
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(values) + 1), 3.4))
    ax.bar(list(values), list(values.values()), color=[f"C{i}" for i in range(len(values))])
    for i, v in enumerate(values.values()):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", rotation=30)
    ax.set_title(title)
    return save(fig, path)
