"""The 12 real Clotho clips of ``shared/clotho-mini`` arranged in the official layouts of every dataset the recipe
reads, under one data root with aac-datasets' folder names: ``CLOTHO_v2.1/``, ``AUDIOCAPS/``, ``WavCaps/``,
``Clotho-ChatGPT-Mixup/`` and ``dcase2024_task6_excluded_freesound_ids.csv``.

Each clip (15-30 s) is cut into 4 s segments, and the segments of one recording all go to one split, so no training
audio shares a recording with evaluation audio. Every segment keeps the five real captions of its clip.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import soundfile as sf

SEGMENT_S = 4.0
# recordings (sorted file names of clotho-mini) per split
SPLIT_OF_CLIP = {
    0: "development",
    1: "development",
    2: "development",
    3: "development",
    4: "development",
    5: "validation",
    6: "evaluation",
    7: "evaluation",
    8: "test",
    9: "retrieval",
    10: "retrieval",
    11: "retrieval",
}
EXCLUDED_FREESOUND_ID = "424242"


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _segments(wav: Path, max_segments: int) -> list[tuple[np.ndarray, int]]:
    x, sr = sf.read(str(wav), dtype="float32", always_2d=False)
    n = int(SEGMENT_S * sr)
    return [(x[i * n : (i + 1) * n], sr) for i in range(min(max_segments, len(x) // n))]


def build_data_root(mini: Path, root: Path, max_segments: int = 3) -> dict[str, list[str]]:
    """Write the data root; returns {split: [file names]} of the Clotho part."""
    captions = {}
    with open(mini / "clotho_captions_mini.csv", newline="", encoding="utf-8") as f:
        for rec in csv.DictReader(f):
            captions[rec["file_name"]] = [rec[f"caption_{k}"] for k in range(1, 6)]
    clips = sorted(captions)
    clotho = root / "CLOTHO_v2.1"
    audio, csvs = clotho / "clotho_audio_files", clotho / "clotho_csv_files"
    names: dict[str, list[str]] = {}
    caps_of: dict[str, list[str]] = {}
    dev_audio: list[tuple[str, np.ndarray, int, list[str]]] = []
    for i, clip in enumerate(clips):
        split = SPLIT_OF_CLIP[i]
        folder = audio / ("test_retrieval_audio" if split == "retrieval" else split)
        n_seg = max_segments + 2 if split == "retrieval" else max_segments  # Task 8 ranks 10 distinct clips
        for k, (x, sr) in enumerate(_segments(mini / "audio" / clip, n_seg)):
            name = f"{Path(clip).stem} seg{k}.wav"
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(str(folder / name), x, sr)
            names.setdefault(split, []).append(name)
            caps_of[name] = captions[clip]
            if split == "development":
                dev_audio.append((name, x, sr, captions[clip]))
    for split in ("development", "validation", "evaluation"):
        _write_csv(
            csvs / f"clotho_captions_{split}.csv",
            ["file_name", *[f"caption_{k}" for k in range(1, 6)]],
            [[n, *caps_of[n]] for n in names[split]],
        )
    queries = [caps_of[n][0] for n in names["retrieval"]]
    _write_csv(csvs / "retrieval_captions.csv", ["caption"], [[q] for q in queries])

    # AudioCaps, aac-datasets 0.7 layout: csv_files_v1/<split>.csv, audio_32000Hz/<split>/<ytid>_<start>.flac
    ac = root / "AUDIOCAPS"
    rows = []
    for j, (_name, x, sr, caps) in enumerate(dev_audio[:4]):
        yid, start = f"ytid{j:03d}", str(10 * j)
        seg = x[: int(2.0 * sr)][::-1].copy()  # another signal than the Clotho segment (reversed), 2 s
        _write_flac(ac / "audio_32000Hz" / "train" / f"{yid}_{start}.flac", seg, sr, 32000)
        rows.append([str(100 + j), yid, start, caps[1]])
    _write_csv(ac / "csv_files_v1" / "train.csv", ["audiocap_id", "youtube_id", "start_time", "caption"], rows)

    # WavCaps, aac-datasets layout: json_files/<Source>/<name>_final.json, Audio/<Source>/<id>.flac
    wc = root / "WavCaps"
    sources = {"SoundBible": ("sb_final.json", dev_audio[4:6]), "FreeSound": ("fsd_final.json", dev_audio[6:8])}
    for src, (fname, items) in sources.items():
        data = []
        for j, (_name, x, sr, caps) in enumerate(items):
            ident = EXCLUDED_FREESOUND_ID if (src == "FreeSound" and j == 0) else f"{5000 + j}"
            seg = -x[: int(3.0 * sr)]  # polarity-inverted 3 s: other content than the Clotho segment
            _write_flac(wc / "Audio" / src / f"{ident}.flac", seg, sr, 32000)
            data.append({"id": ident, "caption": caps[2], "duration": 3.0, "audio": "x", "download_link": "y"})
        (wc / "json_files" / src).mkdir(parents=True, exist_ok=True)
        (wc / "json_files" / src / fname).write_text(json.dumps({"num_captions_per_audio": 1, "data": data}))
    _write_csv(root / "dcase2024_task6_excluded_freesound_ids.csv", ["sound_id"], [[EXCLUDED_FREESOUND_ID]])

    # Clotho-ChatGPT-Mixup release: pairs of development clips, under the published file names
    dev = names["development"]
    pairs = [
        {
            "selected_pair": [a, a + 1],
            "audio_files": [dev[a], dev[a + 1]],
            "chatgpt_mixups": [
                f"{caps_of[dev[a]][0].rstrip('.')} while {caps_of[dev[a + 1]][0][0].lower()}"
                f"{caps_of[dev[a + 1]][0][1:]}"
            ],
        }
        for a in range(0, len(dev) - 1, 2)
    ]
    mix = root / "Clotho-ChatGPT-Mixup"
    mix.mkdir(parents=True, exist_ok=True)
    (mix / "clotho_development_chatgpt_mixups.json").write_text(json.dumps({"dataset": pairs}))
    (mix / "clotho_development_chatgpt_mixups_err.json").write_text(json.dumps([]))
    return names


def _write_flac(path: Path, x: np.ndarray, sr: int, target_sr: int) -> None:
    import soxr

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), soxr.resample(x, sr, target_sr).astype(np.float32), target_sr, format="FLAC")
