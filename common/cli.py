"""The command line every recipe shares.

    python -m recipes.NAME [--dataset SPEC --epochs N --batch-size N --seed N --out DIR --smoke]
    python -m recipes.NAME predict --model OUT/model.keras FILE...
    python -m recipes.NAME evaluate --model OUT/model.keras --dataset SPEC [--out DIR]

User errors (`UserError`, bad flags) print one line and exit with code 2; Ctrl-C says whether
and how the run resumes. In a notebook, flags come from the RECIPE_ARGS environment variable
(default: none). This module imports no TensorFlow until the flags are parsed, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import math
import os
import runpy
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import UserError, import_tensorflow_quietly, in_notebook

# What a classification recipe's --dataset accepts (the other kinds are for other tasks).
CLASSIFICATION_SPECS = (
    "synthetic:shapes | npz:FILE (x_train, y_train, x_test, y_test, or x, y) | "
    "folder:DIR (one subfolder of images per class, or DIR/train + DIR/test) | tfds:NAME"
)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every default."""


def _train_size(value: str) -> int | None:
    if value == "all":
        return None
    if not (value.isdigit() and int(value) > 0):
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {value!r}")
    return int(value)


def parser(recipe: str, description: str, *, dataset: str = "synthetic:shapes",
           epochs: int = 10, batch_size: int = 64, budget_steps: int | None = None,
           min_epochs: int = 2, specs: str = CLASSIFICATION_SPECS,
           train_size: bool = True, time_budget: str | None = None) -> argparse.ArgumentParser:
    """The shared flags and the `predict` / `evaluate` subcommands; recipes add their own.

    With `budget_steps`, `--epochs` defaults to "auto": about that many optimisation steps
    per model, at most `epochs` and at least `min_epochs` epochs (see `training_budget`), so
    that a default run on a large dataset takes minutes per model, not hours."""
    p = argparse.ArgumentParser(prog=f"python -m recipes.{recipe}", description=description,
                                formatter_class=_Formatter)
    p.set_defaults(recipe=recipe, command="train", budget=(budget_steps, min_epochs, epochs))
    p.add_argument("--dataset", default=dataset, help=f"dataset spec: {specs}")
    if budget_steps:
        p.add_argument("--epochs", type=int, default=None,
                       help=f"epochs per model (default: auto, about {budget_steps} optimisation "
                            f"steps per model: {epochs} epochs at most, fewer on large datasets, "
                            f"at least {min_epochs})")
    else:
        p.add_argument("--epochs", type=int, default=epochs, help="epochs per model")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")
    if time_budget:
        p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                       help=f"train for SECONDS of wall-clock time {time_budget}: the speed of "
                            "the first steps sets the number of steps and the learning-rate "
                            "schedule (warm-up, then cosine decay to 0 at the budget's end); "
                            "--epochs, if given, caps it. Evaluation is not counted. An "
                            "interrupted budgeted model restarts on resume")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the data split, initial weights, shuffling and augmentation")
    if train_size:
        p.add_argument("--train-size", type=_train_size, default=None, metavar="N|all",
                       help="use a class-balanced subset of N training images, from any dataset "
                            "(default: all)")
    p.add_argument("--out", default=f"runs/{recipe}", help="output folder")
    p.add_argument("--smoke", action="store_true", help="a tiny run of every code path (tests)")
    sub = p.add_subparsers(dest="command", metavar="{predict,evaluate}")
    p.predict = sub.add_parser("predict", help="run a saved model on image files",
                               formatter_class=_Formatter)
    p.predict.add_argument("--model", required=True, help="a saved model, e.g. OUT/model.keras")
    p.predict.add_argument("files", nargs="+", help="image files")
    p.evaluate = sub.add_parser("evaluate", help="score a saved model on a dataset",
                                formatter_class=_Formatter)
    p.evaluate.add_argument("--model", required=True, help="a saved model, e.g. OUT/model.keras")
    p.evaluate.add_argument("--dataset", required=True, help=f"dataset spec: {specs}")
    p.evaluate.add_argument("--out", default=None, help="output folder (default: the model's "
                                                        "folder/evaluate)")
    p.evaluate.add_argument("--seed", type=int, default=0, help="seed of the data split")
    p.evaluate.add_argument("--batch-size", type=int, default=256, help="images per batch")
    return p


def parse_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Flags from the command line, or from $RECIPE_ARGS inside a notebook; checks the flags
    every recipe shares, then imports TensorFlow (quietly) and seeds everything."""
    from common import results  # noqa: F401 - records the commit of the code that starts now

    argv = shlex.split(os.environ.get("RECIPE_ARGS", "")) if in_notebook() else sys.argv[1:]
    args = p.parse_args(argv)
    args.command = args.command or "train"
    if args.command == "evaluate" and args.out is None:
        args.out = str(Path(args.model).parent / "evaluate")
    if args.epochs is not None and args.epochs < 1:
        p.error(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if getattr(args, "time_budget", None) is not None and not args.time_budget > 0:
        p.error(f"--time-budget must be a positive number of seconds, got {args.time_budget:g}")
    if not 0 <= args.seed < 2**32:
        p.error(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    if args.command != "predict":
        check_writable(Path(args.out))
    import_tensorflow_quietly()
    import keras

    keras.utils.set_random_seed(args.seed)
    args.started = time.time()
    return args


def check_writable(out: Path) -> None:
    """Fail before any training when --out cannot hold the results."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file: pass a folder (e.g. runs/NAME)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --out {out}: {err.strerror or err}; pass a folder "
                        "you can write to") from None


def train_subset(args, x, y):
    """The class-balanced `--train-size` subset of a training split (all of it by default)."""
    from common.data import stratified_split

    n = getattr(args, "train_size", None)
    if n is None or n >= len(x):
        return x, y
    if n < len(set(y.tolist())):
        raise UserError(f"--train-size {n} is smaller than the number of classes "
                        f"({len(set(y.tolist()))}): use at least one image per class")
    x_kept, _, y_kept, _ = stratified_split(x, y, len(x) - n, args.seed)
    return x_kept, y_kept


def training_budget(args, n_train: int) -> int:
    """Resolve `--epochs` for `n_train` training images (stored back in `args.epochs`, so that
    results.json records it) and return the steps per epoch. Checks --batch-size against the
    data. Auto epochs: about `budget_steps` optimisation steps, within [min_epochs, epochs]."""
    if args.batch_size > n_train:
        raise UserError(f"--batch-size {args.batch_size} is larger than the {n_train} training "
                        f"images: use --batch-size {max(1, min(n_train, 64))} or less")
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    if args.epochs is None:
        budget_steps, min_epochs, max_epochs = args.budget
        args.epochs = max(min_epochs, min(max_epochs, round(budget_steps / steps_per_epoch)))
    return steps_per_epoch


def run_script(main_file: str, script: str) -> None:
    """Run a recipe script as __main__, turning user errors into one line and exit code 2."""
    path = Path(main_file).with_name(script)
    try:
        runpy.run_path(str(path), run_name="__main__")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        callbacks = sys.modules.get("common.callbacks")
        saved = sorted(callbacks.SAVED) if callbacks else []
        if saved:
            print(f"\ninterrupted: rerun the same command (same --out) to resume; saved: "
                  f"{', '.join(saved)}", file=sys.stderr)
        else:
            print("\ninterrupted before anything was saved: a rerun starts from the beginning",
                  file=sys.stderr)
        sys.exit(130)


# ---------------------------------------------------------------- predict / evaluate


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
    from common.saving import load_classifier

    model, class_names = load_classifier(args.model)
    _, height, width, channels = model.input_shape
    images = read_images(args.files, (height, width), channels)
    probabilities = model.predict(images.astype("float32"), verbose=0)
    for path, p in zip(args.files, probabilities):
        print(f"{path}\t{class_names[int(p.argmax())]}")


def evaluate_classifier(args) -> dict:
    """Score a saved classifier on `--dataset`; writes OUT/results.json and a confusion matrix.
    Says what it converts (image size, channels) and what does not match (class names)."""
    from common import data, metrics, plots, results
    from common.saving import load_classifier

    model, class_names = load_classifier(args.model)
    _, height, width, channels = model.input_shape
    ds = data.require(data.load(args.dataset, seed=args.seed), data.Classification,
                      args.dataset)
    shape = ds.x_test.shape[1:]
    if tuple(shape) != (height, width, channels):
        print(f"note: {args.dataset} has {shape[0]}x{shape[1]} images with {shape[2]} "
              f"channel(s); converted to the model's {height}x{width}x{channels} input")
        ds.x_test = data.conform(ds.x_test, (height, width), channels)
    if ds.num_classes > len(class_names):
        raise UserError(f"{args.dataset} has {ds.num_classes} classes, the model predicts "
                        f"{len(class_names)}: evaluate on a dataset of the model's classes")
    numbered = [str(i) for i in range(ds.num_classes)]
    if ds.class_names != numbered and ds.class_names != class_names[:ds.num_classes]:
        raise UserError(f"{args.dataset} names its classes {ds.class_names[:5]}..., the model "
                        f"{class_names[:5]}...: label ids would be compared across different "
                        "classes; relabel the dataset in the model's class order")
    if ds.num_classes < len(class_names):
        print(f"note: {args.dataset} has {ds.num_classes} of the model's {len(class_names)} "
              "classes; predictions of the others count as errors")
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
