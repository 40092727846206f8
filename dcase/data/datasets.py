"""Torch datasets and collation of the training stages.

- ``CaptionDataset`` / ``collate_codes``: codec codes + clip embedding + caption items of the captioner (EnCLAP §2);
- ``PairDataset`` / ``AudioCache`` / ``pad_waves``: (audio crop, caption) items of the retriever (EnCLAP DCASE2024
  report §2.2).

Every random choice is drawn from a generator seeded with (seed, epoch, index), so training resumes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from dcase.data.audio import load_clip
from dcase.data.manifest import frame_rows
from dcase.errors import InputError
from dcase.features.store import array_shape


# ---------------------------------------------------------------------------------------------- captioner
class CaptionDataset(torch.utils.data.Dataset):
    """(codes int64 [N, T <= max_frames], clip embedding float32 [D], caption) items.

    ``per_caption=True``: one item per (clip, caption) pair (training, validation loss); otherwise one item
    per clip with an empty caption (generation). ``random_crop``: training crops a random window of
    ``max_frames`` (drawn from (seed, epoch, index)); otherwise the head is kept.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        codes: Mapping[str, np.ndarray],
        embeds: Mapping[str, np.ndarray],
        n_codebooks: int,
        clip_dim: int,
        max_frames: int,
        random_crop: bool,
        seed: int = 0,
        per_caption: bool = True,
    ) -> None:
        self.codes, self.embeds = codes, embeds
        self.n_codebooks, self.clip_dim, self.max_frames = n_codebooks, clip_dim, max_frames
        self.random_crop, self.seed, self.epoch = random_crop, seed, 0
        self.clip_ids = df["clip_id"].astype(str).tolist()
        if per_caption:
            self.items = [(i, c) for i, caps in enumerate(df["captions"]) for c in caps]
        else:
            self.items = [(i, "") for i in range(len(df))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[int]:
        """Frames per item after cropping (for length bucketing), from the store index when it has one."""
        per_clip = [min(int(array_shape(self.codes, c)[-1]), self.max_frames) for c in self.clip_ids]
        return [per_clip[i] for i, _ in self.items]

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray, str]:
        i, caption = self.items[idx]
        clip_id = self.clip_ids[i]
        codes = np.asarray(self.codes[clip_id])
        if codes.ndim != 2 or codes.shape[0] != self.n_codebooks or codes.shape[1] == 0:
            raise InputError(
                f"clip {clip_id!r}: codec features have shape {codes.shape}, expected "
                f"[{self.n_codebooks}, T > 0] (model.n_codebooks)"
            )
        emb = np.asarray(self.embeds[clip_id], dtype=np.float32)
        if emb.shape != (self.clip_dim,):
            raise InputError(
                f"clip {clip_id!r}: clip embedding has shape {emb.shape}, expected ({self.clip_dim},) (model.clip_dim)"
            )
        T = codes.shape[1]
        start = 0
        if T > self.max_frames and self.random_crop:
            rng = np.random.default_rng([self.seed, self.epoch, idx])
            start = int(rng.integers(0, T - self.max_frames + 1))
        return codes[:, start : start + self.max_frames].astype(np.int64), emb, caption


def collate_codes(items: Sequence[tuple[np.ndarray, np.ndarray, str]], pad_code: int) -> dict[str, torch.Tensor]:
    """-> codes [B, N, L] (``pad_code`` after each clip), codes_mask [B, L] bool, clip_emb [B, D]."""
    L = max(c.shape[1] for c, _, _ in items)
    N = items[0][0].shape[0]
    codes = torch.full((len(items), N, L), pad_code, dtype=torch.long)
    mask = torch.zeros(len(items), L, dtype=torch.bool)
    for b, (c, _, _) in enumerate(items):
        codes[b, :, : c.shape[1]] = torch.from_numpy(c)
        mask[b, : c.shape[1]] = True
    clip = torch.from_numpy(np.stack([e for _, e, _ in items]))
    return {"codes": codes, "codes_mask": mask, "clip_emb": clip}


# ---------------------------------------------------------------------------------------------- retriever
class AudioCache:
    """Decoded audio of manifest rows at ``sample_rate`` (truncated to ``max_seconds``), kept if ``keep``."""

    def __init__(self, sample_rate: int, max_seconds: float | None, keep: bool) -> None:
        self.sample_rate, self.max_seconds, self.keep = sample_rate, max_seconds, keep
        self._store: dict[str, np.ndarray] = {}

    def get(self, row: Any) -> np.ndarray:
        x = self._store.get(row.clip_id)
        if x is None:
            x = load_clip(row, self.sample_rate, self.max_seconds)
            if self.keep:
                self._store[row.clip_id] = x
        return x


def pad_waves(waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """list of [T_i] -> (waves [B, max T], lengths [B])."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    return out, lengths


def fit_min_length(x: np.ndarray, n_min: int) -> np.ndarray:
    """Zero-pad a wave [T] at the end to at least ``n_min`` samples (the audio tower's shortest input)."""
    return np.pad(x, (0, n_min - len(x))) if len(x) < n_min else x


class PairDataset(torch.utils.data.Dataset):
    """One item per clip: (random crop of its audio [<= max_seconds], one of its captions at random).

    The crop and caption are drawn from a generator seeded with (seed, epoch, index): deterministic, so
    training resumes exactly.
    """

    def __init__(
        self, df: pd.DataFrame, cache: AudioCache, max_seconds: float, min_samples: int, seed: int = 0
    ) -> None:
        self.rows = list(frame_rows(df))
        self.cache, self.seed, self.epoch = cache, seed, 0
        self.n_crop = int(round(max_seconds * cache.sample_rate))
        self.min_samples = min_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> list[int]:
        sr = self.cache.sample_rate
        return [min(self.n_crop, int(r.duration_s * sr)) for r in self.rows]

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        row = self.rows[i]
        rng = np.random.default_rng([self.seed, self.epoch, i])
        x = self.cache.get(row)
        if len(x) > self.n_crop:
            off = int(rng.integers(0, len(x) - self.n_crop + 1))
            x = x[off : off + self.n_crop]
        caption = row.captions[int(rng.integers(0, len(row.captions)))]
        return fit_min_length(x, self.min_samples), caption
