"""tracking: a smoke run (and its notebook) with every tracker and challenge scored, predict on
a frame folder and a video, evaluate on a folder of sequences, the bad-input messages, the
synthetic videos and the reader, and the OTB metrics against hand-computed values."""

import json

import cv2
import numpy as np
import pytest
from conftest import smoke
from PIL import Image

from common import UserError, video

TRACKERS = {"siamese", "siamese_no_update", "siamese_no_occlusion_rule", "siamese_plain",
            "template_matching", "csrt", "kcf"}


@pytest.fixture(scope="module")
def tracking_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracking") / "run"
    return out, smoke("tracking", out, notebook=True)  # also the notebook's execution test


@pytest.fixture(scope="module")
def sequence_folder(tmp_path_factory):
    """Two synthetic sequences written in the GOT-10k layout."""
    root = tmp_path_factory.mktemp("sequences")
    for challenge in ("full_occlusion", "distractors"):
        video.write_sequence(video.make_sequence(challenge, 12, 96, seed=7), root / challenge)
    return root


def test_smoke_scores_every_tracker_overall_and_per_challenge(tracking_run):
    out, results = tracking_run
    m = results["metrics"]
    assert TRACKERS <= set(m)
    for name in TRACKERS:
        assert 0 <= m[name]["success_auc"] <= 1 and 0 <= m[name]["precision_20"] <= 1, name
        assert isinstance(m[name]["failures"], int) and m[name]["fps"] > 0, name
        for challenge in video.CHALLENGES:
            assert 0 <= m[name][challenge]["success_auc"] <= 1, (name, challenge)
    # a tracker that starts on the true box overlaps it on the next frames of a smooth video
    assert m["csrt"]["smooth_motion"]["success_auc"] > 0.3
    assert m["training"]["steps"] == 3 and m["training"]["weights"] == "generic"
    config = json.loads((out / "tracking.json").read_text())
    assert {"score_scale", "score_bias", "occlusion_threshold", "update_rate"} <= set(config)
    assert m["siamese"]["occlusion_threshold"] == config["occlusion_threshold"]
    for png in ("success.png", "success_per_challenge.png", "training_curves.png",
                "tracked_frames.png"):
        assert (out / png).stat().st_size > 5000, png
    with Image.open(out / "tracked.gif") as gif:
        assert gif.n_frames == 24  # the smoke test videos' length


def test_predict_prints_one_json_box_per_frame_from_a_folder_and_a_video(
        tracking_run, sequence_folder, run_here, tmp_path):
    out, _ = tracking_run
    folder = sequence_folder / "distractors"
    truth = video.read_groundtruth(folder / "groundtruth.txt", 12)
    init = ",".join(f"{v:g}" for v in truth[0])
    done = run_here("tracking", "predict", "--model", str(out / "model.keras"), "--frames",
                    str(folder), "--init", init, "--draw", str(tmp_path / "drawn.gif"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert [line["frame"] for line in lines] == list(range(12))
    assert lines[0]["box"] == pytest.approx(truth[0].tolist()) and lines[0]["score"] is None
    assert lines[3]["file"].endswith("00000004.jpg")
    for line in lines[1:]:
        x, y, w, h = line["box"]
        assert w > 0 and h > 0 and -w < x < 96 and -h < y < 96
        assert np.isfinite(line["score"]) and isinstance(line["hidden"], bool)
    with Image.open(tmp_path / "drawn.gif") as gif:
        assert gif.n_frames == 12 and gif.size == (192, 192)
    # the same frames as a video file
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                             (96, 96))
    for i in range(12):
        writer.write(cv2.imread(str(folder / f"{i + 1:08d}.jpg")))
    writer.release()
    done = run_here("tracking", "predict", "--model", str(out / "model.keras"), "--frames",
                    str(tmp_path / "clip.avi"), "--init", init)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.strip().splitlines()]
    assert len(lines) == 12 and lines[5]["file"] == "clip.avi#5"


def test_the_occlusion_rule_coasts_at_the_last_velocity(tracking_run, sequence_folder,
                                                       run_here, tmp_path):
    """With a threshold above some frames' peaks, a hidden frame's box moves by the same step
    as the hidden frame before it (the smoothed velocity is frozen while the target is hidden),
    and the size does not change."""
    out, _ = tracking_run
    folder = sequence_folder / "full_occlusion"
    init = ",".join(f"{v:g}" for v in video.read_groundtruth(folder / "groundtruth.txt", 12)[0])

    def track(model):
        done = run_here("tracking", "predict", "--model", str(model), "--frames", str(folder),
                        "--init", init)
        assert done.returncode == 0, done.stderr[-3000:]
        return [json.loads(line) for line in done.stdout.strip().splitlines()]

    free = track(out / "model.keras")
    config = json.loads((out / "tracking.json").read_text())
    config["occlusion_threshold"] = float(np.median([line["score"] for line in free[1:]]))
    (tmp_path / "model.keras").symlink_to(out / "model.keras")
    (tmp_path / "tracking.json").write_text(json.dumps(config))
    lines = track(tmp_path / "model.keras")
    hidden = [line["hidden"] for line in lines]
    assert any(hidden) and not all(hidden[1:]), hidden
    boxes = np.array([line["box"] for line in lines])
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    checked = 0
    for i in range(2, len(lines)):
        if hidden[i] and hidden[i - 1]:
            step, before = centres[i] - centres[i - 1], centres[i - 1] - centres[i - 2]
            if ((centres[i - 2:i + 1] > 1) & (centres[i - 2:i + 1] < 95)).all():  # not clipped
                assert np.allclose(step, before, atol=0.25), (i, step, before)  # 0.1 px rounding
                checked += 1
        if hidden[i]:
            assert np.allclose(boxes[i, 2:], boxes[i - 1, 2:], atol=0.05), i
    assert checked or sum(hidden) < 4, hidden


def test_evaluate_scores_a_folder_of_sequences(tracking_run, sequence_folder, run_here,
                                               tmp_path):
    out, _ = tracking_run
    done = run_here("tracking", "evaluate", "--model", str(out / "model.keras"), "--dataset",
                    f"folder:{sequence_folder}", "--out", str(tmp_path / "ev"))
    assert done.returncode == 0, done.stderr[-3000:]
    m = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]
    assert set(m) == {"siamese", "template_matching", "csrt", "kcf"}
    assert set(m["csrt"]) == {"success_auc", "precision_20", "failures", "fps",
                              "full_occlusion", "distractors"}
    assert (tmp_path / "ev" / "success.png").stat().st_size > 5000


def test_bad_input_is_refused_with_the_frame_or_line_named(tracking_run, sequence_folder,
                                                           run_here, tmp_path):
    out, _ = tracking_run
    model = str(out / "model.keras")
    folder = sequence_folder / "full_occlusion"

    def refused(*flags, expect):
        done = run_here("tracking", *flags)
        assert done.returncode == 2, (flags, done.stdout[-500:], done.stderr[-2000:])
        assert "Traceback" not in done.stderr and expect in done.stderr, (expect, done.stderr)

    predict = ("predict", "--model", model, "--frames")
    refused(*predict, str(folder), "--init", "200,10,20,20", expect="outside the 96x96 frame")
    refused(*predict, str(folder), "--init", "10,10,0,20", expect="zero or negative size")
    refused(*predict, str(folder), "--init", "10,10,20", expect="four numbers")
    (tmp_path / "empty").mkdir()
    refused(*predict, str(tmp_path / "empty"), "--init", "1,1,5,5", expect="no frame images")
    changing = tmp_path / "changing"
    changing.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64) if i != 2 else (80, 64)).save(changing / f"{i:03d}.png")
    refused(*predict, str(changing), "--init", "1,1,5,5", expect="002.png is 80x64 pixels")
    (changing / "002.png").write_bytes(b"not an image")
    refused(*predict, str(changing), "--init", "1,1,5,5", expect="cannot read frame")
    refused(*predict, str(changing), "--init", "1,1,5,5", "--draw", "x.png", expect=".gif")
    short = tmp_path / "short"
    video.write_sequence(video.make_sequence("smooth_motion", 5, 64, seed=1), short / "a")
    lines = (short / "a" / "groundtruth.txt").read_text().splitlines()
    (short / "a" / "groundtruth.txt").write_text("\n".join(lines[:4]) + "\n")
    refused("evaluate", "--model", model, "--dataset", f"folder:{short}",
            expect="has 4 box lines but the sequence has 5 frames")
    (short / "a" / "groundtruth.txt").write_text("\n".join(lines[:4] + ["1,2,x,4"]) + "\n")
    refused("evaluate", "--model", model, "--dataset", f"folder:{short}", expect="line 5")


def test_synthetic_videos_are_deterministic_and_label_every_frame():
    a = video.make_sequence("full_occlusion", 40, 96, seed=3)
    b = video.make_sequence("full_occlusion", 40, 96, seed=3)
    assert all((x == y).all() for x, y in zip(a.frames, b.frames))
    assert a.boxes.shape == (40, 4) and a.visible.shape == (40,) and a.challenge == "full_occlusion"
    assert a.frames[0].shape == (96, 96, 3) and a.frames[0].dtype == np.uint8
    assert a.visible[:3].all() and not a.visible.all()  # starts in view, then hidden a while
    assert (a.boxes[:, :2] >= 0).all() and (a.boxes[:, :2] + a.boxes[:, 2:] <= 96).all()
    grows = video.make_sequence("scale_change", 30, 96, seed=4).boxes[:, 2:].mean(1)
    assert max(grows[-1] / grows[0], grows[0] / grows[-1]) > 1.4
    with pytest.raises(UserError, match="unknown challenge"):
        video.make_sequence("teleport")
    made = video.make_sequences(9, 4, 64, seed=0)
    assert [s.challenge for s in made] == [*video.CHALLENGES, video.CHALLENGES[0]]


def test_sequences_round_trip_through_the_got10k_layout(tmp_path):
    sequence = video.make_sequence("partial_occlusion", 6, 64, seed=2)
    sequence.visible[4] = False
    video.write_sequence(sequence, tmp_path / "seq")
    read = video.read_sequences(tmp_path)[0]
    assert len(read) == 6 and read.challenge == "partial_occlusion" and read.name == "seq"
    assert np.allclose(read.boxes, sequence.boxes) and (read.visible == sequence.visible).all()
    assert np.abs(read.frames[2].astype(int) - sequence.frames[2]).mean() < 8  # JPEG, not BGR
    (tmp_path / "seq" / "img").mkdir()  # OTB layout: frames in img/, groundtruth_rect.txt
    for f in sorted((tmp_path / "seq").glob("*.jpg")):
        f.rename(tmp_path / "seq" / "img" / f.name)
    (tmp_path / "seq" / "groundtruth.txt").rename(tmp_path / "seq" / "groundtruth_rect.txt")
    text = (tmp_path / "seq" / "groundtruth_rect.txt").read_text().replace(",", "\t")
    (tmp_path / "seq" / "groundtruth_rect.txt").write_text(text)
    otb = video.read_sequence(tmp_path / "seq")
    assert len(otb) == 6 and np.allclose(otb.boxes, sequence.boxes)
    (tmp_path / "none" / "notes").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no sequences"):
        video.read_sequences(tmp_path / "none")


def test_otb_metrics_match_hand_computed_values():
    truth = np.array([[0, 0, 10, 10]] * 13, np.float32)
    boxes = truth.copy()
    boxes[1] = [5, 0, 10, 10]  # IoU 50 / 150, centre 5 px away
    boxes[2:12] = [40, 40, 10, 10]  # lost for 10 frames: one failure
    scores = video.otb_scores(boxes, truth)
    assert scores["frames"] == 12 and scores["failures"] == 1
    success = dict(zip(np.round(video.OVERLAP_THRESHOLDS, 2), scores["success"]))
    assert success[0.0] == pytest.approx(2 / 12)  # frames 1 and 12 overlap at all
    assert success[0.3] == pytest.approx(2 / 12) and success[0.35] == pytest.approx(1 / 12)
    assert scores["precision"][20] == pytest.approx(2 / 12)
    report, curve, _ = video.summarise([scores, video.otb_scores(truth, truth)])
    assert report["success_auc"] == pytest.approx(float(curve.mean()))
    assert report["failures"] == 1 and report["precision_20"] == pytest.approx((2 / 12 + 1) / 2)
    assert video.overlap(truth[:1], np.array([[20, 20, 5, 5]]))[0] == 0
