"""A deterministic synthetic corpus in the official CREMA-D layout.

It exists to prove the pipeline end to end on any machine in minutes; its numbers say
nothing about emotion recognition. Faces are a real photograph (a crop of the
public-domain astronaut image from scikit-image) with class-dependent tints, shapes and
motion; voices are a harmonic source through formant filters with class-dependent
pitch, energy and syllable rate; voice/face/AV votes are simulated from the intended
class with a different accuracy per rater modality (faces are easier to rate than
voices, both together easiest), as in the real corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import av
import numpy as np
import pandas as pd
import soundfile as sf
from PIL import Image
from scipy.signal import lfilter

from avx.corpora.cremad import CLASS_CODES, SENTENCES

EMOTIONS = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
AUDIO_SR = 16_000
VIDEO_FPS = 15
FRAME_W, FRAME_H = 192, 160

# Per class: f0 (Hz), energy, syllables per second, face tint (RGB gain), face scale (w, h).
_VOICE = {
    "ANG": (210.0, 1.00, 5.0),
    "DIS": (140.0, 0.55, 3.0),
    "FEA": (260.0, 0.70, 6.0),
    "HAP": (235.0, 0.85, 4.5),
    "NEU": (165.0, 0.50, 3.5),
    "SAD": (125.0, 0.35, 2.2),
}
_FACE = {
    "ANG": ((1.25, 0.85, 0.85), (1.00, 1.00)),
    "DIS": ((0.90, 1.20, 0.85), (1.08, 0.94)),
    "FEA": ((0.90, 0.95, 1.25), (0.94, 1.10)),
    "HAP": ((1.15, 1.15, 1.00), (1.06, 1.00)),
    "NEU": ((1.00, 1.00, 1.00), (1.00, 1.00)),
    "SAD": ((0.75, 0.75, 0.85), (1.00, 1.04)),
}
_LEVEL_GAIN = {"LO": 0.5, "MD": 1.0, "HI": 1.5, "XX": 1.0}
# Probability a rater picks the intended class, per rater modality.
_RATER_ACCURACY = {1: 0.45, 2: 0.62, 3: 0.74}
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480)]
_RACES = ["Caucasian", "African American", "Asian", "Caucasian"]
# Per class: (valence, arousal) prototypes on [-1, 1] (a circumplex placement).
_VA = {
    "ANG": (-0.6, 0.7),
    "DIS": (-0.5, 0.2),
    "FEA": (-0.6, 0.6),
    "HAP": (0.7, 0.5),
    "NEU": (0.0, -0.2),
    "SAD": (-0.6, -0.5),
}
CONTINUOUS_RATE = 10.0


@dataclass(frozen=True)
class DemoClip:
    clip_id: str
    speaker: int
    emotion: str
    level: str
    sentence: str


def plan_clips(n_clips: int, n_speakers: int = 12) -> list[DemoClip]:
    """Clips cycling speakers x emotions x sentences, balanced over classes."""
    codes = list(SENTENCES)
    clips = []
    k = 0
    while len(clips) < n_clips:
        sentence = codes[(k // (n_speakers * len(EMOTIONS))) % len(codes)]
        spk = 1001 + k % n_speakers
        emo = EMOTIONS[(k // n_speakers + k) % len(EMOTIONS)]
        level = "XX" if emo == "NEU" else ("LO", "MD", "HI")[(k // 7) % 3]
        cid = f"{spk}_{sentence}_{emo}_{level}"
        if cid not in {c.clip_id for c in clips}:
            clips.append(DemoClip(cid, spk, emo, level, sentence))
        k += 1
    return clips


def _face_image() -> np.ndarray:
    path = files("avx.demo").joinpath("assets/astronaut_face.png")
    with path.open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def synth_voice(clip: DemoClip, rng: np.random.Generator, duration: float) -> np.ndarray:
    """Harmonic source with a class-dependent f0 contour through moving formant filters."""
    f0, energy, rate = _VOICE[clip.emotion]
    gain = _LEVEL_GAIN[clip.level]
    spk_rng = np.random.default_rng(clip.speaker)
    f0 *= spk_rng.uniform(0.75, 1.25) * (1 + 0.08 * (gain - 1))
    n = int(duration * AUDIO_SR)
    t = np.arange(n) / AUDIO_SR
    contour = f0 * (1 + 0.06 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    contour *= 1 + 0.01 * rng.standard_normal(n).cumsum() / np.sqrt(n)
    phase = 2 * np.pi * np.cumsum(contour) / AUDIO_SR
    k = np.arange(1, 30)[:, None]
    source = (np.sin(k * phase[None]) / k).sum(axis=0)
    # Syllables: raised-cosine envelope at a class-dependent rate, one vowel each.
    syl_phase = rate * t + rng.uniform(0, 1)
    envelope = np.clip(np.sin(np.pi * (syl_phase % 1.0)), 0, None) ** 1.5
    out = np.zeros(n)
    syl_idx = np.floor(syl_phase).astype(int)
    for s in np.unique(syl_idx):
        m = syl_idx == s
        seg = source[m]
        for fc in _VOWELS[(s + clip.speaker) % len(_VOWELS)]:
            r = np.exp(-np.pi * 90 / AUDIO_SR)
            th = 2 * np.pi * fc * spk_rng.uniform(0.95, 1.05) / AUDIO_SR
            seg = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], seg)
        out[m] = seg
    out *= envelope * energy * gain
    out += 0.003 * rng.standard_normal(n)
    return (0.5 * out / (np.abs(out).max() + 1e-9) * min(1.0, energy * gain)).astype(np.float32)


def synth_video(clip: DemoClip, rng: np.random.Generator, duration: float, face: np.ndarray) -> np.ndarray:
    """Frames ``[T, H, W, 3]``: the face, tinted and reshaped per class, drifting over a background."""
    tint, (sx, sy) = _FACE[clip.emotion]
    g = _LEVEL_GAIN[clip.level]
    tint = 1 + (np.asarray(tint) - 1) * g
    spk_rng = np.random.default_rng(clip.speaker + 7)
    size = int(96 * spk_rng.uniform(0.9, 1.1))
    w, h = int(size * (1 + (sx - 1) * g)), int(size * (1 + (sy - 1) * g))
    img = np.asarray(Image.fromarray(face).resize((w, h), Image.BILINEAR), dtype=np.float32)
    img = np.clip(img * tint * spk_rng.uniform(0.9, 1.1, size=3), 0, 255)
    bg = spk_rng.uniform(60, 200, size=3)
    n = max(1, round(duration * VIDEO_FPS))
    canvas = np.empty((n, FRAME_H, FRAME_W, 3), dtype=np.float32)
    canvas[:] = bg
    x0, y0 = rng.uniform(10, FRAME_W - w - 10), rng.uniform(5, max(6, FRAME_H - h - 5))
    speed = {"ANG": 2.0, "FEA": 2.5, "HAP": 1.5}.get(clip.emotion, 0.6) * g
    for i in range(n):
        x = int(np.clip(x0 + speed * 3 * np.sin(i / 3.0), 0, FRAME_W - w))
        y = int(np.clip(y0 + speed * np.cos(i / 2.0), 0, FRAME_H - h))
        canvas[i, y : y + h, x : x + w] = img
    canvas += 3 * rng.standard_normal(canvas.shape, dtype=np.float32)
    frames = np.clip(canvas, 0, 255).astype(np.uint8)
    return frames


def write_flv(path: Path, frames: np.ndarray, fps: int = VIDEO_FPS) -> None:
    with av.open(str(path), "w", format="flv") as c:
        s = c.add_stream("flv", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.bit_rate = 800_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def simulate_votes(clips: list[DemoClip], seed: int) -> pd.DataFrame:
    """tabulatedVotes.csv rows for every clip under each rater modality."""
    rng = np.random.default_rng(seed + 1)
    rows = []
    for i, clip in enumerate(clips, start=1):
        intended = EMOTIONS.index(clip.emotion)
        for qt, acc in _RATER_ACCURACY.items():
            acc_l = float(np.clip(acc + 0.15 * (_LEVEL_GAIN[clip.level] - 1), 0.1, 0.95))
            n_raters = int(rng.integers(8, 12))
            confusion = np.full(6, 1.0)
            confusion[4] = 3.0  # neutral is the usual confusion
            confusion[intended] = 0
            picks = np.where(
                rng.random(n_raters) < acc_l,
                intended,
                rng.choice(6, size=n_raters, p=confusion / confusion.sum()),
            )
            counts = np.bincount(picks, minlength=6)
            top = np.flatnonzero(counts == counts.max())
            row = {"": 100000 * qt + i}
            row.update({c: int(v) for c, v in zip(CLASS_CODES, counts, strict=True)})
            row.update(
                {
                    "fileName": clip.clip_id,
                    "numResponses": n_raters,
                    "agreement": counts.max() / n_raters,
                    "emoVote": ":".join(CLASS_CODES[j] for j in top),
                    "meanEmoResp": round(float(rng.uniform(40, 90)), 2),
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


def simulate_dimensions(
    clip: DemoClip, rng: np.random.Generator, duration: float
) -> tuple[tuple[float, float], pd.DataFrame]:
    """Per-clip valence/arousal (class prototype scaled by intensity, plus rater noise)
    and a per-frame contour at 10 Hz that rises and falls around the clip value."""
    g = _LEVEL_GAIN[clip.level]
    v0, a0 = _VA[clip.emotion]
    v = float(np.clip(v0 * (0.6 + 0.4 * g) + rng.normal(0, 0.08), -1, 1))
    a = float(np.clip(a0 * (0.6 + 0.4 * g) + rng.normal(0, 0.08), -1, 1))
    t = (np.arange(max(1, int(duration * CONTINUOUS_RATE))) + 0.5) / CONTINUOUS_RATE
    shape = np.sin(np.pi * t / duration)  # onset, apex, offset
    frames = pd.DataFrame(
        {
            "id": clip.clip_id,
            "time": np.round(t, 3),
            "valence": np.round(np.clip(v * (0.5 + 0.7 * shape), -1, 1), 4),
            "arousal": np.round(np.clip(a * (0.5 + 0.7 * shape) + 0.05 * np.sin(2 * np.pi * t), -1, 1), 4),
        }
    )
    return (round(v, 4), round(a, 4)), frames


def make_demo_corpus(out: str | Path, *, n_clips: int = 144, seed: int = 0) -> Path:
    """Write the demo corpus to ``out`` (CREMA-D layout) and return its root.

    Deterministic: the same ``n_clips`` and ``seed`` give the same audio samples,
    decoded frames and votes.
    """
    root = Path(out)
    (root / "AudioWAV").mkdir(parents=True, exist_ok=True)
    (root / "VideoFlash").mkdir(exist_ok=True)
    (root / "processedResults").mkdir(exist_ok=True)
    clips = plan_clips(n_clips)
    face = _face_image()
    dims, contours = [], []
    for i, clip in enumerate(clips):
        rng = np.random.default_rng([seed, i])
        duration = {"SAD": 2.4, "DIS": 2.2, "NEU": 2.0}.get(clip.emotion, 1.8) + rng.uniform(0, 0.3)
        sf.write(
            root / "AudioWAV" / f"{clip.clip_id}.wav",
            synth_voice(clip, rng, duration),
            AUDIO_SR,
            subtype="PCM_16",
        )
        write_flv(root / "VideoFlash" / f"{clip.clip_id}.flv", synth_video(clip, rng, duration, face))
        (v, a), frames = simulate_dimensions(clip, np.random.default_rng([seed, i, 1]), duration)
        dims.append({"id": clip.clip_id, "valence": v, "arousal": a})
        contours.append(frames)
    (root / "avx_demo").mkdir(exist_ok=True)
    pd.DataFrame(dims).to_csv(root / "avx_demo" / "dimensions.csv", index=False)
    pd.concat(contours).to_csv(root / "avx_demo" / "continuous.csv", index=False)
    votes = simulate_votes(clips, seed)
    votes.to_csv(root / "processedResults" / "tabulatedVotes.csv", index=False)
    pd.DataFrame(
        {"Stimulus_Number": range(1, len(clips) + 1), "Filename": [c.clip_id for c in clips]}
    ).to_csv(root / "SentenceFilenames.csv", index=False)
    speakers = sorted({c.speaker for c in clips})
    pd.DataFrame(
        {
            "ActorID": speakers,
            "Age": [20 + (s * 7) % 45 for s in speakers],
            "Sex": ["Male" if s % 2 else "Female" for s in speakers],
            "Race": [_RACES[s % len(_RACES)] for s in speakers],
            "Ethnicity": ["Hispanic" if s % 5 == 0 else "Not Hispanic" for s in speakers],
        }
    ).to_csv(root / "VideoDemographics.csv", index=False)
    (root / "README.txt").write_text(
        "Synthetic avx demo corpus in the CREMA-D layout (read it with --corpus avx-demo to get"
        " its valence/arousal labels too). It only proves the pipeline;"
        " its results say nothing about emotion recognition.\n"
    )
    return root
