"""The shared layer of the recipe collection: datasets, tf.data pipelines, results, plots, CLI."""

import os
import sys
import warnings

# Quieter TensorFlow start-up for scripts and notebooks; users may override.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Keras warns on every fit() that shuffle=True means nothing for a tf.data.Dataset: our
# pipelines shuffle themselves, so the warning is noise. Real warnings still show.
warnings.filterwarnings("ignore", message=r"`shuffle=True` was passed", category=UserWarning)


class UserError(Exception):
    """A problem with the user's input: printed as one clear line, exit code 2, no traceback."""


def in_notebook() -> bool:
    """True inside a running IPython kernel: Jupyter, Colab (whose shell is a subclass of
    Jupyter's), VS Code. False in a terminal IPython and when a library merely imported IPython."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def import_tensorflow_quietly():
    """Import TensorFlow with its C++ start-up chatter hidden ("Could not find cuda drivers",
    "failed call to cuInit" on machines without a GPU): those lines are written before any log
    level applies. Python errors still raise; logs after start-up follow TF_CPP_MIN_LOG_LEVEL."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the CUDA probe happens here, once
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    return tf
