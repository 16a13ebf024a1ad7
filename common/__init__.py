"""The shared layer of the recipe collection: datasets, tf.data pipelines, results, plots, CLI."""

import os

# Quieter TensorFlow start-up for scripts and notebooks; users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""
