"""CNext: the ConvNeXt-Tiny audio tagger of Pellegrini et al. (2023), used as EnCLAP's audio encoder.

"Adapting a ConvNeXt model to audio classification on AudioSet" (Interspeech 2023). The forward pass:

    32 kHz waveform [B, N]
      -> |STFT|^2 (Hann 1024, hop 320, centred, reflect-padded)      [B, 1, T, 513]
      -> log-mel (224 Slaney mel bins, 50-14000 Hz, 10*log10)         [B, 1, T, 224]
      -> BatchNorm over mel bins (``bn0``)
      -> ConvNeXt-Tiny: single-channel stem conv (18x4, stride 18x4, time padding 9) and 4 stages
         (depths 3,3,9,3; dims 96,192,384,768) with 2x2 downsampling between stages  [B, 768, T', F']
      -> mean over frequency -> frame features [B, T', 768]
      -> max + mean over time -> LayerNorm -> clip embedding [B, 768]   (the paper's scene embedding)
      -> optional AudioSet head (527 logits).

Parameter names follow the published checkpoints (``downsample_layers.*``, ``stages.*``, ``norm``, ``bn0``,
``head_audioset``, ``logmel_extractor.melW``), so ``load_cnext_checkpoint`` maps them one-to-one.

Short clips: a clip shorter than ``min_samples()`` (1.25 s for the published model) gives no output frame; it is
zero-padded to that length.

Batching padded audio: every clip is reflect-padded on its own before the STFT, and feature maps are zeroed
beyond each clip's valid length before every spatial convolution. Zeroes are exactly what a lone clip sees
from the convolutions' own padding, so a clip's frames and embedding do not depend on its batch mates
(up to float rounding).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcase.errors import CheckpointError, MissingInputError

log = logging.getLogger(__name__)


@dataclass
class CNextConfig:
    """Front end + ConvNeXt sizes. Defaults = the published ConvNeXt-Tiny AudioSet model."""

    sample_rate: int = 32000
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 224
    f_min: float = 50.0
    f_max: float = 14000.0
    amin: float = 1e-10
    depths: list[int] = field(default_factory=lambda: [3, 3, 9, 3])
    dims: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    stem_kernel: list[int] = field(default_factory=lambda: [18, 4])  # (time, mel), stride = kernel
    stem_time_padding: int = 9
    layer_scale_init_value: float = 1e-6
    num_classes: int = 527  # AudioSet head; 0 = no head

    @classmethod
    def tiny(cls) -> CNextConfig:
        """A debug-size model for tests: 32 mel bins, 2 small stages per level, 16..64 channels."""
        return cls(
            n_fft=256,
            hop_length=80,
            n_mels=32,
            f_max=14000.0,
            depths=[1, 1, 1, 1],
            dims=[16, 16, 32, 64],
            stem_kernel=[4, 4],
            stem_time_padding=2,
            num_classes=10,
        )

    @property
    def embed_dim(self) -> int:
        return self.dims[-1]


# --------------------------------------------------------------------------- front end


def hz_to_mel_slaney(f: torch.Tensor) -> torch.Tensor:
    """Slaney's mel scale (linear below 1 kHz, logarithmic above), as librosa's default."""
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(f >= min_log_hz, min_log_mel + torch.log(f.clamp(min=1e-10) / min_log_hz) / logstep, lin)


def mel_to_hz_slaney(m: torch.Tensor) -> torch.Tensor:
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """Triangular Slaney-normalised mel filters, [n_fft // 2 + 1, n_mels] (float64 maths, float32 result)."""
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    m = torch.linspace(
        float(hz_to_mel_slaney(torch.tensor(f_min, dtype=torch.float64))),
        float(hz_to_mel_slaney(torch.tensor(f_max, dtype=torch.float64))),
        n_mels + 2,
        dtype=torch.float64,
    )
    mel_f = mel_to_hz_slaney(m)
    fdiff = mel_f[1:] - mel_f[:-1]
    ramps = mel_f[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return weights.T.contiguous().float()


def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hann-windowed DFT kernels as stored by the published model's conv-STFT: 2 x [n_fft//2+1, 1, n_fft]."""
    n = torch.arange(n_fft, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    ang = -2 * math.pi * k[:, None] * n[None, :] / n_fft
    return (torch.cos(ang) * window).float()[:, None, :], (torch.sin(ang) * window).float()[:, None, :]


class LogMel(nn.Module):
    """Log-mel front end. Holds ``melW`` [n_freq, n_mels] (a checkpoint buffer); STFT via ``torch.stft``."""

    melW: torch.Tensor  # [n_fft // 2 + 1, n_mels] buffer
    window: torch.Tensor  # [n_fft] Hann window (not saved)

    def __init__(self, cfg: CNextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("melW", mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max))
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    def n_frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Number of STFT frames of each clip (centred STFT): len // hop + 1."""
        return lengths // self.cfg.hop_length + 1

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waves [B, N] (zero-padded), lengths [B] -> log-mel [B, 1, T, n_mels] with T = N // hop + 1.

        Each clip is reflect-padded by n_fft // 2 at both ends of its *own* samples (as a lone centred STFT
        would do), then the frames are computed without centring.
        """
        half = self.cfg.n_fft // 2
        B, N = waves.shape
        padded = waves.new_zeros(B, N + 2 * half)
        for i in range(B):
            n = int(lengths[i])
            x = waves[i, :n]
            if n <= half:  # too short to reflect: zero-pad the clip itself to half + 1 samples first
                x = F.pad(x, (0, half + 1 - n))
            xp = F.pad(x[None, None], (half, half), mode="reflect")[0, 0]
            padded[i, : xp.shape[0]] = xp[: N + 2 * half]
        spec = torch.stft(
            padded, self.cfg.n_fft, self.cfg.hop_length, window=self.window, center=False, return_complex=True
        )  # [B, F, T]
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self.melW)  # [B, T, n_mels]
        logmel = 10.0 * torch.log10(mel.clamp(min=self.cfg.amin))
        return logmel[:, None]


# --------------------------------------------------------------------------- ConvNeXt


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a [B, C, H, W] map (ConvNeXt's channels_first LayerNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    """ConvNeXt block: depthwise 7x7 -> LayerNorm -> Linear(4x) -> GELU -> Linear -> layer scale, residual."""

    def __init__(self, dim: int, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, C, T, F]; mask [B, 1, T, 1] (1 = valid time step) or None."""
        h = self.dwconv(x if mask is None else x * mask)
        h = self.pwconv2(self.act(self.pwconv1(self.norm(h.permute(0, 2, 3, 1)))))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


class CNext(nn.Module):
    """The ConvNeXt audio encoder (see module docstring). Implements the ``AudioEmbedder`` protocol."""

    def __init__(self, config: CNextConfig | None = None) -> None:
        super().__init__()
        cfg = config or CNextConfig()
        self.config = cfg
        self.sample_rate = cfg.sample_rate
        self.embed_dim = cfg.embed_dim
        self.logmel_extractor = LogMel(cfg)
        self.bn0 = nn.BatchNorm2d(cfg.n_mels)
        d = cfg.dims
        kt, kf = cfg.stem_kernel
        stem = nn.Sequential(
            nn.Conv2d(1, d[0], kernel_size=(kt, kf), stride=(kt, kf), padding=(cfg.stem_time_padding, 0)),
            LayerNorm2d(d[0]),
        )
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(d[i]), nn.Conv2d(d[i], d[i + 1], kernel_size=2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(d[i], cfg.layer_scale_init_value) for _ in range(cfg.depths[i])) for i in range(4)
        )
        self.norm = nn.LayerNorm(d[-1], eps=1e-6)
        self.head_audioset = nn.Linear(d[-1], cfg.num_classes) if cfg.num_classes > 0 else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    # ---- lengths through the network
    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid output frames T'_i for waveform lengths [B] (STFT frames -> stem -> 3 x /2)."""
        t = self.logmel_extractor.n_frames(lengths)
        kt = self.config.stem_kernel[0]
        t = (t + 2 * self.config.stem_time_padding - kt) // kt + 1
        for _ in range(3):
            t = t // 2
        return t

    def _stage_lengths(self, lengths: torch.Tensor) -> list[torch.Tensor]:
        t = self.logmel_extractor.n_frames(lengths)
        kt = self.config.stem_kernel[0]
        out = [t]
        t = (t + 2 * self.config.stem_time_padding - kt) // kt + 1
        out.append(t)
        for _ in range(3):
            t = t // 2
            out.append(t)
        return out  # [spectrogram, stage0, stage1, stage2, stage3]

    @staticmethod
    def _time_mask(lengths: torch.Tensor, t: int, dtype: torch.dtype) -> torch.Tensor:
        return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).to(dtype)[:, None, :, None]

    # ---- forward passes
    def forward_features(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """waves [B, N] float32 at 32 kHz, lengths [B] int64 -> (frames [B, T', D], frame_mask [B, T'] bool).

        Frames are the last stage's map averaged over frequency; padded frames are zero and masked out.
        """
        if waves.dim() != 2:
            raise ValueError(f"CNext expects waves [B, N], got shape {tuple(waves.shape)}")
        B, N = waves.shape
        if lengths is None:
            lengths = torch.full((B,), N, dtype=torch.long, device=waves.device)
        # clips too short for one output frame are zero-padded to the shortest length that gives one
        min_n = self.min_samples()
        if N < min_n:
            waves = F.pad(waves, (0, min_n - N))
        lengths = lengths.to(waves.device).long().clamp(min=min_n)
        stage_len = self._stage_lengths(lengths)
        x = self.logmel_extractor(waves, lengths)  # [B, 1, T, M]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        x = x * self._time_mask(stage_len[0], x.shape[2], x.dtype)
        for i in range(4):
            # stem (its padding sees the zeroed tail) or LayerNorm -> 2x2 conv (valid outputs read valid inputs)
            x = self.downsample_layers[i](x)
            mask = self._time_mask(stage_len[i + 1], x.shape[2], x.dtype)
            for blk in self.stages[i].children():
                x = blk(x, mask)
            x = x * mask
        frames = x.mean(dim=3).transpose(1, 2)  # [B, T', D]
        frame_mask = torch.arange(frames.shape[1], device=frames.device)[None, :] < stage_len[-1][:, None]
        return frames, frame_mask

    def min_samples(self) -> int:
        """Shortest waveform that yields one output frame (shorter clips are zero-padded to this length)."""
        cfg = self.config
        t_stem = 8  # three 2x downsamplings after the stem
        t_spec = (t_stem - 1) * cfg.stem_kernel[0] + cfg.stem_kernel[0] - 2 * cfg.stem_time_padding
        return max(1, (t_spec - 1) * cfg.hop_length)

    def pool(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """Masked max + mean over time, then LayerNorm: [B, T', D] -> [B, D]."""
        m = frame_mask[..., None]
        mx = frames.masked_fill(~m, float("-inf")).amax(dim=1)
        mean = (frames * m).sum(1) / m.sum(1).clamp(min=1)
        return self.norm(mx + mean)

    def clip_embedding(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """waves [B, N], lengths [B] -> the 768-d scene embedding [B, D] of each clip."""
        return self.pool(*self.forward_features(waves, lengths))

    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``AudioEmbedder`` protocol: [B, N], [B] -> [B, D]."""
        return self.clip_embedding(waves, lengths)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Returns frames, frame_mask, embedding and (if the head exists) AudioSet logits."""
        frames, frame_mask = self.forward_features(waves, lengths)
        emb = self.pool(frames, frame_mask)
        out = {"frames": frames, "frame_mask": frame_mask, "embedding": emb}
        if self.head_audioset is not None:
            out["logits"] = self.head_audioset(emb)
        return out

    # ---- persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """A ``dcase.checkpoint`` folder (``config.json`` + ``model.safetensors``), written atomically."""
        from dcase.checkpoint import save_checkpoint

        return save_checkpoint(self, path, "cnext", self.config)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> CNext:
        """Load a checkpoint folder, training run folder or cached Hub repository (``dcase.checkpoint``)."""
        from dcase.checkpoint import load_checkpoint, load_state
        from dcase.config import from_dict

        config, state, folder = load_checkpoint(path, "cnext", device)
        model = cls(from_dict(CNextConfig, config, prefix=str(folder)))
        load_state(model, state, folder)
        return model.to(device).eval()


# --------------------------------------------------------------------------- published checkpoints

# Buffers of the published model's conv-STFT; we compute the STFT with torch.stft and only check them.
_STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")


def _published_to_ours(key: str) -> str:
    """Published names -> ours. The stages are ``stages.i.j`` in both (ours is a ModuleList of ModuleLists)."""
    return key


@dataclass
class LoadReport:
    """What ``load_cnext_checkpoint`` did with the checkpoint's keys."""

    missing: list[str]
    unexpected: list[str]
    checked: list[str]


def load_cnext_state_dict(model: CNext, state: dict[str, torch.Tensor]) -> LoadReport:
    """Load a published-format state dict into ``model``. Shape mismatch -> ValueError naming the key.

    Missing and unexpected keys are logged and returned (not fatal); the conv-STFT buffers are checked
    against our Hann DFT and reported under ``checked``.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    checked: list[str] = []
    n_fft = model.config.n_fft
    ref_real, ref_imag = dft_kernels(n_fft)
    for k, v in state.items():
        if k in _STFT_KEYS:
            ref = ref_real if k.endswith("conv_real.weight") else ref_imag
            if tuple(v.shape) != tuple(ref.shape):
                raise CheckpointError(f"checkpoint key {k!r}: shape {tuple(v.shape)}, expected {tuple(ref.shape)}")
            # the sign of the imaginary kernel does not matter for the power spectrum
            if not (torch.allclose(v.float(), ref, atol=1e-4) or torch.allclose(v.float().abs(), ref.abs(), atol=1e-4)):
                raise CheckpointError(
                    f"checkpoint key {k!r}: STFT kernel differs from a Hann-window DFT of size {n_fft}"
                )
            checked.append(k)
            continue
        ours = _published_to_ours(k)
        if ours not in own:
            unexpected.append(k)
            continue
        if tuple(own[ours].shape) != tuple(v.shape):
            raise CheckpointError(
                f"checkpoint key {k!r}: shape {tuple(v.shape)} does not match the model's {tuple(own[ours].shape)}"
            )
        mapped[ours] = v
    missing = [k for k in own if k not in mapped]
    if missing:
        log.warning("CNext checkpoint: %d missing keys (kept at init): %s", len(missing), missing)
    if unexpected:
        log.warning("CNext checkpoint: %d unexpected keys (ignored): %s", len(unexpected), unexpected)
    model.load_state_dict(mapped, strict=False)
    return LoadReport(missing=missing, unexpected=unexpected, checked=checked)


def load_cnext_checkpoint(path: str | Path, config: CNextConfig | None = None) -> tuple[CNext, LoadReport]:
    """Load a published ``convnext_tiny_*.pth`` (a state dict, or a dict with a ``model`` entry).

    Returns (model in eval mode, report of missing / unexpected / checked keys).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"CNext checkpoint not found: {path}")
    from dcase.checkpoint import torch_load_weights

    obj = torch_load_weights(
        path,
        "CNext checkpoint",
        "torch.save(model.state_dict(), path) on a trusted machine (a plain dict of tensors), or a dcase CNext "
        "folder (CNext.save_pretrained)",
    )
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a CNext state dict (expected a dict of tensors, or one under 'model')")
    if config is None:
        config = CNextConfig()
        head = state.get("head_audioset.weight", state.get("module.head_audioset.weight"))
        config.num_classes = int(head.shape[0]) if head is not None else 0
    model = CNext(config)
    report = load_cnext_state_dict(model, state)
    return model.eval(), report
