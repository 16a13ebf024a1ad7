"""The shared command line and run machinery: notebook detection (Colab), the setup cell,
inline figures, flag checks, training budgets, resume only into the same run, finished
variants, the plan/ETA lines, the Ctrl-C message, and refusing models that are not classifiers."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT

import common
from common import UserError, callbacks, cli, plots, saving

# ---------------------------------------------------------------- notebooks and Colab

class KernelShell:  # stands in for ipykernel's ZMQInteractiveShell: it has a kernel
    kernel = object()


class ColabShell(KernelShell):  # google.colab._shell.Shell subclasses the Jupyter shell
    pass


class TerminalShell:  # IPython in a terminal: no kernel
    kernel = None


@pytest.mark.parametrize("shell, expected", [(ColabShell(), True), (KernelShell(), True),
                                             (TerminalShell(), False), (None, False)])
def test_in_notebook_detects_any_kernel_shell_including_colab(monkeypatch, shell, expected):
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)
    assert common.in_notebook() is expected


def test_in_a_notebook_flags_come_from_recipe_args(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "in_notebook", lambda: True)
    monkeypatch.setattr(sys, "argv", ["ipykernel_launcher.py", "-f", "/tmp/kernel.json"])
    monkeypatch.setenv("RECIPE_ARGS", f"--epochs 3 --seed 5 --out {tmp_path / 'o'}")
    args = cli.parse_args(cli.parser("demo", "a demo recipe"))
    assert (args.epochs, args.seed, args.out) == (3, 5, str(tmp_path / "o"))


def test_figures_show_inline_in_a_notebook_and_are_saved(monkeypatch, tmp_path):
    import IPython.display

    shown = []
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", shown.append)
    path = plots.bars({"a": 0.5, "b": 0.75}, tmp_path / "bars.png", "accuracy")
    assert path.is_file() and len(shown) == 1
    assert shown[0].data == path.read_bytes()  # the PNG that was saved is the one shown

    monkeypatch.setattr(plots, "in_notebook", lambda: False)
    plots.bars({"a": 0.5}, tmp_path / "b2.png", "accuracy")
    assert len(shown) == 1  # scripts only write files


SETUP = next(c for c in (ROOT / "recipes" / "backprop" / "backprop.py").read_text().split(
    "# %%") if c.startswith("\n# Setup"))


def run_setup(cwd, colab=False, env=None):
    """The recipes' setup cell in a python without site-packages (so the editable install of
    this project cannot make `common` importable), optionally with a stand-in google.colab."""
    prelude = "import sys, types; sys.modules['google.colab'] = types.ModuleType('colab')\n"
    code = (prelude if colab else "") + SETUP + "\nprint('root:', os.getcwd())\n"
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **(env or {})}, timeout=300)


def test_every_recipe_has_the_same_setup_cell():
    for script in sorted(ROOT.glob("recipes/*/*.py")):
        if script.stem == script.parent.name:
            assert SETUP in script.read_text(), f"{script}: setup cell differs"


def test_setup_cell_finds_the_repository_root_from_a_subfolder():
    done = run_setup(ROOT / "notebooks")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"root: {ROOT}"


def test_setup_cell_outside_a_clone_stops_with_one_line(tmp_path):
    done = run_setup(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "setup: run this from inside a clone of the repository" in done.stderr


def test_setup_cell_in_colab_asks_for_the_repository_url(tmp_path):
    done = run_setup(tmp_path, colab=True)
    assert "setup: set the repository's git URL first" in done.stderr
    assert "CNN_RECIPES_REPO" in done.stderr and not (tmp_path / "cnn-recipes").exists()
    done = run_setup(tmp_path, colab=True, env={"CNN_RECIPES_REPO": str(tmp_path / "nowhere")})
    assert f"setup: git clone {tmp_path / 'nowhere'} failed" in done.stderr
    assert "Traceback" not in done.stderr


def test_setup_cell_in_colab_clones_installs_and_enters_the_clone(tmp_path):
    # a local clone of this repository stands in for the URL (no network needed); pip finds
    # every pinned requirement already installed in this interpreter
    done = run_setup(tmp_path, colab=True, env={"CNN_RECIPES_REPO": f"file://{ROOT}"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith(f"root: {tmp_path / 'cnn-recipes'}")
    assert (tmp_path / "cnn-recipes" / "common" / "__init__.py").is_file()


# ---------------------------------------------------------------- flags


def parse(monkeypatch, *argv, **parser_options):
    monkeypatch.setattr(cli, "in_notebook", lambda: False)
    monkeypatch.setattr(sys, "argv", ["demo", *argv])
    return cli.parse_args(cli.parser("demo", "a demo recipe", **parser_options))


def test_help_shows_defaults_and_only_the_recipes_dataset_kinds(capsys, monkeypatch):
    with pytest.raises(SystemExit) as stop:
        parse(monkeypatch, "--help", epochs=12, budget_steps=900)
    shown = " ".join(capsys.readouterr().out.split())
    assert stop.value.code == 0
    assert "(default: 64)" in shown and "(default: runs/demo)" in shown
    assert "about 900 optimisation steps" in shown and "12 epochs at most" in shown
    assert "npz:FILE" in shown and "coco:" not in shown and "lines:" not in shown


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be an integer from 0"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--train-size", "lots"], "--train-size: must be a positive integer or 'all'"),
])
def test_bad_flags_exit_2_with_the_flag_named(monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        parse(monkeypatch, *argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_out_must_be_a_writable_folder(monkeypatch, tmp_path):
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    with pytest.raises(UserError, match="is an existing file"):
        parse(monkeypatch, "--out", str(existing))
    with pytest.raises(UserError, match="cannot write to --out"):
        parse(monkeypatch, "--out", str(existing / "sub"))
    assert existing.read_text() == "{}"  # nothing already written is lost


def test_auto_epochs_scale_with_the_dataset_and_batch_size_is_checked(monkeypatch, tmp_path):
    args = parse(monkeypatch, "--out", str(tmp_path), epochs=60, budget_steps=960, min_epochs=2)
    assert cli.training_budget(args, 1000) == 16 and args.epochs == 60  # the default data
    args = parse(monkeypatch, "--out", str(tmp_path), epochs=60, budget_steps=960, min_epochs=2)
    assert cli.training_budget(args, 60_000) == 938 and args.epochs == 2  # minutes, not hours
    args = parse(monkeypatch, "--out", str(tmp_path), "--epochs", "7", epochs=60, budget_steps=960)
    cli.training_budget(args, 60_000)
    assert args.epochs == 7  # an explicit --epochs wins
    args = parse(monkeypatch, "--out", str(tmp_path), "--batch-size", "100000")
    with pytest.raises(UserError, match="--batch-size 100000 is larger than the 500 training"):
        cli.training_budget(args, 500)


def test_train_size_is_a_class_balanced_subset_of_any_dataset(monkeypatch, tmp_path):
    x, y = np.zeros((1000, 4, 4, 1), np.uint8), np.repeat(np.arange(4), 250)
    args = parse(monkeypatch, "--out", str(tmp_path), "--train-size", "100")
    xs, ys = cli.train_subset(args, x, y)
    assert len(xs) == 100 and np.bincount(ys).tolist() == [25, 25, 25, 25]
    args = parse(monkeypatch, "--out", str(tmp_path))
    assert cli.train_subset(args, x, y)[0] is x  # all of it unless asked
    args = parse(monkeypatch, "--out", str(tmp_path), "--train-size", "3")
    with pytest.raises(UserError, match="smaller than the number of classes"):
        cli.train_subset(args, x, y)


# ---------------------------------------------------------------- resume, variants, progress


def tiny_model(inputs=3):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    return model


class StopAfterEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_a_backup_of_another_run_is_not_restored(tmp_path, capsys):
    rng = np.random.default_rng(0)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(3).fit(rng.random((32, 3)), np.arange(32) % 2, epochs=5, verbose=0,
                          callbacks=callbacks.standard(tmp_path, "demo") + [StopAfterEpoch()])
    assert str(tmp_path / "backup" / "demo") in callbacks.SAVED
    # another image shape into the same --out: this used to die restoring the old checkpoint
    history = tiny_model(5).fit(rng.random((32, 5)), np.arange(32) % 2, epochs=3, verbose=0,
                                callbacks=callbacks.standard(tmp_path, "demo"))
    assert len(history.history["loss"]) == 3  # trained from scratch
    assert "holds a backup of another run" in capsys.readouterr().out


def test_finished_variants_are_loaded_only_by_the_same_run(tmp_path, monkeypatch, capsys):
    args = parse(monkeypatch, "--out", str(tmp_path))
    model = tiny_model()
    model.fit(np.ones((8, 3)), np.arange(8) % 2, epochs=2, verbose=0)
    callbacks.Finished(tmp_path, args).save("first", model, {"scores": {"accuracy": 0.5}})

    again = tiny_model()
    record = callbacks.Finished(tmp_path, args).load("first", again)
    assert record == {"scores": {"accuracy": 0.5}}
    np.testing.assert_array_equal(again.get_weights()[0], model.get_weights()[0])
    assert callbacks.Finished(tmp_path, args).load("second", tiny_model()) is None

    other = parse(monkeypatch, "--out", str(tmp_path), "--seed", "1")
    assert callbacks.Finished(tmp_path, other).load("first", tiny_model()) is None
    assert "holds a backup of another run" in capsys.readouterr().out


def test_plan_announces_the_work_then_the_measured_eta(capsys):
    plan = callbacks.Plan(["a", "b"], epochs=3, steps_per_epoch=4)
    for name in ("a", "b"):
        tiny_model().fit(np.ones((16, 3)), np.arange(16) % 2, batch_size=4, epochs=3, verbose=0,
                         callbacks=[plan.callback(name)])
    out = capsys.readouterr().out
    assert "plan: 2 models x 3 epochs x 4 steps = 24 optimisation steps" in out
    assert "[1/2] a" in out and "measured" in out and "[2/2] b, about" in out


def test_ctrl_c_promises_a_resume_only_when_something_was_saved(tmp_path):
    def interrupt(script_text):
        (tmp_path / "demo.py").write_text(script_text + "raise KeyboardInterrupt\n")
        code = (f"from common.cli import run_script; "
                f"run_script({str(tmp_path / 'x.py')!r}, 'demo.py')")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)

    done = interrupt("")
    assert done.returncode == 130 and "interrupted before anything was saved" in done.stderr
    assert "Traceback" not in done.stderr
    done = interrupt("from common import callbacks\ncallbacks.SAVED.add('runs/x/backup/a')\n")
    assert done.returncode == 130 and "rerun the same command" in done.stderr
    assert "runs/x/backup/a" in done.stderr and "Traceback" not in done.stderr


# ---------------------------------------------------------------- saved models


def test_predict_refuses_a_model_that_is_not_a_classifier(tmp_path):
    embedder = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(1)])
    embedder.save(tmp_path / "model.keras")
    with pytest.raises(UserError, match="is not an image classifier"):
        saving.load_classifier(tmp_path / "model.keras")
    with pytest.raises(UserError, match="is a folder"):
        saving.load_model(tmp_path)


def test_evaluate_refuses_other_class_names_and_notes_conversions(tmp_path, monkeypatch, capsys):
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    saving.save_classifier(model, tmp_path / "run", ["cat", "dog", "fox"])
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_train=rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(12) % 2, x_test=rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8),
             y_test=np.arange(6) % 2, class_names=np.array(["cat", "dog"]))
    monkeypatch.setattr(cli, "in_notebook", lambda: False)
    monkeypatch.setattr(sys, "argv", ["demo", "evaluate", "--model",
                                      str(tmp_path / "run" / "model.keras"), "--dataset",
                                      f"npz:{data}"])
    args = cli.parse_args(cli.parser("demo", "demo"))
    scores = cli.evaluate_classifier(args)
    out = capsys.readouterr().out
    assert "converted to the model's 6x6x1 input" in out and "2 of the model's 3 classes" in out
    assert json.loads((tmp_path / "run" / "evaluate" / "results.json").read_text())[
        "metrics"] == scores

    np.savez(data, x=rng.integers(0, 255, (20, 6, 6, 1), dtype=np.uint8), y=np.arange(20) % 2,
             class_names=np.array(["owl", "emu"]))
    with pytest.raises(UserError, match="names its classes"):
        cli.evaluate_classifier(args)
