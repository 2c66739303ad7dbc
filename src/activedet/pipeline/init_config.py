"""``activedet init-config``: an experiment YAML sized to a dataset and to this machine.

Every choice is written with a comment saying why, so the file is a starting point a user can
read and edit, and :func:`propose` validates what it writes (``activedet run`` works on it as is).

What is sized:

* **device** -- CUDA when torch sees a GPU, else CPU;
* **preset** -- ``resnet50_fpn`` from ImageNet weights on a GPU (as the papers); on a CPU the
  light ``tiny`` preset, whose step costs a fraction of a second here;
* **I, B, cycles** -- I ~ 10 % and B ~ 5 % of the train pool, three cycles, never labeling
  more than 60 % of the pool (an active-learning run that labels everything shows nothing);
* **iterations** -- from ``minutes``, the wall time the whole run may take, and the measured
  (or, with ``measure=False``, estimated) cost of one training step of the preset on this
  device, after a fixed per-cycle allowance for inference and pipeline start-up;
* **strategy** -- from the pool's redundancy (share of images that are near-duplicates of
  another, via the same scenes ``activedet data split`` finds): core-set (batch diversity) on
  redundant pools, entropy top-k on diverse ones, random when the labeled share is tiny
  (Mittal et al., Table 6).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from activedet.data.dataset import Dataset, load_dataset
from activedet.errors import ConfigError

log = logging.getLogger(__name__)

#: seconds per cycle for evaluation, pseudo-labeling, scoring and kfp.local's task start-up
CYCLE_OVERHEAD_S = {"cpu": 75.0, "cuda": 120.0}
#: step costs (s, batch 8) used when not measured: tiny / R50 at their default input sizes
ESTIMATED_STEP_S = {("tiny", "cpu"): 0.6, ("resnet50_fpn", "cuda"): 0.35, ("resnet50_fpn", "cpu"): 20.0}


@dataclass
class Proposal:
    """An experiment as a nested dict plus a comment for each dotted key path."""

    config: dict
    comments: dict[str, str] = field(default_factory=dict)

    def set(self, path: str, value, why: str) -> None:
        node = self.config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
        self.comments[path] = why


def detect_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def measure_step_seconds(preset: str, options: dict, device: str, batch_size: int, classes: int, steps: int = 3) -> float:
    """Median seconds of ``steps`` training steps of ``preset`` on random images (after one warm-up)."""
    import torch

    from activedet.models.presets import build_model

    model = build_model(preset, num_classes=classes + 1, **options).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    h, w = options.get("min_size", 128), options.get("max_size", 256)
    images = [torch.rand(3, h, w, device=device) for _ in range(batch_size)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, w / 3, h / 2]], device=device), "labels": torch.tensor([1], device=device)}
               for _ in range(batch_size)]
    times = []
    for k in range(steps + 1):
        start = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def pool_redundancy(ds: Dataset, split: str = "train") -> tuple[float, int, str]:
    """(share of pool images that share a scene with another, scenes, how scenes were found)."""
    from activedet.data.split import SplitSettings, derive_scenes

    scenes, method = derive_scenes(ds, SplitSettings())
    pool = [s for s, sp in zip(scenes, ds.images.column("split").to_pylist(), strict=True) if sp == split]
    distinct = len(set(pool))
    return (1.0 - distinct / len(pool)) if pool else 0.0, distinct, method


#: the tiny preset's default input (short side, long side cap) and its smallest anchor
TINY_INPUT, SMALLEST_ANCHOR = (128, 256), 16
CPU_MAX_SIDE = 640


def input_size_for_boxes(ds: Dataset, p: Proposal) -> dict:
    """``tiny``'s input size, enlarged when the median box would shrink below the smallest anchor.

    Images are resized so the long side is at most ``max_size``; a median box of ``m`` pixels
    (shorter side, at the file's size) then has ``m * scale`` pixels. Returns preset options
    (empty when the defaults suffice) and records the choice in ``p``.
    """
    import numpy as np

    if not ds.boxes.num_rows:
        return {}
    b = ds.boxes
    sides = np.minimum(np.asarray(b.column("x2")) - np.asarray(b.column("x1")), np.asarray(b.column("y2")) - np.asarray(b.column("y1")))
    median_box = float(np.median(sides))
    long_side = float(np.median(np.maximum(np.asarray(ds.images.column("width")), np.asarray(ds.images.column("height")))))
    scale = TINY_INPUT[1] / long_side
    if median_box * scale >= SMALLEST_ANCHOR or median_box <= 0:
        return {}
    needed = min(SMALLEST_ANCHOR / median_box, 1.0, CPU_MAX_SIDE / long_side)
    factor = needed / scale
    options = {"min_size": int(round(TINY_INPUT[0] * factor / 32) * 32), "max_size": int(round(TINY_INPUT[1] * factor / 32) * 32)}
    if options["max_size"] <= TINY_INPUT[1]:
        return {}
    p.set("training.preset_options", options,
          f"the median box is {median_box:.0f} px on {long_side:.0f}-px images: at tiny's default {TINY_INPUT[1]}-px input it "
          f"would shrink to {median_box * scale:.0f} px, below the smallest anchor ({SMALLEST_ANCHOR} px); this input keeps it "
          f"near {median_box * options['max_size'] / long_side:.0f} px (steps cost more: timed below)")
    return options


def _name(uri: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", Path(str(uri).rstrip("/")).name.lower()).strip("-")
    return (base or "activedet")[:40].strip("-") or "activedet"


def propose(dataset_uri: str, *, minutes: float = 30.0, device: str = "auto", measure: bool = True) -> Proposal:
    """An experiment for ``dataset_uri`` sized to ``minutes`` of wall time on ``device``."""
    if minutes <= 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    from activedet import store
    from activedet.data.readiness import split_counts

    if not store.is_s3(dataset_uri):  # pipeline tasks run in other working directories
        dataset_uri = str(store.local_path(dataset_uri).resolve())
    ds = load_dataset(dataset_uri)

    counts = split_counts(ds)
    pool = counts["train"]
    if pool < 10 or not counts["val"]:
        raise ConfigError(
            f"{dataset_uri}: {pool} train and {counts['val']} val images; a run needs at least 10 train images and a val split "
            f"(run `activedet data split {dataset_uri} --out <new dataset>`)"
        )
    device = detect_device() if device == "auto" else device
    p = Proposal({})
    p.set("name", _name(dataset_uri), "run name (a DNS label): the dataset folder's name")
    p.set("dataset.uri", str(dataset_uri), f"{len(ds.images)} images: {pool} train (the pool), {counts['val']} val (evaluated every cycle)")
    p.set("device", device, "a GPU was found" if device == "cuda" else "no GPU found: everything runs on the CPU")

    cycles = 3
    initial = max(8, min(round(0.10 * pool), pool // 3))
    budget = max(4, round(0.05 * pool))
    while initial + (cycles - 1) * budget > 0.6 * pool and budget > 1:
        budget -= 1
    p.set("initial_size", initial, f"I = {initial / pool:.0%} of the {pool}-image pool, labeled at random in cycle 0")
    p.set("budget", budget, f"B = {budget / pool:.0%} of the pool selected per cycle")
    p.set("cycles", cycles, f"ends with {initial + (cycles - 1) * budget} labeled ({(initial + (cycles - 1) * budget) / pool:.0%}): "
          "enough cycles to see the budget curve bend, few enough to finish in the time asked")
    p.set("seed", 0, "same seed, same initial set, training order and selection")

    if device == "cuda":
        preset, options, batch, weights = "resnet50_fpn", {}, 8, "imagenet"
        p.set("training.preset", preset, "Faster R-CNN R50-FPN, as the four papers train it")
        p.set("training.backbone_weights", weights, "ImageNet initialisation (the papers' start); cached under TORCH_HOME")
        p.set("training.lr", 0.01, "the papers' SGD learning rate for R50-FPN")
    else:
        preset, batch = "tiny", 8
        p.set("training.preset", preset, "the light CPU preset: a training step costs well under a second here")
        options = input_size_for_boxes(ds, p)
    p.set("training.batch_size", batch, "images per step")
    step = None
    if measure:
        try:
            step = measure_step_seconds(preset, options, device, batch, len(ds.category_ids))
        except Exception as exc:  # noqa: BLE001 - a failed measurement falls back to the estimate, said in the file
            log.warning("could not time a training step (%s); using the estimate", exc)
    how = "measured here" if step is not None else "estimated"
    step = step if step is not None else ESTIMATED_STEP_S.get((preset, device), 1.0)
    per_cycle = minutes * 60.0 / cycles - CYCLE_OVERHEAD_S.get(device, 75.0)
    steps = max(20, int(per_cycle / (step * 1.9)))  # teacher + student (~0.9 of the teacher's steps at ~1x cost each)
    teacher = max(10, int(steps * 0.6))
    student = max(10, steps - teacher)
    p.set("training.teacher_iterations", teacher, f"{minutes:g} min over {cycles} cycles at {step:.2f} s/step ({how}), "
          f"after ~{CYCLE_OVERHEAD_S.get(device, 75):.0f} s per cycle for inference and start-up")
    p.set("training.student_iterations", student, "the rest of each cycle's training time")
    p.set("training.checkpoint_every", max(10, teacher // 4), "a killed run resumes from the last checkpoint")

    p.set("pseudo_labels.filter", "fixed", "a fixed score threshold: the simplest filter that works with a short schedule")
    p.set("pseudo_labels.params", {"tau": 0.7 if device == "cpu" else 0.9},
          "a short CPU schedule gives a less confident teacher than the papers' 0.99" if device == "cpu" else "confident boxes only")
    p.set("pseudo_labels.max_pool_images", min(pool, 400 if device == "cpu" else 20000), "bounds pseudo-labeling time per cycle")
    p.set("ssl.enabled", True, "train a student on labeled + pseudo-labeled images each cycle")

    redundancy, scenes, method = pool_redundancy(ds)
    share = initial / pool
    if share < 0.02:
        strategy, score, why = "random", "entropy", f"the labeled share is tiny ({share:.1%}): random beats heuristics there"
    elif redundancy >= 0.5:
        strategy, score, why = "coreset", "entropy", (f"redundant pool: {redundancy:.0%} of images share a scene ({scenes} scenes by "
                                                     f"{method}); batch diversity (core-set) avoids labeling near-duplicates")
    else:
        strategy, score, why = "topk", "entropy", (f"diverse pool: only {redundancy:.0%} of images share a scene ({scenes} scenes by "
                                                  f"{method}); uncertainty (entropy top-k) picks the informative ones")
    p.set("acquisition.score", score, "prediction entropy of each image (max over its boxes)")
    p.set("acquisition.strategy", strategy, why)
    p.set("mlflow.experiment", p.config["name"], "MLflow experiment the cycles are logged under")

    from activedet.pipeline.plan import load_experiment

    load_experiment(p.config)  # never write a file `activedet run` would refuse
    return p


def render_yaml(p: Proposal, header: str = "") -> str:
    """The proposal as YAML with each comment on the line above its key."""
    import yaml

    lines = [f"# {line}" for line in header.splitlines()]

    def emit(node: dict, prefix: str, indent: int) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if path in p.comments:
                lines.append(" " * indent + f"# {p.comments[path]}")
            if isinstance(value, dict) and value and path not in p.comments:
                lines.append(" " * indent + f"{key}:")
                emit(value, path + ".", indent + 2)
            else:
                dumped = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
                dumped = dumped.removesuffix("\n...").removesuffix("...").strip()
                lines.append(" " * indent + f"{key}: {dumped}")

    emit(p.config, "", 0)
    return "\n".join(lines) + "\n"
