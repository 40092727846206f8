"""A synthetic demo corpus in the exact Clotho v2.1 layout (plus the Task 8 files and a mixup JSON).

Clips are composed procedurally from 1 to 3 foreground events placed one after another (low or high tones,
noise bursts, rising or falling chirps, clicks, rhythmic beeps) at varied loudness, optionally over a
background (electrical hum or rain). Each clip gets 5 captions written from its event structure with varied
paraphrases (synonyms, word order, "followed by"/"then", loud/soft), lowercase-initial like many Clotho
captions. The vocabulary is about a hundred words: a tiny captioner can learn it, a retriever must tell order,
pitch direction and loudness apart. Everything is deterministic for a seed (byte-identical WAVs: 44.1 kHz,
16-bit, mono; 2 to 6 s). File names are neutral (``recording 0042.wav``) so they leak nothing.

Layout written under ``out`` (see ``dcase.data.clotho``)::

    clotho_audio_files/{development,validation,evaluation,test}/recording NNNN.wav
    clotho_captions_{development,validation,evaluation}.csv      5 captions per clip
    clotho_metadata_{development,validation,evaluation,test}.csv
    test_retrieval_audio/*.wav + retrieval_captions.csv            Task 8 style (one query per clip)
    retrieval_ground_truth.csv                                     synth only: caption,file_name (for scoring)
    clotho_chatgpt_mixup.json                                      Clotho-ChatGPT-Mixup format, development pairs
    synth_info.json                                                seed and counts

Default size (``DEFAULT_CLIPS`` = 400): 280/60/60 development/validation/evaluation clips plus 20 test and 20
Task 8 clips, 1423 s of audio, 70 mixup pairs. That is 1400 development caption pairs over an ~85-word
vocabulary (enough for a tiny captioner to learn event order and pitch words), 60-clip scoring splits, and a
demo-sized feature cost: measured on this 2-core machine under load, generation took 10-20 s and the "tiny"
random-weight DAC encoded synth clips at 5-7x real time, i.e. 3.5-4.5 min for the whole corpus
(``benchmarks/data_manifest.py`` and BENCHMARKS.md). Use ``--clips 100`` for a quicker smoke run.

No credit is needed: all content is procedural.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dcase.errors import InputError, OutputExistsError
from dcase.io import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
DEFAULT_CLIPS = 400
SPLIT_FRACTIONS = {"development": 0.70, "validation": 0.15, "evaluation": 0.15}
MIXUP_JSON = "clotho_chatgpt_mixup.json"
RETRIEVAL_TRUTH_CSV = "retrieval_ground_truth.csv"
INFO_JSON = "synth_info.json"
MIN_DURATION_S, MAX_DURATION_S = 2.0, 6.0

# Paraphrases of each foreground event: (is_plural, phrase without article).
EVENT_PHRASES: dict[str, list[tuple[bool, str]]] = {
    "low_tone": [(False, "low tone"), (False, "deep tone"), (False, "low pitched tone"), (False, "deep note")],
    "high_tone": [
        (False, "high tone"),
        (False, "high pitched tone"),
        (False, "shrill whistle"),
        (False, "sharp high note"),
    ],
    "noise": [(False, "burst of noise"), (False, "short hiss"), (False, "blast of static"), (False, "noise burst")],
    "rising": [
        (False, "rising sweep"),
        (False, "upward chirp"),
        (False, "rising whistle"),
        (False, "tone that rises in pitch"),
    ],
    "falling": [
        (False, "falling sweep"),
        (False, "downward chirp"),
        (False, "falling whistle"),
        (False, "tone that drops in pitch"),
    ],
    "clicks": [(False, "series of clicks"), (True, "rapid clicks"), (True, "quick clicks"), (False, "clicking sound")],
    "beeps": [(False, "series of beeps"), (True, "rhythmic beeps"), (True, "repeated beeps"), (False, "beeping sound")],
}
EVENTS = tuple(EVENT_PHRASES)
BACKGROUND_PHRASES = {
    "hum": ["a low electrical hum", "a steady hum", "a constant buzzing hum"],
    "rain": ["rain", "steady rain", "light rainfall"],
}
BACKGROUNDS = tuple(BACKGROUND_PHRASES)
LOUDNESS_WORDS = {"loud": ["loud", "strong"], "soft": ["soft", "quiet", "faint"]}
LOUDNESS_AMPLITUDE = {"loud": (0.6, 0.8), "normal": (0.3, 0.4), "soft": (0.08, 0.14)}


@dataclass(frozen=True)
class Event:
    kind: str  # one of EVENTS
    loudness: str  # loud | normal | soft
    start_s: float
    length_s: float


@dataclass(frozen=True)
class ClipSpec:
    """The structure of one synthetic clip: events in time order, optional background, duration."""

    events: tuple[Event, ...]
    background: str | None
    duration_s: float


# ----------------------------------------------------------------------------------------------- structure


def sample_spec(rng: np.random.Generator) -> ClipSpec:
    """Draw 1-3 distinct events (in order), their loudness, lengths and gaps, a background, a duration."""
    n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    kinds = [EVENTS[k] for k in rng.choice(len(EVENTS), size=n, replace=False)]
    lengths = [float(rng.uniform(0.4, 1.1)) for _ in kinds]
    gaps = [float(rng.uniform(0.15, 0.5)) for _ in kinds]
    t = float(rng.uniform(0.1, 0.4))
    events = []
    for kind, length, gap in zip(kinds, lengths, gaps, strict=True):
        loud = str(rng.choice(["loud", "normal", "soft"], p=[0.35, 0.3, 0.35]))
        events.append(Event(kind, loud, round(t, 4), round(length, 4)))
        t += length + gap
    bg = rng.choice(["none", "hum", "rain"], p=[0.4, 0.3, 0.3])
    duration = float(np.clip(t + rng.uniform(0.0, 1.5), MIN_DURATION_S, MAX_DURATION_S))
    return ClipSpec(tuple(events), None if bg == "none" else str(bg), round(duration, 3))


# ----------------------------------------------------------------------------------------------- audio


def _envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    e = np.ones(n)
    a = min(n // 2, max(1, int(attack_s * SAMPLE_RATE)))
    r = min(n // 2, max(1, int(release_s * SAMPLE_RATE)))
    e[:a] = np.linspace(0.0, 1.0, a)
    e[n - r :] = np.linspace(1.0, 0.0, r)
    return e


def _sweep(f0: float, f1: float, n: int) -> np.ndarray:
    f = np.geomspace(f0, f1, n)
    return np.sin(2 * np.pi * np.cumsum(f) / SAMPLE_RATE)


def _render_event(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """A unit-peak float64 signal [n] for one foreground event."""
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("low_tone", "high_tone"):
        f = rng.uniform(110, 260) if kind == "low_tone" else rng.uniform(1200, 2600)
        x = np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t + rng.uniform(0, np.pi))
        x *= _envelope(n, 0.02, 0.08)
    elif kind == "noise":
        x = rng.standard_normal(n) * np.exp(-t * rng.uniform(2.0, 6.0)) * _envelope(n, 0.005, 0.05)
    elif kind in ("rising", "falling"):
        lo, hi = rng.uniform(300, 600), rng.uniform(1800, 3500)
        x = _sweep(lo, hi, n) if kind == "rising" else _sweep(hi, lo, n)
        x *= _envelope(n, 0.02, 0.05)
    elif kind == "clicks":
        x = np.zeros(n)
        k = int(rng.integers(4, 10))
        click = rng.standard_normal(int(0.004 * SAMPLE_RATE)) * np.exp(-np.arange(int(0.004 * SAMPLE_RATE)) / 40.0)
        for pos in np.sort(rng.uniform(0, max(1, n - len(click)), size=k)).astype(int):
            x[pos : pos + len(click)] += click
    elif kind == "beeps":
        x = np.zeros(n)
        f = rng.uniform(700, 1100)
        period = rng.uniform(0.18, 0.3)
        blen = int(rng.uniform(0.06, 0.1) * SAMPLE_RATE)
        beep = np.sin(2 * np.pi * f * np.arange(blen) / SAMPLE_RATE) * _envelope(blen, 0.005, 0.01)
        pos = 0
        while pos + blen <= n:
            x[pos : pos + blen] += beep
            pos += int(period * SAMPLE_RATE)
    else:  # pragma: no cover - EVENTS is closed
        raise ValueError(kind)
    peak = float(np.max(np.abs(x))) or 1.0
    return x / peak


def _render_background(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    if kind == "hum":
        f = float(rng.choice([50.0, 60.0]))
        x = np.asarray(sum(a * np.sin(2 * np.pi * f * h * t) for h, a in ((1, 1.0), (2, 0.5), (3, 0.3), (5, 0.15))))
        amp = rng.uniform(0.04, 0.07)
    else:  # rain: low-passed noise plus sparse droplets
        w = rng.standard_normal(n)
        freqs = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
        x = np.fft.irfft(np.fft.rfft(w) / np.sqrt(1.0 + (freqs / 1500.0) ** 2), n)  # gentle one-pole low-pass
        drops = rng.uniform(0, n - 200, size=int(n / SAMPLE_RATE * 40)).astype(int)
        d = rng.standard_normal(200) * np.exp(-np.arange(200) / 25.0)
        for p in drops:
            x[p : p + 200] += d * 0.5
        amp = rng.uniform(0.04, 0.07)
    x = x / (float(np.max(np.abs(x))) or 1.0)
    return amp * x * _envelope(n, 0.2, 0.2)


def render_clip(spec: ClipSpec, rng: np.random.Generator) -> np.ndarray:
    """float32 [duration * 44100] waveform of ``spec``; peak kept below 1."""
    n = int(round(spec.duration_s * SAMPLE_RATE))
    y = np.zeros(n)
    if spec.background:
        y += _render_background(spec.background, n, rng)
    for e in spec.events:
        start = int(e.start_s * SAMPLE_RATE)
        length = min(int(e.length_s * SAMPLE_RATE), n - start)
        if length <= 0:
            continue
        lo, hi = LOUDNESS_AMPLITUDE[e.loudness]
        y[start : start + length] += rng.uniform(lo, hi) * _render_event(e.kind, length, rng)
    peak = float(np.max(np.abs(y)))
    if peak > 0.95:
        y *= 0.95 / peak
    return y.astype(np.float32)


# ----------------------------------------------------------------------------------------------- captions


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _event_phrase(e: Event, rng: np.random.Generator, loudness: bool = True) -> tuple[str, bool]:
    """(noun phrase with article, is_plural) for one event; sometimes names its loudness."""
    plural, head = EVENT_PHRASES[e.kind][int(rng.integers(len(EVENT_PHRASES[e.kind])))]
    if loudness and e.loudness in LOUDNESS_WORDS and rng.random() < 0.8:
        words = LOUDNESS_WORDS[e.loudness]
        head = f"{words[int(rng.integers(len(words)))]} {head}"
    return (head if plural else _article(head)), plural


def _background_clause(bg: str | None, rng: np.random.Generator) -> str:
    if bg is None:
        return ""
    phrases = BACKGROUND_PHRASES[bg]
    p = phrases[int(rng.integers(len(phrases)))]
    forms = [f" with {p} in the background", f" over {p}", f" against a background of {p}"]
    return forms[int(rng.integers(len(forms)))]


def _be(plural: bool) -> str:
    return "are" if plural else "is"


def caption_clip(spec: ClipSpec, rng: np.random.Generator) -> str:
    """One caption of ``spec``: event order, pitch direction, loudness and background, paraphrased."""
    ph = [_event_phrase(e, rng) for e in spec.events]
    bg = _background_clause(spec.background, rng)
    (a, pa) = ph[0]
    if len(ph) == 1:
        forms = [
            f"{a} {_be(pa)} heard{bg}",
            f"{a} can be heard{bg}",
            f"there {_be(pa)} {a}{bg}",
            f"{a} {'sound' if pa else 'sounds'} briefly{bg}",
            f"a device makes {a}{bg}",
        ]
    elif len(ph) == 2:
        (b, pb) = ph[1]
        forms = [
            f"{a} {_be(pa)} heard, followed by {b}{bg}",
            f"{a} {_be(pa)} followed by {b}{bg}",
            f"first {a}, then {b}{bg}",
            f"{a} and then {b}{bg}",
            f"{b} {'come' if pb else 'comes'} after {a}{bg}",
            f"after {a}, {b} {_be(pb)} heard{bg}",
        ]
    else:
        (b, _pb), (c, _pc) = ph[1], ph[2]
        forms = [
            f"{a} {_be(pa)} heard, then {b}, and finally {c}{bg}",
            f"first {a}, then {b}, followed by {c}{bg}",
            f"{a} {_be(pa)} followed by {b} and then {c}{bg}",
            f"{a}, {b} and {c} are heard one after another{bg}",
        ]
    return forms[int(rng.integers(len(forms)))] + "."


def caption_set(spec: ClipSpec, rng: np.random.Generator, n: int = 5) -> list[str]:
    """``n`` captions, distinct when the paraphrase space allows it (up to 50 draws)."""
    out: list[str] = []
    for _ in range(50):
        c = caption_clip(spec, rng)
        if c not in out:
            out.append(c)
        if len(out) == n:
            return out
    while len(out) < n:
        out.append(caption_clip(spec, rng))
    return out


def mixup_captions(a: ClipSpec, b: ClipSpec, rng: np.random.Generator, n: int = 3) -> list[str]:
    """Captions of two clips played together, written from the union of their events (no loudness: the
    mixing ratio changes it)."""
    out: list[str] = []
    events = list(a.events) + [e for e in b.events if e.kind not in {x.kind for x in a.events}]
    bgs = [g for g in dict.fromkeys([a.background, b.background]) if g]
    for _ in range(30):
        names = [_event_phrase(e, rng, loudness=False)[0] for e in events]
        order = rng.permutation(len(names))
        names = [names[i] for i in order]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        bg = ""
        if bgs:
            bg = (
                " with " + " and ".join(BACKGROUND_PHRASES[g][int(rng.integers(3))] for g in bgs) + " in the background"
            )
        plural = len(names) > 1
        forms = [
            f"{listed} {'are' if plural else 'is'} heard at the same time{bg}",
            f"a mix of {listed}{bg}",
            f"{listed} {'overlap' if plural else 'plays'}{bg}",
            f"{listed} {'play together' if plural else 'can be heard'}{bg}",
        ]
        c = forms[int(rng.integers(len(forms)))] + "."
        if c not in out:
            out.append(c)
        if len(out) == n:
            break
    return out


# ----------------------------------------------------------------------------------------------- writing


def _write_wav(path: Path, x: np.ndarray) -> None:
    buf = io.BytesIO()
    sf.write(buf, x, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def split_sizes(n_clips: int) -> dict[str, int]:
    """development/validation/evaluation sizes (70/15/15, each at least 1)."""
    if n_clips < 3:
        raise InputError(f"--clips must be at least 3 (one per captioned split), got {n_clips}")
    n_val = max(1, round(n_clips * SPLIT_FRACTIONS["validation"]))
    n_eval = max(1, round(n_clips * SPLIT_FRACTIONS["evaluation"]))
    return {"development": n_clips - n_val - n_eval, "validation": n_val, "evaluation": n_eval}


def make_synth_corpus(
    out: str | Path,
    n_clips: int = DEFAULT_CLIPS,
    seed: int = 0,
    *,
    n_test: int | None = None,
    n_retrieval: int | None = None,
    mixup: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write the synthetic corpus (layout in the module docstring) under ``out`` and return ``out``.

    ``n_clips`` captioned clips are split 70/15/15 into development/validation/evaluation; ``n_test`` caption-less
    test clips and ``n_retrieval`` Task 8 clips default to max(2, n_clips // 20) each. With ``mixup``, writes
    ``clotho_chatgpt_mixup.json`` over max(1, n_dev // 4) development pairs (3 captions each). Clip ``i`` depends only
    on (seed, i). Refuses a non-empty ``out`` unless ``overwrite``.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite to write into it")
    sizes = split_sizes(n_clips)
    extra = max(2, n_clips // 20)
    sizes["test"] = extra if n_test is None else n_test
    sizes["retrieval_audio"] = extra if n_retrieval is None else n_retrieval

    specs: dict[str, list[tuple[str, ClipSpec]]] = {}
    caption_rows: dict[str, list[list[str]]] = {}
    queries: list[tuple[str, str]] = []
    index = 0
    total = sum(sizes.values())
    bar = tqdm(total=total, desc="synth clips", unit="clip", disable=not progress, leave=False)
    for split, n in sizes.items():
        folder = out / ("test_retrieval_audio" if split == "retrieval_audio" else f"clotho_audio_files/{split}")
        folder.mkdir(parents=True, exist_ok=True)
        specs[split] = []
        caption_rows[split] = []
        for _ in range(n):
            rng = np.random.default_rng([seed, index])
            name = f"recording {index:04d}.wav"
            spec = sample_spec(rng)
            _write_wav(folder / name, render_clip(spec, rng))
            caps = caption_set(spec, rng)
            specs[split].append((name, spec))
            caption_rows[split].append([name, *caps])
            if split == "retrieval_audio":
                queries.append((caps[0], name))
            index += 1
            bar.update(1)
    bar.close()

    for split in ("development", "validation", "evaluation"):
        _write_csv(
            out / f"clotho_captions_{split}.csv",
            ["file_name"] + [f"caption_{k}" for k in range(1, 6)],
            caption_rows[split],
        )
    for split in ("development", "validation", "evaluation", "test"):
        rows = []
        for name, spec in specs[split]:
            n = int(round(spec.duration_s * SAMPLE_RATE))
            rows.append(
                [
                    name,
                    "synthetic;procedural",
                    name.split()[-1].removesuffix(".wav"),
                    "none",
                    f"[0, {n}]",
                    "dcase-synth",
                    "http://creativecommons.org/publicdomain/zero/1.0/",
                ]
            )
        _write_csv(
            out / f"clotho_metadata_{split}.csv",
            ["file_name", "keywords", "sound_id", "sound_link", "start_end_samples", "manufacturer", "license"],
            rows,
        )
    q_rng = np.random.default_rng([seed, 10**6])
    queries = [queries[i] for i in q_rng.permutation(len(queries))]
    _write_csv(out / "retrieval_captions.csv", ["caption"], [[q] for q, _ in queries])
    _write_csv(out / RETRIEVAL_TRUTH_CSV, ["caption", "file_name"], [[q, f] for q, f in queries])

    n_pairs = 0
    if mixup:
        dev = specs["development"]
        m_rng = np.random.default_rng([seed, 10**6 + 1])
        data = []
        for _ in range(max(1, len(dev) // 4)):
            i, j = (int(v) for v in m_rng.choice(len(dev), size=2, replace=False))
            data.append(
                {
                    "selected_pair": [i, j],
                    "audio_files": [dev[i][0], dev[j][0]],
                    "chatgpt_mixups": mixup_captions(dev[i][1], dev[j][1], m_rng),
                }
            )
        n_pairs = len(data)
        atomic_write_text(out / MIXUP_JSON, json.dumps({"dataset": data}, indent=1, ensure_ascii=False))
    info = {
        "generator": "dcase.data.synth",
        "seed": seed,
        "splits": sizes,
        "mixup_pairs": n_pairs,
        "sample_rate": SAMPLE_RATE,
    }
    atomic_write_text(out / INFO_JSON, json.dumps(info, indent=2))
    log.info("synthetic corpus in %s: %s, %d mixup pairs", out, sizes, n_pairs)
    return out


def vocabulary(captions: list[str]) -> set[str]:
    """Lowercase word types of ``captions`` (punctuation removed)."""
    words: set[str] = set()
    for c in captions:
        words.update(w.strip(".,") for w in c.lower().split())
    return words - {""}
