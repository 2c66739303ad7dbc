import numpy as np
import pytest
import torch

from activedet.models.checkpoint import detector_for_dataset
from activedet.models.data import DetectionDataset, InfiniteSampler, endless_batches
from activedet.models.train import Trainer, TrainingDivergedError, lr_factor, seed_everything


def test_lr_schedule_warmup_and_step_decay():
    f = lambda i: lr_factor(i, iterations=90, warmup_iters=10, warmup_factor=0.001)  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.5 * 0.001 + 0.5)
    assert f(10) == f(59) == 1.0
    assert f(60) == pytest.approx(0.1) and f(79) == pytest.approx(0.1)
    assert f(80) == pytest.approx(0.01) and f(89) == pytest.approx(0.01)


def test_infinite_sampler_resumes_the_same_stream():
    full = InfiniteSampler(7, seed=3)
    stream = [i for _, i in zip(range(30), iter(full), strict=False)]
    resumed = [i for _, i in zip(range(18), iter(InfiniteSampler(7, seed=3, start=12)), strict=False)]
    assert resumed == stream[12:]
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))


def test_dataset_targets_and_augmentation(synth):
    ids = synth.split_ids("train")[:6]
    det = detector_for_dataset("tiny", synth)
    data = DetectionDataset(synth, ids, category_ids=det.category_ids, train=False, class_weights={1: 0.5}, box_weight=2.0)
    n_gt = {i: 0 for i in ids}
    for iid in synth.boxes.column("image_id").to_pylist():
        if iid in n_gt:
            n_gt[iid] += 1
    for k, iid in enumerate(ids):
        img, t = data[k]
        assert img.dtype == torch.float32 and img.shape == (3, 128, 256) and 0 <= img.min() and img.max() <= 1
        assert len(t["boxes"]) == len(t["labels"]) == len(t["weights"]) == n_gt[iid]
        assert ((t["labels"] >= 1) & (t["labels"] <= 5)).all()
        np.testing.assert_allclose(t["weights"].numpy(), np.where(t["labels"].numpy() == 1, 1.0, 2.0))
    # flipping with p=1 mirrors the boxes
    flip = DetectionDataset(synth, ids[:1], category_ids=det.category_ids, train=True, hflip=1.0, scale_jitter=None)
    img0, t0 = data[0]
    img1, t1 = flip[0]
    torch.testing.assert_close(img1, img0.flip(-1))
    torch.testing.assert_close(t1["boxes"][:, [2, 0]], 256 - t0["boxes"][:, [0, 2]])


def test_a_few_iterations_reduce_the_loss(synth):
    seed_everything(0)
    det = detector_for_dataset("tiny", synth, train_dropout=False)
    ids = synth.split_ids("train")[:4]
    data = DetectionDataset(synth, ids, category_ids=det.category_ids, train=False)
    batch = next(endless_batches(data, batch_size=4, seed=0))
    fixed = iter(lambda: batch, None)  # the same batch every step: the loss must fall
    losses = []

    class Record:
        def after_step(self, trainer, iteration, step_losses):
            losses.append(step_losses["loss"])

    trainer = Trainer(det.model, fixed, iterations=25, lr=0.02, warmup_iters=3, hooks=[Record()], log_every=5)
    result = trainer.train()
    assert len(losses) == 25 and result.iterations == 25
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    assert result.loss_history and result.it_per_s > 0


def test_custom_loss_fn_is_used(synth):
    det = detector_for_dataset("tiny", synth)
    data = DetectionDataset(synth, synth.split_ids("train")[:2], category_ids=det.category_ids, train=False)
    calls = []

    def loss_fn(model, images, targets):
        calls.append(len(images))
        losses = model(images, targets)
        return {"only_cls": 0.5 * losses["loss_classifier"]}

    trainer = Trainer(det.model, endless_batches(data, batch_size=2), iterations=2, loss_fn=loss_fn, warmup_iters=0)
    trainer.train()
    assert calls == [2, 2] and set(trainer.last_losses) == {"only_cls", "loss"}


def test_diverging_loss_is_an_error(synth):
    det = detector_for_dataset("tiny", synth)
    data = DetectionDataset(synth, synth.split_ids("train")[:2], category_ids=det.category_ids, train=False)
    nan = lambda m, i, t: {"x": torch.tensor(float("nan"), requires_grad=True)}  # noqa: E731
    with pytest.raises(TrainingDivergedError, match="not finite at iteration 0"):
        Trainer(det.model, endless_batches(data, batch_size=2), iterations=2, loss_fn=nan).train()


def test_worker_processes_give_the_same_batches(synth):
    det = detector_for_dataset("tiny", synth)
    data = DetectionDataset(synth, synth.split_ids("train")[:6], category_ids=det.category_ids, train=False)
    main = endless_batches(data, batch_size=3, seed=2, num_workers=0)
    workers = endless_batches(data, batch_size=3, seed=2, num_workers=1)
    for _ in range(2):
        (ia, ta), (ib, tb) = next(main), next(workers)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        torch.testing.assert_close(ia, ib)
    workers.close()
