"""Real MTCNN on a real photograph; media decoding and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from skimage import data

from avx.errors import MediaError
from avx.extract.faces import FaceConfig, FacePipeline
from avx.extract.media import FrameSampling, load_audio, read_frames


@pytest.fixture(scope="module")
def faces() -> FacePipeline:
    return FacePipeline(FaceConfig())


def test_mtcnn_finds_the_astronaut_and_nothing_in_a_blank_frame(faces: FacePipeline) -> None:
    img = data.astronaut()
    det = faces.detect(np.stack([img, np.zeros_like(img)]))
    assert det.detected.tolist() == [True, False]
    x1, y1, x2, y2 = det.boxes[0]
    # Her face spans roughly x 180-270, y 60-175 in the 512 x 512 photograph.
    assert 165 < x1 < 195 and 255 < x2 < 285 and 45 < y1 < 80 and 160 < y2 < 190
    assert det.probs[0] > 0.99 and det.probs[1] == 0
    left_eye, right_eye = det.landmarks[0, 0], det.landmarks[0, 1]
    assert left_eye[0] < right_eye[0]
    with pytest.raises(MediaError, match=r"blank\.png: no face found in 1 frame"):
        faces(np.zeros((1, 128, 128, 3), np.uint8), source="blank.png")


def test_alignment_levels_the_eye_line(faces: FacePipeline) -> None:
    tilted = np.asarray(Image.fromarray(data.astronaut()).rotate(20, resample=Image.BILINEAR))
    crops, fields = faces(tilted[None])
    assert crops.shape == (1, 224, 224, 3) and crops.dtype == np.uint8
    eyes = fields["landmarks"][0, :2]
    assert abs(np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1]))) > 10  # tilted input
    again = faces.detect(crops)
    assert again.detected[0]
    dx, dy = again.landmarks[0, 1] - again.landmarks[0, 0]
    assert abs(np.degrees(np.arctan2(dy, dx))) < 4  # level after alignment


def test_missing_face_policies() -> None:
    img = data.astronaut()
    frames = np.stack([np.zeros_like(img), img, np.zeros_like(img)])
    reuse, f = FacePipeline(FaceConfig(missing="reuse"))(frames)
    assert f["detected"].tolist() == [False, True, False]
    assert np.array_equal(reuse[0], reuse[2]) and reuse[1].mean() > 50  # same box, blank frame
    mark, _ = FacePipeline(FaceConfig(missing="mark"))(frames)
    assert mark[0].max() == 0 and mark[2].max() == 0 and np.array_equal(mark[1], reuse[1])


def test_audio_resampling_keeps_pitch_and_errors_name_the_file(tmp_path: Path) -> None:
    t = np.arange(44_100) / 44_100
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 44_100)
    y = load_audio(tmp_path / "tone.wav", 16_000)
    assert len(y) == 16_000 and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16_000 / len(y) - 440) < 2
    sf.write(tmp_path / "silent.wav", np.zeros(16_000), 16_000)
    with pytest.raises(MediaError, match=r"silent\.wav: silent audio"):
        load_audio(tmp_path / "silent.wav", 16_000)
    with pytest.raises(MediaError, match=r"nope\.wav: file not found"):
        load_audio(tmp_path / "nope.wav", 16_000)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(MediaError, match=r"bad\.wav: unreadable audio"):
        load_audio(tmp_path / "bad.wav", 16_000)


def test_video_sampling_and_corrupt_video(demo_corpus: Path, tmp_path: Path) -> None:
    video = next((demo_corpus / "VideoFlash").glob("*.flv"))
    all_frames, t_all = read_frames(video, FrameSampling())
    assert all_frames.ndim == 4 and np.allclose(np.diff(t_all), 1 / 15, atol=1e-3)
    five, t5 = read_frames(video, FrameSampling("fps", fps=5))
    assert np.allclose(np.diff(t5), 0.2, atol=0.04) and len(five) < len(all_frames)
    uni, tu = read_frames(video, FrameSampling("uniform", n=4, seconds=1.2))
    assert len(uni) == 4 and tu[-1] <= 1.2
    bad = tmp_path / "broken.flv"
    bad.write_bytes(video.read_bytes()[:200])
    with pytest.raises(MediaError, match=r"broken\.flv: corrupt video"):
        read_frames(bad, FrameSampling())


def test_video_segment_matches_the_full_decode(demo_corpus: Path) -> None:
    """IEMOCAP-style clips are segments of longer videos: seek, cut, re-time from the start."""
    video = next((demo_corpus / "VideoFlash").glob("*.flv"))
    full, t_full = read_frames(video, FrameSampling())
    seg, t_seg = read_frames(video, FrameSampling(), segment=(0.5, 1.0))
    inside = (t_full >= 0.5 - 1e-6) & (t_full < 1.0 - 1e-6)
    assert len(seg) == int(inside.sum()) > 0
    np.testing.assert_array_equal(seg, full[inside])
    np.testing.assert_allclose(t_seg, t_full[inside] - 0.5, atol=1e-6)
    with pytest.raises(MediaError, match="no frames in segment"):
        read_frames(video, FrameSampling(), segment=(99.0, 100.0))


def test_crops_are_cut_from_the_crop_region_as_from_the_whole_frame(faces: FacePipeline) -> None:
    """``_warp`` samples only the region each crop covers; the crop equals one
    ``grid_sample`` over the whole frame (the direct form), to float rounding, also for
    rotated crops that reach past the frame's edge (zero there)."""
    import torch
    import torch.nn.functional as F

    img = data.astronaut()
    frames = np.stack([img, img, img])
    boxes = np.array([[175.0, 60.0, 270.0, 180.0], [-40.0, 300.0, 60.0, 420.0], [430.0, 5.0, 530.0, 110.0]])
    lms = np.zeros((3, 5, 2))
    lms[:, 1] = [[1, 0.4], [1, -0.2], [1, 0.0]]  # eye lines at 22°, -11°, 0°
    got = faces._warp(frames, boxes, lms)
    h, w = img.shape[:2]
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + faces.config.margin)
    ang = np.arctan2(lms[:, 1, 1], lms[:, 1, 0])
    c, s = np.cos(ang), np.sin(ang)
    theta = np.stack([np.stack([side / w * c, -side / w * s, 2 * cx / w - 1], 1),
                      np.stack([side / h * s, side / h * c, 2 * cy / h - 1], 1)], 1)  # fmt: skip
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    grid = F.affine_grid(torch.as_tensor(theta, dtype=torch.float32), [3, 3, 224, 224], align_corners=False)
    want = F.grid_sample(x, grid, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    want = want.permute(0, 2, 3, 1).numpy()
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert (got[1, :, :40] == 0).all() and got[1].mean() > 20  # off the frame's left edge: zero
