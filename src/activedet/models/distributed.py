"""Data-parallel training: N ranks launched with torch.distributed's elastic launcher (torchrun's API).

A training stage with ``devices > 1`` calls :func:`launch`, which starts ``devices`` worker
processes in this pod through :func:`torch.distributed.launcher.api.elastic_launch` (the engine
behind ``torchrun --standalone``: c10d rendezvous on localhost, ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
set per worker). Each worker runs the stage's ``run(config)`` again; seeing the torchrun
environment, it joins the process group (:func:`init_process_group`: NCCL on CUDA, gloo on CPU)
and trains its share of every global batch. Rank 0's return value is the stage result.

A process that already *is* a torchrun worker (``WORLD_SIZE`` set, e.g. started by ``torchrun``
or a Kubeflow Trainer / PyTorchJob pod spanning nodes, see docs/cluster.md) never launches again:
it joins the group that its launcher set up.

Rules the training skeleton follows (:func:`activedet.models.train.train_and_commit`):

* ``batch_size`` is **per rank**: the global batch is ``batch_size * world_size``;
* the learning rate is scaled linearly with the world size (Goyal et al. 2017, "Accurate, Large
  Minibatch SGD"): ``lr = config.lr * world_size``, warmup as configured -- so N ranks at
  ``batch_size = b`` train like one process at ``b * N`` with ``lr * N``;
* gradients are averaged across ranks by :class:`~torch.nn.parallel.DistributedDataParallel`;
  trained BatchNorm layers become :class:`~torch.nn.SyncBatchNorm` on CUDA (torch has no CPU
  SyncBatchNorm: on gloo each rank normalises with its own batch statistics);
* only rank 0 opens the output, writes resume checkpoints and the final checkpoint (same format:
  ``model.safetensors`` + ``meta.json``) and logs to MLflow; on resume it restores the state and
  broadcasts iteration and optimizer state, DDP broadcasts its weights.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any

import torch

from activedet.errors import ActivedetError, ConfigError
from activedet.store import scratch_folder

log = logging.getLogger(__name__)


class DistributedLaunchError(ActivedetError):
    """A worker of a multi-process training run failed (its error is in the log above)."""


@dataclass(frozen=True)
class Rank:
    """This process's place in the training job (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def in_worker() -> bool:
    """Whether this process was started by torchrun / the elastic launcher (``WORLD_SIZE`` is set)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> Rank:
    """The rank of this process: from the initialised process group, else the torchrun environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return Rank(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if in_worker():
        return Rank(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    return Rank()


def worker_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` on CUDA (one GPU per rank), else ``device``."""
    if device.type != "cuda" or not current().distributed:
        return device
    local = current().local_rank
    if local >= torch.cuda.device_count():
        raise ConfigError(f"rank {current().rank}: local rank {local} but only {torch.cuda.device_count()} CUDA device(s) "
                          "in this pod; request as many GPUs as processes (kubernetes.accelerator_limit)")
    return torch.device("cuda", local)


def init_process_group(device: torch.device) -> Rank:
    """Join the torchrun-initialised group (NCCL on CUDA, gloo on CPU); no-op outside a worker."""
    if not in_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        return current()
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(worker_device(device))
        torch.distributed.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group", current().rank, current().world_size, backend)
    return current()


def destroy_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def launch(stage: str, config, *, nprocs: int, max_restarts: int = 0) -> Any:
    """Run stage ``stage``'s ``run(config)`` in ``nprocs`` local ranks (torchrun ``--standalone`` API).

    Each rank is a fresh interpreter (``python -m activedet.models.distributed JOB``), as torchrun
    starts them, so nothing depends on the caller's ``__main__``. Returns rank 0's result as JSON
    data (the stage rebuilds its result type). ``max_restarts`` > 0 lets the elastic agent restart
    the worker group after a failure; each restart resumes from the last resume checkpoint.
    """
    import json
    import sys

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nprocs < 1:
        raise ConfigError(f"devices must be >= 1, got {nprocs}")
    launch_config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=f"activedet-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=max_restarts, monitor_interval=0.2,
    )
    # a store scratch folder, not a bare temp dir: if this launcher is SIGKILLed, the next one removes it
    with scratch_folder() as tmp:
        job, result = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        with open(job, "w") as f:
            json.dump({"stage": stage, "config": config.model_dump(mode="json"), "result": result}, f)
        log.info("%s: launching %d training processes (torch.distributed elastic, standalone)", stage, nprocs)
        # like torchrun: ranks must not each take every core (intra-op threads of N ranks oversubscribe)
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads is None:
            os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nprocs))
        try:
            elastic_launch(launch_config, sys.executable)("-m", "activedet.models.distributed", job)
        except ChildFailedError as exc:
            rank, failure = next(iter(exc.failures.items()), (None, None))
            raise DistributedLaunchError(
                f"{stage}: {nprocs}-process training failed: rank {rank} exited with code "
                f"{getattr(failure, 'exitcode', '?')} (its traceback is in the log above)"
            ) from None
        finally:
            if threads is None:
                os.environ.pop("OMP_NUM_THREADS", None)
        with open(result) as f:
            return json.load(f)


def _die_with_launcher() -> None:
    """Have the kernel kill this rank when its launcher dies (Linux ``PR_SET_PDEATHSIG``).

    The elastic agent starts ranks in their own sessions; a launcher killed with SIGKILL (which
    it cannot forward) would otherwise leave them training and writing the output on their own.
    """
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the agent's own signal forwarding still applies
        return
    if os.getppid() == 1:  # the launcher died before the prctl
        os._exit(1)


def _worker_main(job_path: str) -> None:
    """One rank of :func:`launch`: run the stage; rank 0 writes the result."""
    import json

    from activedet.stages import stage_module

    _die_with_launcher()

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {os.environ.get('RANK')} %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    with open(job_path) as f:
        job = json.load(f)
    module = stage_module(job["stage"])
    out = module.run(module.Config.model_validate(job["config"]))
    if int(os.environ.get("RANK", 0)) == 0:
        payload = out.model_dump(mode="json") if hasattr(out, "model_dump") else out
        tmp = job["result"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, job["result"])


def broadcast_object(value: Any, src: int = 0) -> Any:
    """``value`` of rank ``src`` on every rank (in-memory, over the process group)."""
    if not current().distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` when not distributed)."""
    if not current().distributed:
        return [value]
    out: list[Any] = [None] * current().world_size
    torch.distributed.all_gather_object(out, value)
    return out


def broadcast_tensors(tensors, src: int = 0) -> None:
    """Overwrite each tensor of ``tensors`` (same order on every rank) with rank ``src``'s, in place."""
    if not current().distributed:
        return
    for t in tensors:
        torch.distributed.broadcast(t, src=src)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around ``model`` (trained BatchNorm -> SyncBatchNorm on CUDA); ``model`` itself when not distributed.

    The wrapper shares its parameters with ``model``: checkpoints save ``model`` (no ``module.``
    prefix, the single-device format).
    """
    if not current().distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(device)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a (detached) tensor over all ranks; the tensor itself when not distributed."""
    if not current().distributed:
        return value
    out = value.detach().clone()
    torch.distributed.all_reduce(out)
    return out / current().world_size


if __name__ == "__main__":
    import sys

    _worker_main(sys.argv[1])
