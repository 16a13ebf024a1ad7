"""distributed: a smoke run with --workers 2 (its notebook too) that trains through the
launcher, compares 1 device / 2 replicas / 2 workers step by step, SIGKILLs a one-machine fit()
run and one of two workers and resumes both; predict / evaluate on the saved model; bad input
(TF_CONFIG, batch, someone else's checkpoint) refused with exit code 2."""

import json
import subprocess
import sys
from importlib.util import find_spec

import numpy as np
import pytest
from conftest import ENV, ROOT, smoke
from PIL import Image

from common import synthetic
from recipes.distributed import worker


@pytest.fixture(scope="module")
def workers_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed") / "run"
    return out, smoke("distributed", out, "--workers", "2", notebook=True)  # + its notebook


def test_two_workers_learn_and_match_one_device_step_by_step(workers_run):
    out, results = workers_run
    m = results["metrics"]
    assert m["replicas"] == 2 and results["args"]["strategy"] == "multiworker"
    assert m["global_batch"] == 64 and m["learning_rate"] == pytest.approx(0.05)
    assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1
    history = json.loads((out / "history.json").read_text())  # written by the chief
    assert history["replicas"] == 2 and len(history["epoch_loss"]) == 2
    eq = m["equivalence"]
    assert eq["steps"] == 6 and eq["precision"] == "float64" and eq["tolerance"] == 1e-9
    # float64: the distributed step computes what one device computes, up to rounding
    assert eq["max_loss_diff"] == max(eq["mirrored_max_loss_diff"],
                                      eq["multiworker_max_loss_diff"]) <= eq["tolerance"]
    # float32: the same at the first step; afterwards rounding is amplified (not asserted)
    assert eq["float32_first_step_loss_diff"] <= eq["float32_first_step_tolerance"] == 1e-5
    assert eq["float32_max_loss_diff"] >= eq["float32_first_step_loss_diff"]
    curves = {name: json.loads((out / "equivalence" / name / "history.json").read_text())
              for name in ("none", "mirrored", "multiworker")}
    assert len(curves["mirrored"]["devices"]) == 2  # two replicas, really
    assert curves["multiworker"]["replicas"] == 2 and len(curves["multiworker"]["devices"]) == 1
    assert curves["none"]["losses"][0] != curves["none"]["losses"][-1]  # it trained
    for png in ("equivalence.png", "confusion.png", "training_curves.png"):
        assert (out / png).stat().st_size > 5000, png


def test_sigkilled_runs_resume_to_the_same_final_metric(workers_run):
    out, results = workers_run
    resume = results["metrics"]["resume"]
    one, two = resume["one_machine"], resume["two_workers"]
    assert one["killed_worker_exit_code"] == -9 and two["killed_worker_exit_code"] == -9
    assert one["resumed_from_epoch"] >= 1 and two["resumed_from_epoch"] >= 1
    # the surviving worker did not hang: it gave up with exit code 3 and said why
    assert two["survivor_exit_code"] == worker.PEER_LOST
    survivor_log = (out / "resume" / "two_workers" / "logs" / "worker0.log").read_text()
    assert "error: " in survivor_log and "resumes from the last checkpoint" in survivor_log
    assert "resuming after epoch" in (out / "resume" / "two_workers" / "logs" / "rerun" /
                                      "worker0.log").read_text()
    assert resume["final_metric_diff"] == max(one["final_metric_diff"],
                                              two["final_metric_diff"]) <= resume["tolerance"]
    assert one["final_loss_diff"] < 1e-3 and two["final_loss_diff"] < 1e-3


def test_model_parallel_layouts_are_ignored_on_tensorflow_and_split_on_jax(workers_run):
    _, results = workers_run
    mp = results["metrics"]["model_parallel"]
    assert mp["variables_with_layout"] >= 5  # every conv and dense kernel got a layout
    assert mp["variables_split"] == 0  # the TensorFlow backend ignores it
    if find_spec("jax") is None:  # make test installs it (make frameworks-deps)
        assert mp["jax"] is None
    else:  # the same layouts on the JAX backend split every kernel across 2 devices
        assert mp["jax"]["backend"] == "jax" and len(mp["jax"]["devices"]) == 2
        assert mp["jax"]["variables_split"] == mp["jax"]["variables_with_layout"] >= 5
        assert np.isfinite(mp["jax"]["fit_loss"])


def test_predict_and_evaluate_the_saved_model(workers_run, run_here, tmp_path):
    out, results = workers_run
    images, labels = synthetic.make_shapes(40, image_size=32, seed=7)
    for i in range(2):
        Image.fromarray(images[i]).save(tmp_path / f"{i}.png")
    done = run_here("distributed", "predict", "--model", str(out / "model.keras"),
                    str(tmp_path / "0.png"), str(tmp_path / "1.png"))
    assert done.returncode == 0, done.stderr
    lines = [line.split("\t") for line in done.stdout.strip().splitlines()]
    assert [p for p, _ in lines] == [str(tmp_path / "0.png"), str(tmp_path / "1.png")]
    assert all(name in synthetic.SHAPES for _, name in lines)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    done = run_here("distributed", "evaluate", "--model", str(out / "model.keras"),
                    "--dataset", f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]
    assert 0 <= scores["test_accuracy"] <= 1


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1"]}, "task": {"type": "worker", "index": 0}}',
     "'host:port' strings"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task.index must be 0..1"),
    (None, "needs TF_CONFIG"),
])
def test_malformed_tf_config_is_refused(run_here, monkeypatch, tmp_path, tf_config, message):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    done = run_here("distributed", "--strategy", "multiworker", "--smoke", "--out",
                    str(tmp_path))
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_batch_flags_and_someone_elses_checkpoint_are_refused(run_here, tmp_path):
    done = run_here("distributed", "--global-batch", "33", "--replicas", "2", "--smoke",
                    "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and "33 is not divisible by the 2 replicas" in done.stderr
    done = run_here("distributed", "--workers", "2", "--strategy", "mirrored", "--smoke",
                    "--out", str(tmp_path / "b"))
    assert done.returncode == 2 and "drop --strategy mirrored" in done.stderr
    done = run_here("distributed", "--jit-compile", "--smoke", "--out", str(tmp_path / "x"))
    assert done.returncode == 2 and "--jit-compile with MirroredStrategy" in done.stderr
    # a checkpoint of another model (width 8 vs 16) in OUT/backup is not resumed, nor deleted
    backup = tmp_path / "c" / "backup"
    backup.mkdir(parents=True)
    owner = worker.fingerprint({**worker.JOB, "width": 16}, (32, 32, 3), 10)
    (backup / "run.json").write_text(json.dumps(owner))
    done = run_here("distributed", "--strategy", "none", "--smoke", "--out",
                    str(tmp_path / "c"))
    assert done.returncode == 2 and "holds a checkpoint of another model" in done.stderr
    assert "model" in done.stderr.split("differs in:")[1] and (backup / "run.json").exists()
    assert "Traceback" not in done.stderr


def test_mixed_precision_and_xla_train_on_both_paths(tmp_path):
    """--precision mixed_float16 (loss scaling) with XLA in the custom loop, mixed_bfloat16
    with XLA in fit(): one device, a few steps, in this process."""
    images, labels = synthetic.make_shapes(96, image_size=32, seed=0)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels, x_test=images[:20],
             y_test=labels[:20])
    for loop, precision in (("custom", "mixed_float16"), ("fit", "mixed_bfloat16")):
        record = worker.run_job({"dataset": f"npz:{tmp_path / 'd.npz'}", "epochs": 1,
                                 "steps_per_epoch": 2, "global_batch": 16, "width": 4,
                                 "blocks": [1], "loop": loop, "strategy": "none",
                                 "precision": precision, "jit_compile": True,
                                 "out": str(tmp_path / loop)})
        assert np.isfinite(record["final_loss"]) and 0 <= record["test_accuracy"] <= 1, loop
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards


def test_a_worker_whose_peer_never_comes_exits_2_instead_of_hanging(tmp_path):
    """Worker 1 of a 2-worker cluster whose worker 0 is never started: TensorFlow's
    registration barrier (deadline --timeout) ends the wait with a clear message."""
    ports = worker.free_ports(2)
    config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
              "task": {"type": "worker", "index": 1}}
    done = subprocess.run(
        [sys.executable, "-m", "recipes.distributed", "--strategy", "multiworker", "--smoke",
         "--timeout", "5", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        env={**ENV, "TF_CONFIG": json.dumps(config)}, timeout=600)  # a hang guard only
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: " in done.stderr and "unreachable" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
