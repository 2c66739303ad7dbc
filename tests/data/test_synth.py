"""SynthDrive: determinism, split hygiene, sequence structure, store round trips, CLI."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from activedet import store
from activedet.cli.main import main
from activedet.data.dataset import load_dataset
from activedet.data.synth import CATEGORIES, SynthConfig, render_sequence, sequence_splits
from activedet.errors import ConfigError


def _files(uri: str) -> dict[str, bytes]:
    base = uri.rstrip("/") + "/"
    return {u[len(base):]: store.read_bytes(u) for u in store.list_uris(uri) if not u.endswith(store.MANIFEST)}


def test_same_seed_gives_byte_identical_output(make_synth):
    a = _files(make_synth("a", sequences=4, frames=3, seed=7))
    b = _files(make_synth("b", sequences=4, frames=3, seed=7))
    assert a.keys() == b.keys()
    assert any(k.startswith("images/") for k in a)
    assert all(a[k] == b[k] for k in a)


def test_different_seed_gives_different_images(make_synth):
    a = _files(make_synth("a", sequences=2, frames=1, seed=1))
    b = _files(make_synth("b", sequences=2, frames=1, seed=2))
    assert a["images/s00000_f0000.png"] != b["images/s00000_f0000.png"]


def test_dataset_loads_with_expected_structure(synth_dataset):
    ds = load_dataset(synth_dataset)
    assert ds.images.num_rows == 60
    assert ds.category_ids == [1, 2, 3, 4, 5]
    assert ds.class_names == list(CATEGORIES.values())
    row = ds.images.to_pylist()[7]
    assert row["image_id"] == "s00001_f0002"
    assert row["sequence_id"] == "s00001" and row["frame_index"] == 2
    assert row["timestamp"] == pytest.approx(0.2)
    assert (row["width"], row["height"]) == (256, 128)
    assert store.exists(ds.resolve_uri(row["uri"]))
    assert set(ds.boxes.column("source").to_pylist()) == {"gt"}
    assert ds.meta["num_images"] == 60 and ds.meta["num_boxes"] == ds.boxes.num_rows


def test_splits_are_by_sequence(synth_dataset):
    ds = load_dataset(synth_dataset)
    rows = ds.images.select(["sequence_id", "split"]).to_pylist()
    split_of: dict[str, set] = {}
    for r in rows:
        split_of.setdefault(r["sequence_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert {next(iter(s)) for s in split_of.values()} == {"train", "val", "test"}


def test_split_assignment_never_mixes_sequences_for_any_size():
    for n in (1, 2, 3, 5, 17, 40):
        splits = sequence_splits(SynthConfig(sequences=n, frames=1))
        assert len(splits) == n and "train" in splits
        if n >= 3:
            assert "val" in splits and "test" in splits


def test_consecutive_frames_are_near_duplicates_with_persistent_tracks():
    cfg = SynthConfig(sequences=3, frames=4, ego_speed=3.0, seed=3)
    frames = render_sequence(cfg, 1)
    a, b = frames[0].image.astype(np.int16), frames[1].image.astype(np.int16)
    other = render_sequence(cfg, 2)[0].image.astype(np.int16)
    assert np.abs(a - b).mean() < np.abs(a - other).mean()
    tracks0, tracks1 = set(frames[0].track_ids), set(frames[1].track_ids)
    assert tracks0 & tracks1
    # a kept track moves by at most a few pixels per frame
    for k in tracks0 & tracks1:
        box0 = frames[0].boxes[frames[0].track_ids.index(k)]
        box1 = frames[1].boxes[frames[1].track_ids.index(k)]
        assert np.abs(box0 - box1).max() < 15


def test_zero_ego_speed_static_scene_is_almost_identical():
    cfg = SynthConfig(sequences=1, frames=2, ego_speed=0.0, seed=5, night_fraction=0, fog_fraction=0, dusk_fraction=0)
    f0, f1 = render_sequence(cfg, 0)
    # only moving road users differ; most pixels are identical
    assert (f0.image == f1.image).all(axis=2).mean() > 0.8


def test_boxes_are_inside_the_image_and_reasonably_large(synth_dataset):
    ds = load_dataset(synth_dataset)
    x1, y1, x2, y2 = (ds.boxes.column(c).to_numpy() for c in ("x1", "y1", "x2", "y2"))
    assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 256).all() and (y2 <= 128).all()
    assert np.minimum(x2 - x1, y2 - y1).min() >= 6
    per_image = pc.value_counts(ds.boxes.column("image_id")).field("counts").to_numpy()
    assert per_image.max() <= 6


def test_class_frequencies_are_long_tailed():
    cfg = SynthConfig(sequences=150, frames=1, seed=11)
    counts = np.zeros(6, int)
    for s in range(cfg.sequences):
        for c in render_sequence(cfg, s)[0].categories:
            counts[c] += 1
    share = counts[1:] / counts.sum()
    assert share[0] > 0.35  # car is the common class
    assert share[0] > 2 * max(share[1:])
    assert share[3] < 0.2 and share[4] < 0.15  # truck and traffic_sign are rare
    assert (counts[1:] > 0).all()


def test_night_darker_than_day():
    day = SynthConfig(sequences=1, frames=1, night_fraction=0, fog_fraction=0, dusk_fraction=0)
    night = SynthConfig(sequences=1, frames=1, night_fraction=1.0, fog_fraction=0, dusk_fraction=0)
    assert render_sequence(night, 0)[0].image.mean() < 0.5 * render_sequence(day, 0)[0].image.mean()


def test_bad_settings_raise_config_error(tmp_path):
    from activedet.data.synth import generate_synthdrive

    with pytest.raises(ConfigError, match="no train sequence"):
        generate_synthdrive(str(tmp_path / "x"), sequences=4, val_fraction=0.5, test_fraction=0.4)
    with pytest.raises(ConfigError, match="frames"):
        generate_synthdrive(str(tmp_path / "x"), frames=0)
    assert not (tmp_path / "x").exists()


def test_s3_round_trip(s3_bucket, make_synth):
    uri = f"{s3_bucket}/synth"
    from activedet.data.synth import generate_synthdrive

    generate_synthdrive(uri, sequences=2, frames=2, seed=4)
    local = _files(make_synth("local", sequences=2, frames=2, seed=4))
    remote = _files(uri)
    assert remote.keys() == local.keys()
    assert remote["images/s00001_f0001.png"] == local["images/s00001_f0001.png"]
    ds = load_dataset(uri)
    assert ds.images.num_rows == 4
    assert store.exists(ds.resolve_uri(ds.images.column("uri")[0].as_py()))


def test_cli_synth_writes_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["-q", "data", "synth", "--out", str(out), "--sequences", "3", "--frames", "2", "--size", "64x128", "--seed", "2"])
    assert rc == 0
    ds = load_dataset(str(out))
    assert ds.images.num_rows == 6
    assert set(ds.images.column("width").to_pylist()) == {128}
    assert '"num_images": 6' in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--size", "12"], "--size"),
        (["--sequences", "4", "--val-fraction", "0.5", "--test-fraction", "0.5"], "no train sequence"),
        (["--size", "16x16"], "height"),
    ],
)
def test_cli_synth_bad_input_exits_2(tmp_path, capsys, argv, needle):
    out = tmp_path / "bad"
    rc = main(["data", "synth", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
