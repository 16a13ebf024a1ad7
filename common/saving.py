"""Saving and loading trained models: `OUT/model.keras` plus what `predict` needs beside it."""

from __future__ import annotations

import json
from pathlib import Path

from common import UserError


def save_classifier(model, out: str | Path, class_names: list[str]) -> Path:
    """OUT/model.keras plus OUT/class_names.json (read back by `predict` and `evaluate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "class_names.json").write_text(json.dumps(list(class_names)) + "\n")
    return out / "model.keras"


def load_model(path: str | Path):
    """A saved Keras model; a missing or unreadable file raises UserError naming it.
    Safe mode stays on: a model with Lambda layers (arbitrary code) is refused."""
    import keras

    path = Path(path)
    if path.is_dir():
        raise UserError(f"--model {path} is a folder: pass the model file, e.g. {path}/model.keras")
    if not path.is_file():
        raise UserError(f"model file not found: {path} (train first, or pass --model PATH)")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"cannot load model {path}: {type(err).__name__}: {first_line}") from None


def load_classifier(path: str | Path):
    """A saved image classifier and its class names; any other model raises UserError."""
    model = load_model(path)
    inputs, outputs = model.inputs, model.outputs
    in_shape = tuple(inputs[0].shape) if len(inputs) == 1 else None
    out_shape = tuple(outputs[0].shape) if len(outputs) == 1 else None
    if in_shape is None or len(in_shape) != 4 or out_shape is None or len(out_shape) != 2 or (
            out_shape[-1] or 0) < 2:
        raise UserError(
            f"{path} is not an image classifier (inputs {[tuple(i.shape) for i in inputs]}, "
            f"outputs {[tuple(o.shape) for o in outputs]}; expected (None, H, W, C) -> "
            "(None, classes)): pass a model.keras saved by this recipe")
    names_file = Path(path).with_name("class_names.json")
    if names_file.is_file():
        class_names = json.loads(names_file.read_text())
    else:
        class_names = [str(i) for i in range(out_shape[-1])]
    if len(class_names) != out_shape[-1]:
        raise UserError(f"{names_file} lists {len(class_names)} classes, the model predicts "
                        f"{out_shape[-1]}: it belongs to another model")
    return model, class_names
