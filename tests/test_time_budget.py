"""callbacks.TimeBudget: training stops near its budget, the learning-rate schedule is fitted to
it (warm-up to the peak, cosine decay to about 0 at the last step), validation is not counted;
the --time-budget flag. No timing precision is asserted beyond generous bounds."""

import time

import keras
import numpy as np
import pytest

from common import callbacks, cli

PEAK = 1e-2


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                              keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    model.compile(keras.optimizers.Adam(PEAK), "sparse_categorical_crossentropy")
    return model


def data(n=2048):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8, 8, 1)).astype("float32"), rng.integers(0, 3, n)


@pytest.mark.parametrize("seconds", [4.0])
def test_stops_near_the_budget_with_the_schedule_at_its_end(seconds, capsys):
    x, y = data()
    model = tiny_model()
    # build the training step first: on a loaded machine tracing alone can take seconds, and
    # the budget (which counts it, as it should) would then end before any speed is measured
    model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0)
    budget = callbacks.TimeBudget(seconds, PEAK, steps_per_epoch=len(x) // 32, name="tiny")
    started = time.perf_counter()
    history = model.fit(x, y, batch_size=32, epochs=budget.max_epochs, verbose=0,
                        validation_data=(x[:64], y[:64]), callbacks=[budget])
    wall = time.perf_counter() - started
    # stopped by the budget, not by the epoch count, and neither long before nor long after it
    assert len(history.history["loss"]) < budget.max_epochs
    assert 0.5 * seconds <= budget.seconds <= seconds + 2.0
    assert wall >= budget.seconds  # validation ran on top of the training time
    assert budget.steps > budget.calibration_steps
    # the schedule: a warm-up from 0 to the peak, then a decay to about 0 at the last step
    rates = np.array(budget.learning_rates)
    assert len(rates) == budget.steps and rates[0] == 0
    assert rates.max() == pytest.approx(PEAK, rel=0.05)
    assert rates[-1] < 0.15 * PEAK
    peak_at = int(rates.argmax())
    assert np.all(np.diff(rates[peak_at:]) <= 1e-12 + 0.1 * PEAK)  # decays (plan revisions wobble)
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(
        rates[-1], rel=1e-5)
    out = capsys.readouterr().out
    assert "tiny: time budget 4 s:" in out and "cosine decay to 0" in out and "stopped at" in out


def test_epoch_cap_wins_over_a_long_budget():
    x, y = data(64)
    model = tiny_model()
    budget = callbacks.TimeBudget(600, PEAK, steps_per_epoch=2, max_epochs=20,
                                  calibration_steps=5, verbose=False)
    history = model.fit(x, y, batch_size=32, epochs=budget.max_epochs, verbose=0,
                        callbacks=[budget])
    assert len(history.history["loss"]) == 20 and budget.steps == 40
    assert budget.planned_steps == 40 and budget.learning_rates[-1] < 0.05 * PEAK


def test_learning_rate_shape():
    budget = callbacks.TimeBudget(10, 1.0, steps_per_epoch=10, calibration_steps=10)
    budget.planned_steps, budget.warmup_steps = 1000, 100
    assert budget.learning_rate(0) == 0 and budget.learning_rate(50) == pytest.approx(0.5)
    assert budget.learning_rate(100) == pytest.approx(1.0)
    assert budget.learning_rate(550) == pytest.approx(0.5)
    assert budget.learning_rate(1000) == pytest.approx(0.0, abs=1e-12)


def test_flag_is_checked_and_plan_says_the_budget(monkeypatch, capsys):
    monkeypatch.setattr(cli, "in_notebook", lambda: False)
    monkeypatch.setattr("sys.argv", ["demo", "--time-budget", "0"])
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(cli.parser("demo", "a demo", time_budget="per model"))
    assert stopped.value.code == 2
    assert "--time-budget must be a positive number of seconds" in capsys.readouterr().err
    assert "--time-budget" not in cli.parser("demo", "a demo").format_help()
    callbacks.Plan(["a", "b"], 3, 10, time_budget=30)
    assert "plan: 2 models x 30 s of training each" in capsys.readouterr().out
