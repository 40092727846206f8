"""CNext: front end against the published conv-STFT formulation, shapes, length-aware batching, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcase.models.cnext import (
    CNext,
    CNextConfig,
    dft_kernels,
    hz_to_mel_slaney,
    load_cnext_checkpoint,
    mel_filterbank,
    mel_to_hz_slaney,
)


@pytest.fixture
def tiny() -> CNext:
    torch.manual_seed(0)
    m = CNext(CNextConfig.tiny())
    with torch.no_grad():  # non-trivial batch-norm statistics
        m.bn0.running_mean.uniform_(-60, -20)
        m.bn0.running_var.uniform_(50, 150)
    return m.eval()


def test_slaney_mel_scale_and_filter_areas():
    assert float(hz_to_mel_slaney(torch.tensor(1000.0))) == pytest.approx(15.0)
    assert float(hz_to_mel_slaney(torch.tensor(200.0 / 3))) == pytest.approx(1.0)
    f = torch.tensor([50.0, 700.0, 1000.0, 6400.0, 14000.0], dtype=torch.float64)
    torch.testing.assert_close(mel_to_hz_slaney(hz_to_mel_slaney(f)), f)
    w = mel_filterbank(32000, 1024, 224, 50.0, 14000.0)
    assert w.shape == (513, 224) and (w >= 0).all()
    # Slaney normalisation: every triangle has unit area in Hz (checked where a triangle spans many bins)
    df = 32000 / 1024
    area = w.sum(0) * df
    wide = (w > 0).sum(0) >= 8
    assert wide.sum() >= 20
    torch.testing.assert_close(area[wide], torch.ones(int(wide.sum())), atol=0.05, rtol=0)
    # the filters' peaks increase with the index (mel ordering) and lie within 50..14000 Hz
    peaks = w.argmax(0) * df
    assert (peaks[1:] >= peaks[:-1]).all() and peaks[0] >= 0 and peaks[-1] <= 14000


def test_logmel_equals_published_conv_stft_formulation(tiny):
    """The published model computes |STFT|^2 with two Conv1d DFT kernels on a reflect-padded signal."""
    cfg = tiny.config
    x = torch.randn(2, 4000)
    real_k, imag_k = dft_kernels(cfg.n_fft)
    xp = F.pad(x[:, None], (cfg.n_fft // 2, cfg.n_fft // 2), mode="reflect")
    power = F.conv1d(xp, real_k, stride=cfg.hop_length) ** 2 + F.conv1d(xp, imag_k, stride=cfg.hop_length) ** 2
    ref = 10 * torch.log10(torch.clamp(power.transpose(1, 2) @ tiny.logmel_extractor.melW, min=1e-10))
    got = tiny.logmel_extractor(x, torch.tensor([4000, 4000]))[:, 0]
    assert got.shape == (2, 4000 // cfg.hop_length + 1, cfg.n_mels)
    torch.testing.assert_close(got, ref, atol=2e-3, rtol=1e-4)


def test_shapes_and_full_size_parameter_count(tiny):
    waves = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 12000, 5000])
    out = tiny(waves, lengths)
    assert out["frames"].shape[0] == 3 and out["frames"].shape[2] == 64
    assert out["frame_mask"].sum(1).tolist() == tiny.frame_lengths(lengths).tolist()
    assert out["embedding"].shape == (3, 64) and out["logits"].shape == (3, 10)
    assert torch.isfinite(out["embedding"]).all()
    # the published ConvNeXt-Tiny AudioSet model has 28,228,143 parameters
    assert sum(p.numel() for p in CNext().parameters()) == 28_228_143


def test_batched_padded_clips_equal_lone_clips(tiny):
    g = torch.Generator().manual_seed(1)
    clips = [torch.randn(n, generator=g) for n in (16000, 9000, 4100)]
    waves = torch.zeros(3, 16000)
    for i, c in enumerate(clips):
        waves[i, : len(c)] = c
    lengths = torch.tensor([len(c) for c in clips])
    with torch.no_grad():
        frames, mask = tiny.forward_features(waves, lengths)
        emb = tiny.clip_embedding(waves, lengths)
        for i, c in enumerate(clips):
            f1, m1 = tiny.forward_features(c[None], lengths[i : i + 1])
            assert m1.all() and int(mask[i].sum()) == f1.shape[1]
            torch.testing.assert_close(frames[i, : f1.shape[1]], f1[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(emb[i], tiny.clip_embedding(c[None])[0], atol=1e-5, rtol=1e-4)
        # without the lengths the padded clip sees its zero tail and its embedding changes
        assert not torch.allclose(tiny.clip_embedding(waves)[2], emb[2], atol=1e-3)


def test_clip_embedding_is_max_plus_mean_then_layernorm(tiny):
    x = torch.randn(1, 8000)
    with torch.no_grad():
        frames, _ = tiny.forward_features(x)
        ref = F.layer_norm(frames.amax(1) + frames.mean(1), (64,), tiny.norm.weight, tiny.norm.bias, 1e-6)
        torch.testing.assert_close(tiny.clip_embedding(x), ref)


def test_short_clips_are_zero_padded_to_one_frame(tiny):
    n = tiny.min_samples()
    assert n > 80 and int(tiny.frame_lengths(torch.tensor([n - 1]))[0]) == 0
    x = torch.randn(1, 80)
    with torch.no_grad():
        frames, mask = tiny.forward_features(x)
        padded = torch.nn.functional.pad(x, (0, n - 80))
        assert frames.shape[1] == 1 and mask.all()
        torch.testing.assert_close(tiny.clip_embedding(x), tiny.clip_embedding(padded))


def test_save_and_load_pretrained(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    back = CNext.from_pretrained(tmp_path / "m")
    x = torch.randn(2, 6000)
    with torch.no_grad():
        torch.testing.assert_close(back.clip_embedding(x), tiny.clip_embedding(x))
    assert back.config == tiny.config


def _published_state_dict(cfg: CNextConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes as in the published checkpoints (convnext.py of topel/audioset-convnext-inf)."""
    g = torch.Generator().manual_seed(seed)
    d, m = cfg.dims, cfg.n_mels
    sd: dict[str, torch.Tensor] = {}

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    real, imag = dft_kernels(cfg.n_fft)
    sd["spectrogram_extractor.stft.conv_real.weight"] = real
    sd["spectrogram_extractor.stft.conv_imag.weight"] = imag
    sd["logmel_extractor.melW"] = mel_filterbank(cfg.sample_rate, cfg.n_fft, m, cfg.f_min, cfg.f_max)
    sd.update(
        {
            "bn0.weight": r(m) + 1,
            "bn0.bias": r(m),
            "bn0.running_mean": r(m) - 40,
            "bn0.running_var": r(m).abs() + 80,
            "bn0.num_batches_tracked": torch.tensor(1000),
        }
    )
    sd["downsample_layers.0.0.weight"] = r(d[0], 1, *cfg.stem_kernel)
    sd["downsample_layers.0.0.bias"] = r(d[0])
    sd["downsample_layers.0.1.weight"], sd["downsample_layers.0.1.bias"] = r(d[0]) + 1, r(d[0])
    for i in range(1, 4):
        sd[f"downsample_layers.{i}.0.weight"], sd[f"downsample_layers.{i}.0.bias"] = r(d[i - 1]) + 1, r(d[i - 1])
        sd[f"downsample_layers.{i}.1.weight"] = r(d[i], d[i - 1], 2, 2)
        sd[f"downsample_layers.{i}.1.bias"] = r(d[i])
    for i in range(4):
        for j in range(cfg.depths[i]):
            p = f"stages.{i}.{j}."
            sd.update(
                {
                    p + "dwconv.weight": r(d[i], 1, 7, 7),
                    p + "dwconv.bias": r(d[i]),
                    p + "norm.weight": r(d[i]) + 1,
                    p + "norm.bias": r(d[i]),
                    p + "pwconv1.weight": r(4 * d[i], d[i]),
                    p + "pwconv1.bias": r(4 * d[i]),
                    p + "pwconv2.weight": r(d[i], 4 * d[i]),
                    p + "pwconv2.bias": r(d[i]),
                    p + "gamma": r(d[i]),
                }
            )
    sd["norm.weight"], sd["norm.bias"] = r(d[-1]) + 1, r(d[-1])
    sd["head_audioset.weight"], sd["head_audioset.bias"] = r(cfg.num_classes, d[-1]), r(cfg.num_classes)
    return sd


def test_published_checkpoint_keys_map_one_to_one(tmp_path, caplog):
    cfg = CNextConfig.tiny()
    sd = _published_state_dict(cfg)
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ck.pth")
    model, rep = load_cnext_checkpoint(tmp_path / "ck.pth", cfg)
    assert rep.missing == [] and rep.unexpected == []
    assert sorted(rep.checked) == sorted(k for k in sd if k.startswith("spectrogram_extractor"))
    own = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("spectrogram_extractor"):
            torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    with torch.no_grad():
        out = model(torch.randn(1, 8000))
    assert out["logits"].shape == (1, cfg.num_classes)

    extra = dict(sd, **{"head_extra.weight": torch.zeros(2)})
    extra.pop("norm.bias")
    torch.save(extra, tmp_path / "ck2.pth")
    _, rep = load_cnext_checkpoint(tmp_path / "ck2.pth", cfg)
    assert rep.unexpected == ["head_extra.weight"] and rep.missing == ["norm.bias"]
    assert "missing" in caplog.text and "unexpected" in caplog.text

    bad = dict(sd, **{"stages.1.0.dwconv.weight": torch.zeros(3, 1, 7, 7)})
    torch.save(bad, tmp_path / "ck3.pth")
    with pytest.raises(ValueError, match=r"stages\.1\.0\.dwconv\.weight"):
        load_cnext_checkpoint(tmp_path / "ck3.pth", cfg)


def test_full_size_embedding_from_published_layout_is_finite():
    """The full-size model: 3 s of 32 kHz audio -> 301 STFT frames -> stem 17 -> 8 -> 4 -> 2 frames."""
    m = CNext().eval()
    with torch.no_grad():
        frames, mask = m.forward_features(torch.randn(1, 96000) * 0.1)
    assert frames.shape == (1, 2, 768) and int(m.frame_lengths(torch.tensor([96000]))[0]) == 2
    assert math.isclose(m.min_samples() / 32000, 1.25, abs_tol=0.02)  # shorter clips are zero-padded
    assert np.isfinite(frames.numpy()).all() and mask.all()
