"""The command line every recipe shares.

    python -m recipes.NAME [--dataset SPEC --epochs N --batch-size N --seed N --out DIR --smoke]
    python -m recipes.NAME predict --model OUT/model.keras FILE...
    python -m recipes.NAME evaluate --model OUT/model.keras --dataset SPEC [--out DIR]

User errors (`UserError`, bad flags) print one line and exit with code 2; Ctrl-C says how to
resume. In a notebook, flags come from the RECIPE_ARGS environment variable (default: none).
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import shlex
import sys
import time
from pathlib import Path

from common import UserError
from common.data import SPECS_HELP


def parser(recipe: str, description: str, *, dataset: str = "synthetic:shapes",
           epochs: int = 10, batch_size: int = 64) -> argparse.ArgumentParser:
    """The shared flags and the `predict` / `evaluate` subcommands; recipes add their own."""
    p = argparse.ArgumentParser(prog=f"python -m recipes.{recipe}", description=description)
    p.set_defaults(recipe=recipe, command="train")
    p.add_argument("--dataset", default=dataset, help=f"dataset spec ({SPECS_HELP})")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"runs/{recipe}", help="output folder (default: %(default)s)")
    p.add_argument("--smoke", action="store_true", help="a tiny run of every code path (tests)")
    p.add_argument("--parallel-augmentation", action="store_true",
                   help="run random augmentation on all CPU cores in tf.data: faster on large "
                        "machines, but a rerun no longer gives bit-identical results (default: "
                        "one augmentation thread, overlapped with training by prefetch)")
    sub = p.add_subparsers(dest="command", metavar="{predict,evaluate}")
    p.predict = sub.add_parser("predict", help="run a saved model on image files")
    p.predict.add_argument("--model", required=True, help="a saved model, e.g. OUT/model.keras")
    p.predict.add_argument("files", nargs="+", help="image files")
    p.evaluate = sub.add_parser("evaluate", help="score a saved model on a dataset")
    p.evaluate.add_argument("--model", required=True)
    p.evaluate.add_argument("--dataset", required=True, help=SPECS_HELP)
    p.evaluate.add_argument("--out", default=None, help="default: the model's folder/evaluate")
    p.evaluate.add_argument("--seed", type=int, default=0)
    p.evaluate.add_argument("--batch-size", type=int, default=256)
    return p


def in_notebook() -> bool:
    """True inside a Jupyter kernel (not merely when some library has imported ipykernel)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def parse_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Flags from the command line, or from $RECIPE_ARGS inside a notebook. Seeds everything."""
    argv = shlex.split(os.environ.get("RECIPE_ARGS", "")) if in_notebook() else sys.argv[1:]
    args = p.parse_args(argv)
    args.command = args.command or "train"
    if args.command == "evaluate" and args.out is None:
        args.out = str(Path(args.model).parent / "evaluate")
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be at least 1")
    import keras

    from common import pipeline

    keras.utils.set_random_seed(args.seed)
    pipeline.PARALLEL_AUGMENTATION = getattr(args, "parallel_augmentation", False)
    args.started = time.time()
    return args


def run_script(main_file: str, script: str) -> None:
    """Run a recipe script as __main__, turning user errors into one line and exit code 2."""
    path = Path(main_file).with_name(script)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command (same --out); training resumes from the "
              "last finished epoch (OUT/backup)", file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------- saved classifiers


def save_classifier(model, out: str | Path, class_names: list[str]) -> Path:
    """OUT/model.keras plus OUT/class_names.json (read back by `predict` and `evaluate`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    (out / "class_names.json").write_text(json.dumps(list(class_names)) + "\n")
    return out / "model.keras"


def load_model(path: str | Path):
    """A saved Keras model; a missing or unreadable file raises UserError naming it."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path} (train first, or pass --model PATH)")
    try:
        return keras.saving.load_model(path)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a bad file
        raise UserError(f"cannot load model {path}: {type(err).__name__}: {err}") from None


def load_classifier(path: str | Path):
    model = load_model(path)
    names_file = Path(path).with_name("class_names.json")
    if names_file.is_file():
        class_names = json.loads(names_file.read_text())
    else:
        class_names = [str(i) for i in range(model.output_shape[-1])]
    return model, class_names


def classifier_commands(args) -> None:
    """The `predict` and `evaluate` subcommands of a recipe that saves a plain classifier:
    run the one asked for, then stop before any training. Returns for `train`."""
    if args.command == "predict":
        predict_classifier(args)
        raise SystemExit
    if args.command == "evaluate":
        evaluate_classifier(args)
        raise SystemExit


def predict_classifier(args) -> None:
    """Print `PATH<TAB>CLASS` for each image file, resized to the model's input."""
    from common.data import read_images

    model, class_names = load_classifier(args.model)
    _, height, width, channels = model.input_shape
    images = read_images(args.files, (height, width), channels)
    probabilities = model.predict(images.astype("float32"), verbose=0)
    for path, p in zip(args.files, probabilities):
        print(f"{path}\t{class_names[int(p.argmax())]}")


def evaluate_classifier(args) -> dict:
    """Score a saved classifier on `--dataset`; writes OUT/results.json and a confusion matrix."""
    from common import data, metrics, plots, results

    model, class_names = load_classifier(args.model)
    _, height, width, channels = model.input_shape
    ds = data.require(data.load(args.dataset, seed=args.seed, image_size=(height, width),
                                channels=channels), data.Classification, args.dataset)
    if ds.num_classes > len(class_names):
        raise UserError(f"{args.dataset} has {ds.num_classes} classes, the model predicts "
                        f"{len(class_names)}")
    y_pred = model.predict(ds.x_test.astype("float32"), batch_size=args.batch_size,
                           verbose=0).argmax(-1)
    scores = metrics.classification(ds.y_test, y_pred, len(class_names))
    plots.confusion_matrix(ds.y_test, y_pred, class_names, Path(args.out) / "confusion.png")
    results.write(args.out, args.recipe, args.dataset, scores, time.time() - args.started,
                  vars(args), model=str(args.model))
    print(results.summary(scores, f"evaluate {args.model} on {args.dataset}"))
    return scores


def finish(args, metrics: dict, dataset: str) -> None:
    """Write OUT/results.json and print the summary table: the last step of every recipe."""
    from common import results

    path = results.write(args.out, args.recipe, dataset, metrics, time.time() - args.started,
                         vars(args))
    elapsed = time.time() - args.started
    print(results.summary(metrics, f"{args.recipe} on {dataset} ({elapsed:.0f} s)"))
    print(f"wrote {path}")
