"""A short detectron2-style training loop, shared by the teacher and the SSL student.

:class:`Trainer` pulls ``(images, targets)`` batches from any iterator, computes a loss dict with
a pluggable ``loss_fn(model, images, targets) -> dict[str, Tensor]`` (default: the model's own
losses), and steps SGD with linear warmup and step decay (x0.1 at 2/3 and 8/9 of the schedule,
METHODS.md section 1). Mixed precision on CUDA. Hooks get ``before_train(trainer)``,
``after_step(trainer, iteration, losses)`` and ``after_train(trainer)``.

:class:`ResumeCheckpointer` is the hook that writes periodic checkpoints under an output's
``_resume/`` folder and restores the latest one, so a killed run re-run with the same output
continues from its last checkpoint iteration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from activedet import store
from activedet.errors import ActivedetError
from activedet.models import distributed
from activedet.models.checkpoint import (
    CheckpointError,
    Detector,
    load_weights,
    read_safetensors,
    upload_checkpoint,
)
from activedet.progress import Progress
from activedet.tracking import NullTracker

log = logging.getLogger(__name__)

Batch = tuple[list[Tensor], list[dict]]
LossFn = Callable[[nn.Module, list[Tensor], list[dict]], dict[str, Tensor]]


class TrainingDivergedError(ActivedetError):
    """The loss became NaN or infinite."""


def data_digest(dataset_uri: str, image_ids: list[str]) -> str:
    """sha256 over the dataset URI and the training image ids (provenance in meta.json)."""
    h = hashlib.sha256(str(dataset_uri).encode())
    for i in sorted(image_ids):
        h.update(b"\0" + i.encode())
    return h.hexdigest()


def resume_fingerprint(config, data_digest: str) -> str:
    """Identity of a training run for resuming: its config (minus settings that do not change the
    result) and its data. ``_resume/`` state written under another fingerprint is ignored."""
    keep = config.model_dump(mode="json", exclude={"mlflow_tracking_uri", "mlflow_run_id", "num_workers", "checkpoint_every"})
    return hashlib.sha256(json.dumps([keep, data_digest], sort_keys=True).encode()).hexdigest()[:16]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_losses(model: nn.Module, images: list[Tensor], targets: list[dict]) -> dict[str, Tensor]:
    """The default loss: torchvision's detection losses (with per-box weights, see roi_heads)."""
    return model(images, targets)


def lr_factor(iteration: int, *, iterations: int, warmup_iters: int, warmup_factor: float = 0.001,
              decay_at: tuple[float, ...] = (2 / 3, 8 / 9), gamma: float = 0.1) -> float:
    """Multiplier of the base lr at ``iteration`` (linear warmup, then step decay)."""
    f = gamma ** sum(iteration >= int(round(d * iterations)) for d in decay_at)
    if iteration < warmup_iters:
        alpha = iteration / max(warmup_iters, 1)
        f *= warmup_factor * (1 - alpha) + alpha
    return f


def _to_device(images: list[Tensor], targets: list[dict], device: torch.device) -> Batch:
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
    return images, targets


@dataclass
class TrainResult:
    """What a training run did (JSON-friendly)."""

    iterations: int
    start_iteration: int
    final_loss: float
    it_per_s: float
    loss_history: list[tuple[int, float]] = field(default_factory=list)


class Trainer:
    """SGD training of a detection model on an iterator of batches.

    ``lr`` is the base learning rate; ``warmup_iters`` ramps it linearly from
    ``lr * warmup_factor``; it is multiplied by ``gamma`` at each fraction in ``decay_at`` of
    ``iterations``. ``start_iter`` > 0 continues a schedule (after :meth:`load_optimizer_state`).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Iterable[Batch],
        *,
        iterations: int,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_iters: int = 100,
        warmup_factor: float = 0.001,
        decay_at: tuple[float, ...] = (2 / 3, 8 / 9),
        gamma: float = 0.1,
        device: str | torch.device = "cpu",
        amp: bool = True,
        grad_clip: float | None = 10.0,
        loss_fn: LossFn = model_losses,
        hooks: Iterable[object] = (),
        tracker: NullTracker | None = None,
        log_every: int = 20,
        start_iter: int = 0,
        desc: str = "train",
    ):
        self.model = model
        self.batches: Iterator[Batch] = iter(batches)
        self.iterations, self.start_iter = iterations, start_iter
        self.lr, self.warmup_iters, self.warmup_factor = lr, warmup_iters, warmup_factor
        self.decay_at, self.gamma = tuple(decay_at), gamma
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"
        self.grad_clip = grad_clip
        self.loss_fn = loss_fn
        self.hooks = list(hooks)
        self.tracker = tracker or NullTracker()
        self.log_every, self.desc = log_every, desc
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.iteration = start_iter
        self.last_losses: dict[str, float] = {}
        self.loss_history: list[tuple[int, float]] = []

    @classmethod
    def from_config(cls, model: nn.Module, batches: Iterable[Batch], config, *, device, **kwargs) -> Trainer:
        """Build from a training stage config (train-teacher and train-student-ssl share the
        optimizer fields: iterations, lr, momentum, weight_decay, warmup_iters, lr_milestones, amp)."""
        return cls(
            model, batches, iterations=config.iterations, lr=kwargs.pop("lr", config.lr), momentum=config.momentum,
            weight_decay=config.weight_decay, warmup_iters=config.warmup_iters, decay_at=config.lr_milestones,
            device=device, amp=config.amp, **kwargs,
        )

    # ------------------------------------------------------------------ optimizer state (resume)

    def optimizer_state_tensors(self) -> dict[str, Tensor]:
        """Momentum buffers as plain tensors (safetensors-friendly)."""
        out = {}
        for i, p in enumerate(self.optimizer.param_groups[0]["params"]):
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum.{i}"] = buf.detach().to("cpu").contiguous().clone()
        return out

    def load_optimizer_state(self, tensors: dict[str, Tensor]) -> None:
        params = self.optimizer.param_groups[0]["params"]
        for key, value in tensors.items():
            i = int(key.split(".", 1)[1])
            if i >= len(params) or params[i].shape != value.shape:
                raise ActivedetError(f"resume state does not fit the model (momentum buffer {i})")
            self.optimizer.state[params[i]]["momentum_buffer"] = value.to(params[i].device)

    # ------------------------------------------------------------------ loop

    def _set_lr(self, iteration: int) -> float:
        lr = self.lr * lr_factor(
            iteration, iterations=self.iterations, warmup_iters=self.warmup_iters,
            warmup_factor=self.warmup_factor, decay_at=self.decay_at, gamma=self.gamma,
        )
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def step(self, images: list[Tensor], targets: list[dict]) -> dict[str, float]:
        """One optimisation step on one batch; returns the float losses (and ``loss``)."""
        self.model.train()
        images, targets = _to_device(images, targets, self.device)
        with torch.autocast(self.device.type, enabled=self.amp):
            losses = self.loss_fn(self.model, images, targets)
        total = sum(losses.values())
        # data-parallel: every rank sees the mean loss, so all of them stop together on divergence
        reported = distributed.mean_over_ranks(total.detach())
        if not torch.isfinite(reported):
            raise TrainingDivergedError(
                f"{self.desc}: loss is not finite at iteration {self.iteration} "
                f"({ {k: float(v.detach()) for k, v in losses.items()} }); lower the learning rate"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["loss"] = float(reported)
        return out

    def train(self) -> TrainResult:
        """Run from ``start_iter`` to ``iterations``."""
        for h in self.hooks:
            getattr(h, "before_train", lambda t: None)(self)
        ema = None
        with Progress(self.iterations, self.desc, initial=self.start_iter) as bar:
            while self.iteration < self.iterations:
                lr = self._set_lr(self.iteration)
                try:
                    images, targets = next(self.batches)
                except StopIteration:
                    raise ActivedetError(f"{self.desc}: batch source ended at iteration {self.iteration}") from None
                losses = self.step(images, targets)
                self.iteration += 1
                ema = losses["loss"] if ema is None else 0.9 * ema + 0.1 * losses["loss"]
                self.last_losses = losses
                if self.iteration % self.log_every == 0 or self.iteration == self.iterations:
                    self.loss_history.append((self.iteration, ema))
                    self.tracker.log_metrics({**{f"train/{k}": v for k, v in losses.items()}, "train/lr": lr}, step=self.iteration)
                bar.update(1, loss=ema, lr=lr)
                for h in self.hooks:
                    getattr(h, "after_step", lambda *a: None)(self, self.iteration, losses)
            rate = bar.rate
        for h in self.hooks:
            getattr(h, "after_train", lambda t: None)(self)
        final = ema if ema is not None else math.nan
        return TrainResult(self.iterations, self.start_iter, float(final), float(rate), list(self.loss_history))


# ---------------------------------------------------------------------- resume checkpoints


class ResumeCheckpointer:
    """Periodic checkpoints under ``<output>/_resume/`` and restoring the latest one.

    Layout: ``_resume/iter_0000200/{model.safetensors, meta.json, optim.safetensors}`` and
    ``_resume/latest.json`` (written last: a checkpoint exists once it names it). ``fingerprint``
    identifies the run's settings; a resume state with another fingerprint is ignored.
    """

    def __init__(self, output_uri: str, detector: Detector, *, every: int, fingerprint: str, extra=None):
        self.root = store.join(output_uri, store.RESUME_DIR)
        self.detector, self.every, self.fingerprint = detector, every, fingerprint
        # more training state (the mean teacher's EMA teacher and ACT state): save_files(tmp_dir) ->
        # {name: path} into each checkpoint, restore(folder) from one, reset() when it is discarded
        self.extra = extra

    def latest(self) -> dict | None:
        uri = store.join(self.root, "latest.json")
        if not store.exists(uri):
            return None
        state = store.read_json(uri)
        if not isinstance(state, dict) or not isinstance(state.get("folder"), str):
            raise CheckpointError(f"malformed resume state {uri}")
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring resume state at %s: it was written by a run with other settings", self.root)
            return None
        return state

    def restore(self) -> tuple[int, dict[str, Tensor]]:
        """Load the latest checkpoint into the detector; returns (iteration, optimizer tensors).

        Resume state that cannot be read (corrupt, truncated, tampered with) is discarded with a
        warning and training starts from scratch, rather than leaving the run stuck.
        """
        initial = {k: v.detach().clone() for k, v in self.detector.model.state_dict().items()}
        try:
            state = self.latest()
            if state is None:
                return 0, {}
            folder = store.join(self.root, state["folder"])
            load_weights(self.detector, folder)
            optim = read_safetensors(folder, "optim.safetensors")
            iteration = int(state["iteration"])
            if self.extra is not None:
                self.extra.restore(folder)
        except (ActivedetError, KeyError, TypeError, ValueError) as exc:
            log.warning("discarding unreadable resume state at %s (%s); training starts from scratch", self.root,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.detector.model.load_state_dict(initial)  # a half-applied state must not leak into training
            if self.extra is not None:
                self.extra.reset()
            store.delete_prefix(self.root)
            return 0, {}
        log.info("resuming from %s at iteration %d", folder, iteration)
        return iteration, optim

    def save(self, trainer: Trainer) -> str:
        it = trainer.iteration
        name = f"iter_{it:07d}"
        folder = store.join(self.root, name)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "optim.safetensors"
            save_file(trainer.optimizer_state_tensors(), str(path))
            extra = self.extra.save_files(Path(tmp)) if self.extra is not None else {}
            upload_checkpoint(self.detector, folder, extra_files={"optim.safetensors": path, **extra},
                              iteration=it, losses=trainer.last_losses)
        try:
            previous = self.latest()
        except ActivedetError:
            previous = None
        store.write_json(store.join(self.root, "latest.json"), {"iteration": it, "folder": name, "fingerprint": self.fingerprint})
        if previous and previous["folder"] != name:
            store.delete_prefix(store.join(self.root, previous["folder"]))
        log.info("checkpoint at iteration %d -> %s", it, folder)
        return folder

    def after_step(self, trainer: Trainer, iteration: int, losses: dict) -> None:
        if self.every > 0 and iteration % self.every == 0 and iteration < trainer.iterations:
            self.save(trainer)


@dataclass
class TrainedOutput:
    """What :func:`train_and_commit` produced: the checkpoint URI, the run's numbers and ``train.json``."""

    checkpoint_uri: str
    result: TrainResult
    resumed_from: int
    training: dict


def train_and_commit(
    config,
    detector: Detector,
    make_batches: Callable[[int], Iterable[Batch]],
    *,
    stage: str,
    digest: str,
    device,
    tracker,
    loss_fn: Callable | None = None,
    log_every: int | None = None,
    training_info: dict | None = None,
    extra_hooks: Iterable[object] = (),
    resume_extra=None,
    train_module: nn.Module | None = None,
    **checkpoint_meta,
) -> TrainedOutput | None:
    """The training skeleton teacher and student share: resume, train, save, metrics.

    Opens ``config.output_uri`` as a resumable output, restores the latest resume checkpoint whose
    fingerprint matches (``config`` + ``digest``), trains with :meth:`Trainer.from_config` on
    ``make_batches(start_iteration)``, then commits ``model.safetensors`` + ``meta.json``
    (``checkpoint_meta`` goes into the meta) and ``train.json`` (``training_info`` added), and logs
    the final loss and speed. The detector ends on the CPU. ``extra_hooks`` run (on every rank)
    before the resume checkpointer's; ``resume_extra`` is its ``extra`` (more state in each resume
    checkpoint). ``train_module`` is what the trainer steps instead of ``detector.model`` (a module
    holding it, e.g. the mean teacher's; it must own exactly the detector's trainable parameters):
    it is what DDP wraps, so a ``forward`` that computes the whole loss stays inside DDP.

    Inside a data-parallel job (:mod:`activedet.models.distributed`) every rank calls this with
    its own ``make_batches``; only rank 0 opens the output, restores (then broadcasts iteration
    and optimizer state; DDP broadcasts the weights; ``extra_hooks`` sync their own state), checkpoints,
    commits and logs, and the lr
    is ``config.lr * world_size`` (linear scaling rule). Other ranks return ``None``.
    """
    from contextlib import nullcontext

    from activedet.models.checkpoint import write_checkpoint

    rank = distributed.current()
    writer = store.OutputWriter(config.output_uri, resumable=True, meta={"stage": stage}) if rank.is_main else nullcontext()
    with writer as out:
        hooks, start, optim_state = [], 0, {}
        if rank.is_main:
            resume = ResumeCheckpointer(out.prefix, detector, every=config.checkpoint_every, fingerprint=resume_fingerprint(config, digest),
                                        extra=resume_extra)
            start, optim_state = resume.restore()
            hooks = [*extra_hooks, resume]
        else:
            tracker = NullTracker()
            hooks = list(extra_hooks)
        start, optim_state = distributed.broadcast_object((start, optim_state))
        model = distributed.wrap_model(train_module if train_module is not None else detector.model, torch.device(device))
        kwargs = {"loss_fn": loss_fn} if loss_fn is not None else {}
        if log_every is not None:
            kwargs["log_every"] = log_every
        if rank.distributed:
            kwargs["lr"] = config.lr * rank.world_size
        trainer = Trainer.from_config(
            model, make_batches(start), config, device=device, hooks=hooks, tracker=tracker, start_iter=start,
            desc=stage if rank.is_main else f"{stage} rank {rank.rank}", **kwargs,
        )
        if optim_state:
            trainer.load_optimizer_state(optim_state)
        result = trainer.train()
        detector.model.to("cpu")
        if not rank.is_main:
            return None
        training = {
            "config": config.model_dump(mode="json", exclude={"mlflow_tracking_uri"}),
            **(training_info or {}),
            "resumed_from": start,
            "final_loss": result.final_loss,
            "final_losses": trainer.last_losses,
            "it_per_s": result.it_per_s,
            "loss_history": result.loss_history,
            **({"distributed": {"world_size": rank.world_size, "global_batch_size": config.batch_size * rank.world_size,
                                "lr": trainer.lr, "lr_rule": "linear: lr * world_size"}} if rank.distributed else {}),
        }
        uri = write_checkpoint(out, detector, training=training, data_digest=digest, dataset_uri=config.dataset_uri,
                               ledger_uri=config.ledger_uri, metrics={}, **checkpoint_meta)
        out.write_json("train.json", training)
    tracker.log_metrics({"train/final_loss": result.final_loss, "train/it_per_s": result.it_per_s})
    log.info("%s: %d iterations, final loss %.4f, %.2f it/s -> %s", stage, config.iterations, result.final_loss, result.it_per_s, uri)
    return TrainedOutput(checkpoint_uri=uri, result=result, resumed_from=start, training=training)
