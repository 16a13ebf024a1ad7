"""The training side of the `distributed` recipe: strategies, a ResNet-style CNN, the custom
training loop that runs under MultiWorkerMirroredStrategy, `fit()` with BackupAndRestore, and a
launcher that starts N worker processes on this machine, one TF_CONFIG each.

    TF_CONFIG='{"cluster": ..., "task": ...}' python -m recipes.distributed.worker JOB.json

A job is a JSON dict (`JOB` lists its keys). Every worker of a cluster runs the same job; the
chief (task 0) writes `OUT/history.json` and, when asked, `OUT/model.keras`. Exit codes: 0 done,
2 bad input (TF_CONFIG, batch, a checkpoint of another run),
3 a peer was lost during training (rerun the same command: it resumes from the last checkpoint).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import UserError

# Every key a job may have, with its default.
JOB = {
    "dataset": "synthetic:shapes",  # a dataset spec (the launcher passes an npz it wrote)
    "seed": 0,
    "epochs": 3,
    "steps_per_epoch": None,  # None: every full global batch of the training split
    "global_batch": 64,
    "learning_rate": 0.05,  # already scaled for the global batch
    "width": 16,  # filters of the first stage of the CNN
    "blocks": [1, 1, 1],  # residual blocks per stage
    "loop": "custom",  # custom: strategy.run in a tf.function; fit: model.fit
    "strategy": "multiworker",  # none | mirrored | multiworker
    "replicas": 2,  # devices of MirroredStrategy (logical CPUs when there is no GPU)
    "precision": "float32",  # float32 | mixed_float16 | mixed_bfloat16 | float64
    "jit_compile": False,
    "timeout": 60,  # seconds a worker waits for its peers before it gives up
    "out": "runs/distributed/worker",
    "save_model": False,
    "class_names": None,  # saved beside the model (default: the dataset's)
}

PEER_LOST = 3  # exit code of a worker whose peer died mid-run


# ---------------------------------------------------------------- TF_CONFIG and the cluster


def parse_tf_config(text: str) -> dict:
    """TF_CONFIG checked the way MultiWorkerMirroredStrategy needs it; UserError otherwise."""
    example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(text)
    except ValueError as err:
        raise UserError(f"TF_CONFIG is not valid JSON ({err}); {example}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise UserError(f"TF_CONFIG needs a 'cluster' object; {example}")
    workers = config["cluster"].get("worker")
    if not isinstance(workers, list) or not workers or not all(
            isinstance(w, str) and w.rpartition(":")[2].isdigit() for w in workers):
        raise UserError(f"TF_CONFIG cluster.worker must be a list of 'host:port' strings, got "
                        f"{workers!r}; {example}")
    task = config.get("task")
    if not isinstance(task, dict) or task.get("type") not in ("worker", "chief"):
        raise UserError(f"TF_CONFIG task must be {{'type': 'worker', 'index': N}}, got {task!r}")
    index = task.get("index")
    if not isinstance(index, int) or not 0 <= index < len(workers):
        raise UserError(f"TF_CONFIG task.index must be 0..{len(workers) - 1} (one per "
                        f"cluster.worker address), got {index!r}")
    return config


def free_ports(n: int) -> list[int]:
    """N ports nobody listens on now (the OS picks them; a tiny race with other programs)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_tf_configs(n: int) -> list[dict]:
    """The TF_CONFIG of each of N workers on 127.0.0.1; worker 0 is the chief."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(n)]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(n)]


# ---------------------------------------------------------------- strategies


def use_cpu_replicas(n: int) -> None:
    """Split the CPU into N logical devices (when there is no GPU), so that MirroredStrategy
    has N replicas to mirror to. Must run before TensorFlow executes its first op."""
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or n < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:  # already initialised: keep what is there, if it is enough
        if len(tf.config.list_logical_devices("CPU")) < n:
            raise UserError(f"TensorFlow already started with fewer than {n} CPU devices: "
                            "start a new Python process (restart the notebook kernel)") from None


def make_strategy(name: str, replicas: int = 2, timeout: float = 60):
    """none: the default strategy (one device); mirrored: every GPU, or `replicas` logical
    CPUs; multiworker: the cluster of TF_CONFIG, with collectives that give up after
    `timeout` seconds instead of waiting for a dead peer forever."""
    import tensorflow as tf

    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [
            d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
        # on CPUs, NCCL does not exist: reduce through host memory
        cross_device = None if gpus else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=cross_device)
    if name == "multiworker":
        parse_tf_config(os.environ.get("TF_CONFIG", ""))
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        configure_coordination(timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise UserError(f"unknown strategy {name!r}: use none, mirrored or multiworker")


def configure_coordination(timeout: float) -> None:
    """Set up TensorFlow's coordination service the way MultiWorkerMirroredStrategy would,
    plus a registration deadline: a worker whose peers never join gets an error after
    `timeout` seconds (the default is to wait, holding Python's interpreter lock, for an hour,
    where no watchdog thread can run)."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = parse_tf_config(os.environ.get("TF_CONFIG", ""))["cluster"]
    spec = tf_cluster_spec(cluster)
    jobs = [coordination_config_pb2.CoordinatedJob(name=name, num_tasks=spec.num_tasks(name))
            for name in ("chief", "worker") if name in spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(timeout * 1000))
    # every task, the leader too, waits at a registration barrier that has the deadline
    context.context().coordination_service.cluster_register_with_barrier = True


def tf_cluster_spec(cluster: dict):
    import tensorflow as tf

    return tf.train.ClusterSpec(cluster)


def device_names(strategy) -> list[str]:
    """The devices the replicas of `strategy` run on (this worker's)."""
    import tensorflow as tf

    try:
        return list(strategy.extended.worker_devices)
    except RuntimeError:  # the default strategy: whatever device TensorFlow placed ops on
        gpus = tf.config.list_logical_devices("GPU")
        return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]


def is_chief() -> bool:
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    return config.get("task", {}).get("index", 0) == 0


# ---------------------------------------------------------------- the model and the data


def build_resnet(input_shape, num_classes: int, width: int = 16, blocks=(1, 1, 1),
                 name: str = "resnet", synchronized: bool = True):
    """A small ResNet: a conv stem, then stages of residual blocks that halve the resolution
    and double the filters. BatchNormalization is `synchronized`: its mean and variance come
    from the whole global batch (all replicas and workers), so that 1 device and N replicas
    compute the same thing; plain BatchNormalization would normalise each replica's share.
    (`synchronized` is TensorFlow-only: pass False on the JAX backend.)"""
    import keras
    from keras import layers

    def bn(x):
        return layers.BatchNormalization(synchronized=synchronized)(x)

    inputs = keras.Input(input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    stride = 2 if input_shape[0] >= 128 else 1  # ImageNet-size inputs: a strided stem
    x = layers.ReLU()(bn(layers.Conv2D(width, 7 if stride == 2 else 3, stride, padding="same",
                                       use_bias=False)(x)))
    if stride == 2:
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    for stage, count in enumerate(blocks):
        filters = width * 2**stage
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            y = layers.ReLU()(bn(layers.Conv2D(filters, 3, strides, padding="same",
                                               use_bias=False)(x)))
            y = bn(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = bn(layers.Conv2D(filters, 1, strides, use_bias=False)(shortcut))
            x = layers.ReLU()(layers.Add()([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    # softmax in float32 even under mixed precision: small probabilities would underflow
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    outputs = layers.Dense(num_classes, activation="softmax",
                           dtype="float32" if mixed else None)(x)
    return keras.Model(inputs, outputs, name=name)


def epoch_batches(x, y, global_batch: int, seed: int, epoch: int, steps: int):
    """The `steps` global batches of one epoch, shuffled by (seed, epoch) only: a run resumed
    at epoch k sees exactly the batches the uninterrupted run saw there. Whole batches only
    (drop_remainder), so every replica gets global_batch / replicas images."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed * 10_007 + epoch, reshuffle_each_iteration=False)
    ds = ds.batch(global_batch, drop_remainder=True).take(steps)
    ds = ds.map(lambda i, t: (tf.cast(i, tf.float32), t), num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    # DATA: every worker reads the same batches and keeps its own slice of each. (FILE, the
    # default for sharded files, would give each worker other files.)
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def load_job_data(job: dict):
    from common import data

    return data.require(data.load(job["dataset"], seed=job["seed"]), data.Classification,
                        job["dataset"])


# ---------------------------------------------------------------- checkpoints


def fingerprint(job: dict, input_shape, num_classes: int) -> dict:
    """What a checkpoint must match to be resumed: the model (architecture, input, classes) and
    the flags that shape the run. Computed without TensorFlow, so it is checked first."""
    keys = ("dataset", "seed", "epochs", "steps_per_epoch", "global_batch", "learning_rate",
            "loop", "precision")
    return {"model": f"resnet width {job['width']} blocks {list(job['blocks'])}, input "
                     f"{list(input_shape)}, "
                     f"{num_classes} classes", **{k: job[k] for k in keys}}


def claim_backup(directory: Path, owner: dict) -> None:
    """Refuse to resume (or overwrite) a checkpoint of another run: a multi-worker checkpoint
    often sits on shared storage, so deleting it on a hunch would be worse than stopping."""
    record = directory / "run.json"
    if record.is_file():
        try:
            found = json.loads(record.read_text())
        except ValueError:
            found = {}
        if found != owner:
            differs = sorted(k for k in set(found) | set(owner) if found.get(k) != owner.get(k))
            raise UserError(f"{directory} holds a checkpoint of another model or run (differs "
                            f"in: {', '.join(differs) or 'unreadable record'}): use another "
                            f"--out, or delete {directory} to start from scratch")
    elif directory.is_dir() and any(directory.iterdir()):
        raise UserError(f"{directory} holds files that are not a checkpoint of this recipe: "
                        "use another --out")
    directory.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(owner) + "\n")


# ---------------------------------------------------------------- a watchdog for dead peers


class Watchdog:
    """Ends this process with a clear message when no training step finishes within
    `timeout` seconds. A collective op (all-reduce) waiting for a dead worker blocks inside
    TensorFlow's C++ runtime, where no Python exception can reach it: a thread must exit."""

    def __init__(self, timeout: float, what: str, exit_code: int = PEER_LOST):
        self.timeout, self.what, self.last = timeout, what, time.monotonic()
        self.exit_code, self.stopped = exit_code, False
        if timeout:  # None: only a multi-worker run has peers to wait for
            threading.Thread(target=self._watch, daemon=True).start()

    def stop(self) -> None:
        self.stopped = True

    def alive(self, what: str | None = None, timeout: float | None = None,
              exit_code: int | None = None) -> None:
        self.last = time.monotonic()
        self.exit_code = exit_code or self.exit_code
        self.what = what or self.what
        self.timeout = timeout if self.timeout and timeout else self.timeout

    def _watch(self) -> None:
        while not self.stopped:
            time.sleep(1)
            if not self.stopped and time.monotonic() - self.last > self.timeout:
                print(f"error: {self.what}: no answer for {self.timeout:.0f} s; a peer is "
                      "unreachable or died (see TF_CONFIG). Rerun the same command once every "
                      "worker is up: it resumes from the last checkpoint", file=sys.stderr,
                      flush=True)
                if os.environ.get("DISTRIBUTED_DEBUG"):  # where each thread was stuck
                    import faulthandler

                    faulthandler.dump_traceback(all_threads=True)
                os._exit(self.exit_code)


# ---------------------------------------------------------------- training


def run_job(job: dict, callbacks: list | None = None) -> dict | None:
    """Train as one worker of `job`; returns the chief's record (None on other workers).
    `callbacks`: more Keras callbacks for the fit() path (e.g. progress)."""
    job = {**JOB, **job}
    import keras

    if job["strategy"] == "multiworker":
        parse_tf_config(os.environ.get("TF_CONFIG", ""))
    elif job["strategy"] == "mirrored":
        use_cpu_replicas(job["replicas"])
    if job["precision"] == "float64":  # variables, activations and the loss in float64
        keras.config.set_floatx("float64")
    if job["precision"] != "float32":
        keras.mixed_precision.set_global_policy(job["precision"])
    keras.utils.set_random_seed(job["seed"])
    ds = load_job_data(job)
    steps = len(ds.x_train) // job["global_batch"]
    if job["steps_per_epoch"]:
        steps = min(steps, job["steps_per_epoch"])
    if steps < 1:
        raise UserError(f"global batch {job['global_batch']} is larger than the "
                        f"{len(ds.x_train)} training images: use a smaller --batch-size")

    # Starting MultiWorkerMirroredStrategy waits until every worker has joined; a peer that
    # never comes would make it wait for a very long time.
    watchdog = Watchdog(job["timeout"] if job["strategy"] == "multiworker" else None,
                        "waiting for the other workers to join", exit_code=2)
    started = time.monotonic()
    try:
        strategy = make_strategy(job["strategy"], job["replicas"], job["timeout"])
    except Exception as err:  # noqa: BLE001 - collective start-up raises many types
        if isinstance(err, UserError):
            raise
        raise UserError(f"cannot join the cluster of TF_CONFIG after "
                        f"{time.monotonic() - started:.0f} s: {type(err).__name__}: "
                        f"{str(err).splitlines()[0]}; check that every worker is started and "
                        "reachable at its cluster.worker address") from None
    try:
        return _train(job, strategy, ds, steps, watchdog, callbacks or [])
    finally:
        watchdog.stop()
        keras.mixed_precision.set_global_policy("float32")  # in-process runs: leave it as found
        keras.config.set_floatx("float32")


def _train(job: dict, strategy, ds, steps: int, watchdog: Watchdog,
           callbacks: list) -> dict | None:
    import keras

    replicas = strategy.num_replicas_in_sync
    if job["global_batch"] % replicas:
        raise UserError(f"global batch {job['global_batch']} is not divisible by the "
                        f"{replicas} replicas: use a multiple of {replicas}, e.g. "
                        f"{max(replicas, job['global_batch'] // replicas * replicas)}")
    # the first step also traces and optimises the graph: minutes on a busy machine
    watchdog.alive("the first training step", max(job["timeout"], 600), exit_code=PEER_LOST)

    out = Path(job["out"])
    chief = is_chief()
    with strategy.scope():
        model = build_resnet(ds.x_train.shape[1:], ds.num_classes, job["width"], job["blocks"])
        optimizer = keras.optimizers.SGD(job["learning_rate"], momentum=0.9)
        if job["precision"] == "mixed_float16":  # float16 gradients need loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # the optimizer's slots are created now, under the strategy (mirrored, like the
        # weights): created lazily inside the distributed step, they could not be lifted out
        optimizer.build(model.trainable_variables)
    backup_dir = out / "backup"
    # every worker saves (saving may run collectives), but only the chief's copy is kept
    write_dir = backup_dir if chief else Path(tempfile.mkdtemp(prefix="worker_backup_"))
    if chief:
        claim_backup(backup_dir, fingerprint(job, ds.x_train.shape[1:], ds.num_classes))
    fit = job["loop"] == "fit"
    if fit:
        record = train_with_fit(job, strategy, model, optimizer, ds, steps, backup_dir,
                                watchdog, callbacks)
    else:
        record = train_custom(job, strategy, model, optimizer, ds, steps, backup_dir,
                              write_dir, watchdog)
    watchdog.alive("finishing (evaluation, saving)", max(job["timeout"], 600))
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    # plain calls, not model.predict: under MultiWorkerMirroredStrategy predict would run
    # collectives, and the test split is small enough for each worker to score it locally
    record["test_accuracy"] = test_accuracy(model, ds.x_test, ds.y_test)
    record["replicas"] = replicas
    record["devices"] = device_names(strategy)
    record["steps_per_epoch"] = steps
    if chief and job["save_model"]:
        from common.saving import save_classifier

        save_classifier(model, out, job["class_names"] or ds.class_names)
    if chief:
        out.mkdir(parents=True, exist_ok=True)
        (out / "history.json").write_text(json.dumps(record, default=float) + "\n")
    barrier(strategy)  # no worker leaves while another may still need it
    return record if chief else None


def test_accuracy(model, x, y, batch_size: int = 256) -> float:
    import numpy as np

    predicted = np.concatenate([np.asarray(model(x[i:i + batch_size].astype("float32"),
                                                 training=False)).argmax(-1)
                                for i in range(0, len(x), batch_size)])
    return float((predicted == y).mean())


def barrier(strategy) -> None:
    """Wait until every worker gets here (an all-reduce of one number)."""
    import tensorflow as tf

    def one():
        return tf.constant(1.0)

    @tf.function
    def all_reduce_one():
        return strategy.reduce("SUM", strategy.run(one), axis=None)

    if strategy.extended._in_multi_worker_mode():  # noqa: SLF001 - no public equivalent
        all_reduce_one()
        # the all-reduce completes on one worker while a peer may still be receiving its last
        # buffer: leaving at once closes the socket under it ("RecvBuf: Socket closed"), seen
        # on a loaded machine; a short wait lets every peer finish before anyone exits
        time.sleep(3)


def train_custom(job, strategy, model, optimizer, ds, steps, backup_dir, write_dir, watchdog):
    """The loop that works under MultiWorkerMirroredStrategy with a Keras 3 model (Keras 3's
    fit() fails there): each replica computes the loss of its share of the global batch,
    `compute_average_loss` divides by the *global* batch size, and the optimizer all-reduces
    (sums) the gradients across replicas before it applies them, on every replica alike."""
    import keras
    import tensorflow as tf

    global_batch = job["global_batch"]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            per_example = loss_fn(labels, probabilities)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            loss = loss + tf.nn.scale_regularization_loss(model.losses) if model.losses else loss
            scaled_loss = optimizer.scale_loss(loss) if scaled else loss
        correct = tf.reduce_sum(tf.cast(tf.argmax(probabilities, -1) == labels, tf.float32))
        return loss, correct, tape.gradient(scaled_loss, model.trainable_variables)

    if job["jit_compile"]:  # XLA compiles the replica's forward and backward pass
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(images, labels):
        loss, correct, grads = gradients(images, labels)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduce inside
        return loss, correct

    @tf.function
    def train_step(batch):
        loss, correct = strategy.run(replica_step, args=batch)
        return (strategy.reduce("SUM", loss, axis=None),
                strategy.reduce("SUM", correct, axis=None))

    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(checkpoint, str(write_dir), max_to_keep=2)
    state_file = backup_dir / "state.json"
    state = {"epoch": 0, "losses": [], "epoch_loss": [], "epoch_accuracy": []}
    resumed_from = 0
    latest = tf.train.latest_checkpoint(str(backup_dir))
    if latest and state_file.is_file():
        saved = json.loads(state_file.read_text())
        try:
            checkpoint.restore(str(backup_dir / f"ckpt-{saved['epoch']}")
                               ).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as err:
            raise UserError(f"the checkpoint in {backup_dir} does not fit this model "
                            f"({type(err).__name__}): use another --out") from None
        state, resumed_from = saved, saved["epoch"]
        print(f"resuming after epoch {resumed_from} from {backup_dir}", flush=True)
    # One distributed dataset for all the remaining epochs: train_step is traced once (a new
    # distributed dataset per epoch would trace it again, which takes seconds).
    batches = epoch_batches(ds.x_train, ds.y_train, global_batch, job["seed"], state["epoch"],
                            steps)
    for epoch in range(state["epoch"] + 1, job["epochs"]):
        batches = batches.concatenate(epoch_batches(
            ds.x_train, ds.y_train, global_batch, job["seed"], epoch, steps))
    iterator = iter(strategy.experimental_distribute_dataset(batches))
    for epoch in range(state["epoch"], job["epochs"]):
        total_loss, total_correct, epoch_started = 0.0, 0.0, time.monotonic()
        for _ in range(steps):
            loss, correct = train_step(next(iterator))
            loss = float(loss)  # waits for the step (and its all-reduce) to finish
            watchdog.alive("training (waiting for a peer's all-reduce)", job["timeout"])
            state["losses"].append(loss)
            total_loss, total_correct = total_loss + loss, total_correct + float(correct)
        state["epoch_loss"].append(total_loss / steps)
        state["epoch_accuracy"].append(total_correct / (steps * global_batch))
        state["epoch"] = epoch + 1
        manager.save(checkpoint_number=epoch + 1)
        watchdog.alive()
        if write_dir == backup_dir:  # the chief: the state last, once the checkpoint is whole
            tmp = state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(state))
            tmp.replace(state_file)
        print(f"epoch {epoch + 1}/{job['epochs']}: loss {state['epoch_loss'][-1]:.4f}, "
              f"accuracy {state['epoch_accuracy'][-1]:.4f} ({time.monotonic() - epoch_started:.1f} s)",
              flush=True)
    # the input pipeline's iterator is released here, under a label of its own: on a busy
    # machine tearing down its background threads can take a while
    watchdog.alive("releasing the input pipeline", max(job["timeout"], 600))
    del iterator, batches
    return {"losses": state["losses"], "epoch_loss": state["epoch_loss"],
            "epoch_accuracy": state["epoch_accuracy"], "resumed_from_epoch": resumed_from,
            "final_loss": state["epoch_loss"][-1]}


def train_with_fit(job, strategy, model, optimizer, ds, steps, backup_dir, watchdog,
                   callbacks=()):
    """model.fit under the strategy (none or mirrored), with BackupAndRestore: a rerun after
    a crash restores weights, optimizer state and the epoch. The input is a function of the
    epoch (see epoch_batches), started at the epoch the backup resumes, so the resumed epochs
    see the same batches as an uninterrupted run's."""
    import keras

    with strategy.scope():
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], jit_compile=job["jit_compile"])
    metadata = backup_dir / "training_metadata.json"
    start = json.loads(metadata.read_text())["epoch"] if metadata.is_file() else 0
    if start:
        print(f"resuming after epoch {start} from {backup_dir}", flush=True)
    batches = epoch_batches(ds.x_train, ds.y_train, job["global_batch"], job["seed"], start,
                            steps)
    for epoch in range(start + 1, job["epochs"]):
        batches = batches.concatenate(epoch_batches(
            ds.x_train, ds.y_train, job["global_batch"], job["seed"], epoch, steps))

    from common.callbacks import verbose

    history = model.fit(batches, epochs=job["epochs"], steps_per_epoch=steps, verbose=verbose(),
                        callbacks=[keras.callbacks.BackupAndRestore(str(backup_dir)),
                                   *callbacks])
    losses = history.history.get("loss", [])
    return {"epoch_loss": losses, "epoch_accuracy": history.history.get("accuracy", []),
            "resumed_from_epoch": start, "final_loss": losses[-1] if losses else None}


# ---------------------------------------------------------------- the launcher


def launch(job: dict, workers: int, *, timeout: float | None = None, log_dir: Path | None = None,
           kill: tuple[int, Path] | None = None, echo: bool = False) -> list[int]:
    """Start `workers` processes of this module on 127.0.0.1, one TF_CONFIG each, and wait.
    Returns their exit codes (negative: killed by that signal). `timeout` bounds the whole
    run: processes still alive then are terminated. `kill=(index, file)` SIGKILLs worker
    `index` as soon as `file` exists (the fault-tolerance demonstration). `echo`: print the
    chief's progress lines (its log, less TensorFlow's own chatter) as they come."""
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir or out / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    job_file = out / "job.json"
    job_file.write_text(json.dumps({**JOB, **job}, indent=1) + "\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    multiworker = job.get("strategy", JOB["strategy"]) == "multiworker"
    processes = []
    for config in local_tf_configs(workers):
        index = config["task"]["index"]
        log = open(log_dir / f"worker{index}.log", "w")  # noqa: SIM115 - closed below
        processes.append((subprocess.Popen(
            [sys.executable, "-m", "recipes.distributed.worker", str(job_file)],
            cwd=root, env={**env, "TF_CONFIG": json.dumps(config)} if multiworker else env,
            stdout=log,
            stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + (timeout or 1e9)
    killed, shown = False, 0
    while any(p.poll() is None for p, _ in processes):
        if echo:
            shown = _echo(log_dir / "worker0.log", shown)
        if kill and not killed and kill[1].exists():
            processes[kill[0]][0].send_signal(signal.SIGKILL)
            killed = True
        if time.monotonic() > deadline:
            for p, _ in processes:
                if p.poll() is None:
                    p.terminate()
            break
        time.sleep(0.05)
    codes = [p.wait() for p, _ in processes]
    for _, log in processes:
        log.close()
    if echo:
        _echo(log_dir / "worker0.log", shown)
    return codes


def _echo(log: Path, shown: int) -> int:
    """Print the complete lines of `log` after the first `shown` ones; returns the new count."""
    lines = log.read_text(errors="replace").split("\n")[:-1] if log.exists() else []
    for line in lines[shown:]:
        if not line.startswith(("WARNING", "I0000", "W0000", "E0000")) and line.strip():
            print(f"[worker 0] {line}", flush=True)
    return len(lines)


def describe(codes: list[int], log_dir: Path) -> str:
    """One line per worker: its exit and the last line of its log."""
    lines = []
    for index, code in enumerate(codes):
        tail = (log_dir / f"worker{index}.log").read_text().strip().splitlines()
        last = next((t for t in reversed(tail) if t.startswith("error:")), tail[-1] if tail else "")
        how = (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
        lines.append(f"worker {index}: {how}; last line: {last[:300]}")
    return "\n".join(lines)


def _reason(err: Exception) -> str:
    """The informative line of a collective's error (the first is often 'Graph execution
    error:'): which task stopped answering, or what timed out."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for key in ("unhealthy", "/job:worker/replica", "connect", "heartbeat", "timed out",
                "Deadline"):
        for i, line in enumerate(lines):
            if key in line and "function_node" not in line:
                return " ".join(lines[i:i + 2])[:300]
    return (lines[-1] if lines else type(err).__name__)[:300]


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: TF_CONFIG=... python -m recipes.distributed.worker JOB.json",
              file=sys.stderr)
        return 2
    from common import import_tensorflow_quietly

    try:
        job = json.loads(Path(argv[0]).read_text())
        import_tensorflow_quietly()
        run_job(job)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    except Exception as err:  # noqa: BLE001 - a lost peer surfaces as many error types
        import tensorflow as tf

        if isinstance(err, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                            tf.errors.CancelledError, tf.errors.InternalError,
                            tf.errors.AbortedError)):
            print(f"error: lost a peer during training ({type(err).__name__}: "
                  f"{_reason(err)}). Rerun the same command once "
                  "every worker is up: it resumes from the last checkpoint", file=sys.stderr,
                  flush=True)
            return PEER_LOST
        raise
    return 0


if __name__ == "__main__":
    # os._exit: TensorFlow's collective runtime can keep a finished process alive while it
    # waits on a dead peer; the result is written, so leave now
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
