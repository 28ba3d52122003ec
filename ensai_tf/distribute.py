"""Training on several devices or machines: strategies, ``TF_CONFIG``, the chief, the input.

``ensai train --strategy mirrored`` spreads one run over the GPUs of one
machine (``tf.distribute.MirroredStrategy``); ``--strategy multi-worker``
over several machines (``tf.distribute.MultiWorkerMirroredStrategy``), one
``ensai train`` process per machine, each given the cluster by the standard
``TF_CONFIG`` environment variable (:func:`read_tf_config`). Cluster
recipes: docs/scaling.md.

The rules (docs/design.md §7.2, §11 rule 4):

- **The global batch is ``train.batch_size``**, split evenly over the
  replicas of all workers: the learning rate, the plateau schedule and the
  steps per epoch mean what they mean on one machine, with no rate scaling.
  Step ``s`` trains on examples ``s*B ... s*B + B - 1`` of the train seed
  stream, as a one-process run: replica ``r`` (counted over all workers)
  simulates examples ``s*B + r*b ... s*B + r*b + b - 1``, ``b = B / replicas``
  (:func:`training_dataset`), built per worker with
  ``Strategy.distribute_datasets_from_function``, which neither shards nor
  rebatches. tf.data's auto-sharding is not used: ``AutoShardPolicy.DATA``
  would make every worker simulate every example and keep a part (a
  ``W``-fold waste of the CPU-bound simulation), and ``FILE`` has no files
  to split in an online stream. Every example depending only on its
  stateless seed, a worker's part is bit for bit the examples a one-process
  run puts there; only the float32 summation order of the gradient differs.
- **Every replica evaluates the whole validation set**
  (:func:`replicated_dataset`): the validation loss, summed over replicas
  by Keras' metrics, is the one-process value on every worker, so the
  plateau schedule and the best checkpoint decide the same on all of them.
- **Only the chief writes the run folder.** The chief is the task of type
  ``"chief"``, or worker 0 when the cluster names no chief (as TensorFlow
  decides). Every other worker runs the same steps (collective operations
  need all workers, saving included) into a private scratch folder
  (:func:`scratch_folder`), deleted when it ends; it never takes the run
  folder's lock nor writes there.
- **Resuming** (``--resume`` on every worker) needs the model folder on a
  file system that every worker can read, as TensorFlow's own fault
  tolerance does: the chief settles its backup, then each other worker
  copies the run's state into its scratch folder (:func:`copy_run_state`),
  so all restore the same weights, epoch and callback state.
- **A lost worker stops the run** on every other worker with an error
  (TensorFlow's coordination service notices the missing heartbeat), and
  ``--resume`` on all workers continues from the last completed epoch.

Networks with batch normalisation normalise over each replica's ``b``
examples, as with any ``tf.distribute`` strategy, so their weights are not
those of a one-process run.
"""

import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import socket
import tempfile

import tensorflow as tf
from keras.src.backend.tensorflow import trainer as keras_tf_trainer

from ensai_tf import config as config_lib
from ensai_tf.data.examples import INT64_MAX, simulate_and_observe
from ensai_tf.data.pipeline import (load_stamps, observe_stage, parallel_map, seed_stage,
                                    stored_arcs_dataset, to_supervised)
from ensai_tf.dirlock import LOCK_NAME, process_alive, read_lock_owner
from ensai_tf.errors import EnsaiError, InputError, ModelDirError
from ensai_tf.model_dir import BACKUP_DIR, BEST_KERAS, CONFIG_YAML, LOG_CSV, MODEL_KERAS
from ensai_tf.quiet import is_verbose, native_stderr_filtered

__all__ = [
    "RUN_STATE",
    "STRATEGIES",
    "TF_CONFIG_ENV",
    "ClusterTask",
    "agreed",
    "all_workers",
    "copy_run_state",
    "keras_fit",
    "is_multi_worker",
    "make_strategy",
    "read_tf_config",
    "replica_batch_size",
    "replicated_dataset",
    "scratch_folder",
    "training_dataset",
    "worker_lost_error",
]

STRATEGIES = ("mirrored", "multi-worker")
"""Names of ``ensai train --strategy``: one machine's devices, or several machines."""

TF_CONFIG_ENV = "TF_CONFIG"
"""The environment variable holding the cluster and this process's task (JSON)."""

RUN_STATE = (CONFIG_YAML, LOG_CSV, BEST_KERAS, MODEL_KERAS, BACKUP_DIR)
"""What a resumed run reads from its folder: copied by the other workers from the chief's."""

_WORKER_JOBS = ("chief", "worker")

_KERAS_REDUCE = keras_tf_trainer.reduce_per_replica


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, from ``TF_CONFIG``.

    Attributes:
        task_type: ``"chief"`` or ``"worker"``.
        index: the task's index within its type.
        num_workers: training processes in the cluster (chief and workers).
        is_chief: whether this task writes the run folder.
    """

    task_type: str
    index: int
    num_workers: int
    is_chief: bool

    @property
    def name(self):
        """``"<type> <index>"``, as messages name a task."""
        return f"{self.task_type} {self.index}"


def _malformed(reason):
    return InputError(f"{TF_CONFIG_ENV} is malformed: {reason}; expected e.g. "
                      '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def read_tf_config(environ=None):
    """This process's task in the cluster of the ``TF_CONFIG`` environment variable.

    The chief is the task of type ``"chief"``, or worker 0 when the cluster
    has no ``"chief"`` job, as TensorFlow decides.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        :class:`ClusterTask`.

    Raises:
        InputError: ``TF_CONFIG`` is unset, not JSON, or does not describe a
            cluster of ``"chief"``/``"worker"`` tasks holding this task
            (one line naming what is wrong).

    Example:
        >>> env = {"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:1"]}, '
        ...                     '"task": {"type": "worker", "index": 1}}'}
        >>> read_tf_config(env)
        ClusterTask(task_type='worker', index=1, num_workers=2, is_chief=False)
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG_ENV, "").strip()
    if not text:
        raise InputError(f"--strategy multi-worker needs the {TF_CONFIG_ENV} environment variable "
                         "(the cluster's addresses and this process's task), and it is not set")
    try:
        spec = json.loads(text)
    except ValueError as err:
        raise _malformed(f"not JSON ({err})") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _malformed('it needs a "cluster" object and a "task" object')
    for job, addresses in cluster.items():
        if not addresses or not isinstance(addresses, list) \
                or not all(isinstance(a, str) and a.strip() for a in addresses):
            raise _malformed(f'cluster job {job!r} must be a non-empty list of "host:port"s')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in _WORKER_JOBS:
        raise _malformed(f'task type {task_type!r} cannot train; use "chief" or "worker"')
    if task_type not in cluster:
        raise _malformed(f"task type {task_type!r} is not a job of the cluster "
                         f"({', '.join(map(repr, cluster))})")
    if isinstance(index, bool) or not isinstance(index, int) \
            or not 0 <= index < len(cluster[task_type]):
        raise _malformed(f"task index {index!r} is not one of the {len(cluster[task_type])} "
                         f"{task_type} addresses")
    if len(cluster.get("chief", ())) > 1:
        raise _malformed("a cluster has at most one chief")
    num_workers = sum(len(cluster.get(job, ())) for job in _WORKER_JOBS)
    is_chief = task_type == "chief" or ("chief" not in cluster and index == 0)
    return ClusterTask(task_type, index, num_workers, is_chief)


def make_strategy(name):
    """The ``tf.distribute`` strategy of ``ensai train --strategy NAME``.

    Args:
        name: None (the default strategy: one device), ``"mirrored"`` (all
            GPUs of this machine, or all logical CPUs without one) or
            ``"multi-worker"`` (the cluster of ``TF_CONFIG``; this process's
            GPUs, or its CPU).

    Returns:
        ``tf.distribute.Strategy``.

    Raises:
        InputError: an unknown name, a missing or malformed ``TF_CONFIG``,
            or a multi-worker strategy asked for after TensorFlow has run
            its first operation (it must configure the runtime first).
    """
    if name is None:
        return tf.distribute.get_strategy()
    if name not in STRATEGIES:
        raise InputError(f"unknown distribution strategy {name!r}; use one of "
                         f"{', '.join(STRATEGIES)}")
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    read_tf_config()
    # the runtime starts here (ensai_tf.quiet skips its first op when TF_CONFIG is set)
    quiet = contextlib.nullcontext() if is_verbose() else native_stderr_filtered()
    try:
        with quiet:
            return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as err:
        if "program startup" not in str(err):
            raise
        raise InputError("--strategy multi-worker must set up TensorFlow before its first "
                         "operation: start it as its own process (ensai train ... --strategy "
                         "multi-worker), not after other TensorFlow work") from None


def agreed(strategy, step, elsewhere):
    """Run ``step()`` on every worker; all then learn whether every worker's step succeeded.

    Args:
        strategy: the run's strategy (with one process, ``step()`` simply runs).
        step: no-argument function; an ``EnsaiError`` or ``OSError`` is a failure.
        elsewhere: the message raised where the step succeeded but another failed.

    Returns:
        ``step()``'s result.

    Raises:
        EnsaiError, OSError: this worker's step failed (its own error).
        ModelDirError: another worker's step failed: a refused run stops everywhere.
    """
    try:
        result, error = step(), None
    except (EnsaiError, OSError) as err:
        result, error = None, err
    if not all_workers(strategy, error is None):
        raise error or ModelDirError(elsewhere)
    return result


def is_multi_worker(strategy):
    """Whether ``strategy`` spans several processes (decisions must then be agreed)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def all_workers(strategy, flag):
    """Whether ``flag`` holds on every worker: a collective step all workers must reach.

    Args:
        strategy: the run's strategy; with one process, ``flag`` is returned.
        flag: this worker's answer.

    Returns:
        bool, the same on every worker.
    """
    if not is_multi_worker(strategy):
        return bool(flag)

    @tf.function  # a collective sum over the workers, traced like a training step
    def failures(value):
        return strategy.reduce(tf.distribute.ReduceOp.SUM,
                               strategy.run(tf.identity, args=(value,)), axis=None)

    return float(failures(tf.constant(0.0 if flag else 1.0))) == 0.0


def _mean_over_replicas(values, strategy, reduction):
    """Keras' ``reduce_per_replica`` for a multi-worker step: scalar logs averaged over replicas."""
    def mean(value):
        # with one replica per worker a step's output is a plain tensor, else PerReplica values
        local = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
        if getattr(local, "shape", None) is not None and local.shape.rank == 0:
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
        return _KERAS_REDUCE(value, strategy, reduction)

    if reduction not in ("auto", "mean"):
        return _KERAS_REDUCE(values, strategy, reduction)
    return tf.nest.map_structure(mean, values)


@contextlib.contextmanager
def keras_fit(model, strategy):
    """Let ``model.fit`` (and its validation) run under ``MultiWorkerMirroredStrategy``.

    Keras 3.15 with TensorFlow 2.21 stops a multi-worker ``fit`` twice: it
    builds the metrics from one batch averaged over the workers with
    ``Strategy.reduce``, which cannot reduce the ``(images, params)`` tuple,
    and averages each step's scalar logs with ``Strategy.reduce(..., axis=0)``,
    which has no axis 0. Inside this block, for ``model``, the build uses this
    worker's first replica batch (same shapes everywhere, no collective step)
    and scalar logs are averaged over replicas with ``axis=None`` (equal
    replica batches: the one-process value). Other strategies run unchanged.
    Yields ``model``.
    """
    if not is_multi_worker(strategy):
        yield model
        return

    def build_from_local_batch(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)  # noqa: SLF001 (Keras' own build step)

    model._maybe_symbolic_build = build_from_local_batch  # noqa: SLF001 (see the docstring)
    keras_tf_trainer.reduce_per_replica = _mean_over_replicas
    try:
        yield model
    finally:
        keras_tf_trainer.reduce_per_replica = _KERAS_REDUCE
        del model._maybe_symbolic_build  # noqa: SLF001


def replica_batch_size(strategy, batch_size):
    """Each replica's share of the global batch.

    Args:
        strategy: the run's strategy.
        batch_size: the global batch, ``train.batch_size``.

    Returns:
        int, ``batch_size / replicas``.

    Raises:
        InputError: ``batch_size`` is not a multiple of the replicas of all workers.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise InputError(f"train.batch_size {batch_size} cannot be split evenly over "
                         f"{replicas} replicas; use a multiple of {replicas}")
    return batch_size // replicas


def _worker_stream(cfg, seed, start_step, per_replica, first_replica, replicas, n_targets):
    """This worker's replica batches: ``replicas`` per step, starting at replica ``first_replica``."""
    batch = cfg.train.batch_size
    if cfg.data.arcs_dir:
        arcs = stored_arcs_dataset(pathlib.Path(os.path.expanduser(cfg.data.arcs_dir)), cfg, seed,
                                   batch, start_step)

        def replica_part(ex, k):  # static shapes, as one process has: the same float round-off
            lo = (first_replica + k) * per_replica
            return tf.nest.map_structure(
                lambda t: tf.ensure_shape(t[lo:lo + per_replica], [per_replica] + t.shape[1:]), ex)

        parts = arcs.flat_map(lambda ex: tf.data.Dataset.range(replicas).map(
            lambda k: replica_part(ex, k)))
        stream = parallel_map(parts, lambda ex: observe_stage(ex, cfg, training=True))
    else:
        def first_example(i):
            step, k = start_step + i // replicas, first_replica + i % replicas
            return step * batch + k * per_replica

        starts = tf.data.Dataset.range(INT64_MAX).map(first_example)
        seeds = parallel_map(starts, lambda s: seed_stage(s, per_replica, seed, "train"))
        stream = simulate_and_observe(seeds, cfg, load_stamps("train", cfg), True, True)
    stream = parallel_map(stream, lambda ex: to_supervised(ex, n_targets))
    return stream.prefetch(tf.data.AUTOTUNE)


def training_dataset(strategy, cfg, start_step=0):
    """The endless train stream split over the replicas, global batch ``train.batch_size``.

    Replica ``r`` of ``R`` (counted over all workers) gets examples
    ``s*B + r*B/R ...`` of step ``s``, so a step trains on the examples of
    step ``s`` of :func:`ensai_tf.data.pipeline.make_dataset`; each worker
    simulates only its own replicas' examples.

    Args:
        strategy: the run's strategy.
        cfg: :class:`~ensai_tf.config.ExperimentConfig` (its data and train batch).
        start_step: the first step (resume).

    Returns:
        ``tf.distribute.DistributedDataset`` of per-replica ``(images, params)``.

    Raises:
        InputError: ``train.batch_size`` is not a multiple of the replicas.
    """
    per_replica = replica_batch_size(strategy, cfg.train.batch_size)
    n_targets = config_lib.target_count(cfg)

    def dataset_fn(context):
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        return _worker_stream(cfg, cfg.data.seed, int(start_step), per_replica,
                              context.input_pipeline_id * replicas, replicas, n_targets)

    return strategy.distribute_datasets_from_function(dataset_fn)


def replicated_dataset(strategy, make):
    """A finite dataset that every replica reads whole (the validation set).

    Args:
        strategy: the run's strategy.
        make: no-argument function returning the ``tf.data.Dataset`` of batches.

    Returns:
        ``tf.distribute.DistributedDataset``: each batch goes to every replica,
        so a metric averaged over replicas is the one-process value.
    """
    def dataset_fn(context):
        replicas = context.num_replicas_in_sync // context.num_input_pipelines
        ds = make()
        if replicas == 1:
            return ds
        return ds.flat_map(lambda *batch: tf.data.Dataset.from_tensors(batch).repeat(replicas))

    return strategy.distribute_datasets_from_function(dataset_fn)


def _remove_stale_scratch(prefix):
    """Delete scratch folders of this prefix whose locking process is gone from this host."""
    for folder in pathlib.Path(tempfile.gettempdir()).glob(prefix + "*"):
        owner = read_lock_owner(folder / LOCK_NAME) or {"pid": os.getpid()}
        if owner.get("host") == socket.gethostname() and not process_alive(owner["pid"]):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def scratch_folder(task):
    """A private folder for a non-chief worker's files, removed when the block ends.

    It is made in the system's temporary folder (``TMPDIR``), named
    ``ensai-train-<type><index>-*``. A worker killed outright leaves its
    folder behind; the next run of that task on the machine deletes it once
    the process that locked it is gone.

    Args:
        task: this process's :class:`ClusterTask`.

    Yields:
        ``pathlib.Path`` of the (empty) folder.
    """
    prefix = f"ensai-train-{task.task_type}{task.index}-"
    _remove_stale_scratch(prefix)
    folder = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def copy_run_state(model_dir, scratch, task):
    """Copy what a resumed run reads (:data:`RUN_STATE`) from the chief's folder to ``scratch``.

    Called once the chief has settled its backup, so every worker restores the
    same weights, epoch and callback state.

    Args:
        model_dir: the chief's run folder (read only).
        scratch: this worker's scratch folder.
        task: this process's :class:`ClusterTask` (for the message).

    Raises:
        ModelDirError: the chief's folder cannot be read from this worker.
    """
    model_dir, scratch = pathlib.Path(model_dir), pathlib.Path(scratch)
    if not (model_dir / CONFIG_YAML).is_file():
        raise ModelDirError(f"{task.name} cannot read the run folder {str(model_dir)!r}: resuming "
                            "on several workers needs the model folder on a file system that "
                            "every worker can read")
    for name in RUN_STATE:
        source = model_dir / name
        if source.is_dir():
            shutil.copytree(source, scratch / name)
        elif source.is_file():
            shutil.copyfile(source, scratch / name)


def worker_lost_error(err, task):
    """The one-line error of a multi-worker run that lost a worker (or its connection).

    Args:
        err: the ``tf.errors.OpError`` raised by the collective step.
        task: this process's :class:`ClusterTask`.

    Returns:
        :class:`~ensai_tf.errors.EnsaiError`: restart every worker with ``--resume``.
    """
    return EnsaiError(f"multi-worker training stopped on {task.name}: another worker failed or "
                      f"cannot be reached (TensorFlow {type(err).__name__}; --debug shows it); "
                      "start every worker again with --resume to continue from the last "
                      "completed epoch")
