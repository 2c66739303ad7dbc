import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from activedet import schema
from activedet.models.checkpoint import load_detector
from activedet.models.data import read_image
from activedet.models.predict import Predictor, flip_boxes, predictions_to_boxes_table


@pytest.fixture(scope="module")
def detector(synth, untrained_checkpoint):
    return load_detector(untrained_checkpoint, dataset=synth)


def test_outputs_shapes_probs_mc_and_embedding(synth, detector):
    ids = synth.split_ids("val")[:3]
    pred = Predictor(detector, batch_size=2, score_floor=0.0, max_dets=50)
    preds = list(pred.predict(synth, ids, embeddings=True, mc_samples=3))
    assert [p.image_id for p in preds] == ids
    c1 = len(synth.category_ids) + 1
    for p in preds:
        d = p.detections
        n = len(d)
        assert 0 < n <= 50
        assert d.boxes.shape == (n, 4) and d.class_probs.shape == (n, c1) and d.scores.shape == (n,)
        np.testing.assert_allclose(d.class_probs.sum(1), 1.0, atol=1e-5)
        assert set(d.labels.tolist()) <= set(synth.category_ids)
        # a detection's score is its class's probability in the kept distribution
        cols = np.searchsorted(synth.category_ids, d.labels) + 1
        np.testing.assert_allclose(d.class_probs[np.arange(n), cols], d.scores, rtol=1e-5)
        assert (d.boxes[:, 2] <= p.width + 1e-3).all() and (d.boxes[:, 3] <= p.height + 1e-3).all()
        assert p.mc_probs.shape == (3, n, c1)
        np.testing.assert_allclose(p.mc_probs.sum(-1), 1.0, atol=1e-5)
        assert not np.allclose(p.mc_probs[0], p.mc_probs[1])  # dropout is active in MC passes
        assert p.embedding.ndim == 1 and abs(np.linalg.norm(p.embedding) - 1) < 1e-5
    assert pred.images_per_s > 0


def test_flip_tta_maps_back_to_original_frame(synth, detector):
    iid = synth.split_ids("val")[0]
    uri = synth.images.column("uri").to_pylist()[synth.images.column("image_id").to_pylist().index(iid)]
    img = read_image(synth, iid, uri)
    pred = Predictor(detector, score_floor=0.0)
    with_tta = pred.predict_images([img], [iid], flip_tta=True)[0]
    on_flipped = pred.predict_images([img.flip(-1)], [iid])[0]
    # TTA's flipped predictions are the predictions on the mirrored image, mirrored back
    np.testing.assert_allclose(with_tta.flipped.boxes, flip_boxes(on_flipped.detections.boxes, img.shape[-1]), atol=1e-3)
    np.testing.assert_allclose(with_tta.flipped.class_probs, on_flipped.detections.class_probs, atol=1e-6)


def test_flip_boxes_symmetric_case():
    boxes = np.array([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]], np.float32)
    out = flip_boxes(boxes, 100)
    np.testing.assert_array_equal(out, [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    np.testing.assert_array_equal(flip_boxes(out, 100), boxes)


def test_pre_nms_candidates_and_merged_into(synth, detector):
    ids = synth.split_ids("val")[:2]
    pred = Predictor(detector, score_floor=0.05, nms_iou=0.5, max_dets=20)
    for p in pred.predict(synth, ids, pre_nms=True):
        d, c, m = p.detections, p.pre_nms, p.merged_into
        assert len(c) >= len(d) and m.shape == (len(c),)
        assert ((m >= -1) & (m < len(d))).all()
        # every kept detection is one of the candidates, mapped to itself
        for k in range(len(d)):
            same = np.where(m == k)[0]
            assert any(np.allclose(c.boxes[j], d.boxes[k]) and c.scores[j] == d.scores[k] for j in same)
        # a merged candidate has the kept box's class, a lower score and IoU above the threshold
        j = np.where(m >= 0)[0]
        iou = box_iou(torch.from_numpy(c.boxes[j]), torch.from_numpy(d.boxes[m[j]])).diagonal().numpy()
        assert (iou > 0.5 - 1e-4).all()
        assert (c.labels[j] == d.labels[m[j]]).all()
        assert (c.scores[j] <= d.scores[m[j]] + 1e-6).all()


def test_predictions_to_boxes_table_validates(synth, detector):
    ids = synth.split_ids("val")[:2]
    preds = list(Predictor(detector, score_floor=0.0, max_dets=10).predict(synth, ids))
    table = predictions_to_boxes_table(preds, synth)
    assert table.num_rows == sum(len(p.detections) for p in preds)
    assert set(table.column("source").to_pylist()) == {"pred"}
    assert "class_probs" in table.column_names
    schema.validate_boxes(table, images=synth.images, categories=synth.categories)
    assert predictions_to_boxes_table([], synth).num_rows == 0


def test_unavailable_device_is_a_config_error(detector):
    from activedet.errors import ConfigError
    from activedet.models.predict import resolve_device

    with pytest.raises(ConfigError, match="unknown torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            Predictor(detector, device="cuda")
