"""DAC codec: Descript checkpoint import, frame count, batched / chunked encoding = lone encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dcase.features.codec import (
    CodecError,
    DacCodec,
    convert_descript_checkpoint,
    dac_config,
    descript_state_to_dac,
    load_codec,
    receptive_field_samples,
)

HOP = 320


def _lone_codes(model, wave: np.ndarray) -> np.ndarray:
    """Reference: DacModel.encode on the clip alone, right-padded to a multiple of the hop (Descript's preprocess)."""
    t = -(-len(wave) // HOP)
    x = np.zeros(t * HOP, np.float32)
    x[: len(wave)] = wave
    with torch.inference_mode():
        return model.encode(torch.from_numpy(x)[None, None]).audio_codes[0].numpy()


def _weight_norm_reference(weight_shape, g: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Fold with torch's own weight-norm parametrization (an independent computation of g * v / ||v||)."""
    if transpose:
        mod = nn.ConvTranspose1d(weight_shape[0], weight_shape[1], weight_shape[2], bias=False)
    else:
        mod = nn.Conv1d(weight_shape[1], weight_shape[0], weight_shape[2], bias=False)
    mod = nn.utils.parametrizations.weight_norm(mod.double())
    with torch.no_grad():  # float64 maths, then one rounding to float32
        mod.parametrizations.weight.original0.copy_(g.double())
        mod.parametrizations.weight.original1.copy_(v.double())
    return mod.weight.detach().float()


def _descript_layout(config, seed: int = 0):
    """A state dict named and shaped like Descript's DAC (weight_g / weight_v pairs), and the plain weights
    a DacModel must end up with (folded by torch's parametrization), keyed by DacModel names."""
    from transformers import DacModel

    gen = torch.Generator().manual_seed(seed)
    shapes = DacModel(config).state_dict()
    desc: dict[str, torch.Tensor] = {}
    expect: dict[str, torch.Tensor] = {}

    def conv(d_name: str, hf_name: str, transpose: bool = False) -> None:
        w_shape = tuple(shapes[f"{hf_name}.weight"].shape)
        v = torch.randn(w_shape, generator=gen) * 0.1
        g = torch.rand((w_shape[0], 1, 1), generator=gen) + 0.5
        b = torch.randn(shapes[f"{hf_name}.bias"].shape, generator=gen) * 0.01
        desc[f"{d_name}.weight_g"], desc[f"{d_name}.weight_v"], desc[f"{d_name}.bias"] = g, v, b
        expect[f"{hf_name}.weight"] = _weight_norm_reference(w_shape, g, v, transpose)
        expect[f"{hf_name}.bias"] = b

    def snake(d_name: str, hf_name: str) -> None:
        a = torch.rand(shapes[f"{hf_name}.alpha"].shape, generator=gen) + 0.5
        desc[f"{d_name}.alpha"] = a
        expect[f"{hf_name}.alpha"] = a

    def res(d_prefix: str, hf_prefix: str) -> None:
        snake(f"{d_prefix}.block.0", f"{hf_prefix}.snake1")
        conv(f"{d_prefix}.block.1", f"{hf_prefix}.conv1")
        snake(f"{d_prefix}.block.2", f"{hf_prefix}.snake2")
        conv(f"{d_prefix}.block.3", f"{hf_prefix}.conv2")

    n_enc = len(config.downsampling_ratios)
    conv("encoder.block.0", "encoder.conv1")
    for i in range(n_enc):
        for j in range(3):
            res(f"encoder.block.{i + 1}.block.{j}", f"encoder.block.{i}.res_unit{j + 1}")
        snake(f"encoder.block.{i + 1}.block.3", f"encoder.block.{i}.snake1")
        conv(f"encoder.block.{i + 1}.block.4", f"encoder.block.{i}.conv1")
    snake(f"encoder.block.{n_enc + 1}", "encoder.snake1")
    conv(f"encoder.block.{n_enc + 2}", "encoder.conv2")
    for k in range(config.n_codebooks):
        conv(f"quantizer.quantizers.{k}.in_proj", f"quantizer.quantizers.{k}.in_proj")
        conv(f"quantizer.quantizers.{k}.out_proj", f"quantizer.quantizers.{k}.out_proj")
        cb = torch.randn(shapes[f"quantizer.quantizers.{k}.codebook.weight"].shape, generator=gen)
        desc[f"quantizer.quantizers.{k}.codebook.weight"] = cb
        expect[f"quantizer.quantizers.{k}.codebook.weight"] = cb
    n_dec = len(config.upsampling_ratios)
    conv("decoder.model.0", "decoder.conv1")
    for i in range(n_dec):
        snake(f"decoder.model.{i + 1}.block.0", f"decoder.block.{i}.snake1")
        conv(f"decoder.model.{i + 1}.block.1", f"decoder.block.{i}.conv_t1", transpose=True)
        for j in range(3):
            res(f"decoder.model.{i + 1}.block.{j + 2}", f"decoder.block.{i}.res_unit{j + 1}")
    snake(f"decoder.model.{n_dec + 1}", "decoder.snake1")
    conv(f"decoder.model.{n_dec + 2}", "decoder.conv2")
    assert set(expect) == set(shapes), "test helper must cover every DacModel parameter"
    return desc, expect


TINY_KWARGS = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4, 5, 8],
    "latent_dim": 32,
    "decoder_dim": 32,
    "decoder_rates": [8, 5, 4, 2],
    "n_codebooks": 4,
    "codebook_size": 64,
    "codebook_dim": 4,
    "quantizer_dropout": 0.0,
    "sample_rate": 24000,
}


def test_descript_import_folds_weight_norm_and_matches_direct_model(tmp_path):
    from transformers import DacModel

    cfg = dac_config("tiny")
    desc, expect = _descript_layout(cfg)
    pth = tmp_path / "weights_tiny.pth"
    torch.save({"state_dict": desc, "metadata": {"kwargs": TINY_KWARGS}}, pth)
    out = convert_descript_checkpoint(pth, tmp_path / "dac")
    codec = load_codec(out)
    got = codec.model.state_dict()
    assert set(got) == set(expect)
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, rtol=2e-7, atol=1e-9, msg=k)
    assert codec.checkpoint_sha256 is not None and codec.n_codebooks == 4
    from dcase.features.codec import materialize_codec

    mat = materialize_codec(pth, tmp_path / "mat")  # the same conversion, written atomically as the codec folder
    assert sorted(p.name for p in mat.iterdir()) == sorted(p.name for p in out.iterdir())
    for name in ("config.json", "dcase_source.json"):
        assert (mat / name).read_text() == (out / name).read_text()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    direct = DacModel(cfg).eval()
    direct.load_state_dict(expect)
    wave = np.random.default_rng(1).standard_normal(24000).astype(np.float32) * 0.1
    np.testing.assert_array_equal(codec.encode(wave), _lone_codes(direct, wave))
    with torch.inference_mode():
        x = torch.from_numpy(wave[: 75 * HOP])[None, None]
        torch.testing.assert_close(codec.model.encoder(x), direct.encoder(x), rtol=1e-4, atol=1e-5)
        codes = direct.encode(x).audio_codes
        a, b = codec.model.decode(audio_codes=codes).audio_values, direct.decode(audio_codes=codes).audio_values
        assert a.shape == b.shape and a.shape[-1] > 70 * HOP
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_descript_import_reports_unmapped_and_missing_keys():
    cfg = dac_config("tiny")
    desc, _ = _descript_layout(cfg)
    extra = dict(desc, **{"encoder.block.9.weight": torch.zeros(1)})
    with pytest.raises(CodecError, match=r"unmapped keys \['encoder.block.9.weight'\]"):
        descript_state_to_dac(extra, cfg)
    missing = {k: v for k, v in desc.items() if not k.startswith("decoder.model.0.")}
    with pytest.raises(CodecError, match=r"missing keys \['decoder.conv1.bias', 'decoder.conv1.weight'\]"):
        descript_state_to_dac(missing, cfg)
    half = {k: v for k, v in desc.items() if k != "encoder.block.0.weight_g"}
    with pytest.raises(CodecError, match="weight-norm pair incomplete"):
        descript_state_to_dac(half, cfg)


def test_frame_count_is_ceil_of_samples_over_hop():
    codec = load_codec("tiny")
    for n in (1, HOP - 1, HOP, HOP + 1, 24000):
        assert codec.encode(np.full(n, 0.01, np.float32)).shape == (4, -(-n // HOP))
    assert codec.frame_rate == 75.0


def test_batched_and_chunked_encoding_equal_lone_encoding():
    codec = load_codec("tiny", chunk_seconds=0.3, max_batch_seconds=1.5)
    rng = np.random.default_rng(0)
    lengths = [24000 + 8017, 5000, 321, 9000]
    waves = [(rng.standard_normal(n) * 0.1).astype(np.float32) for n in lengths]
    # the 1.3 s clip is cut into 0.3 s windows with context; the others are padded inside shared batches
    assert len(codec._windows([codec.n_frames(n) for n in lengths])) > len(lengths)
    got = codec.encode_many(waves)
    two = codec.encode_many(waves, workers=2)  # batches on 2 one-thread workers (this test runs on one thread)
    for w, c, c2 in zip(waves, got, two, strict=True):
        assert c.dtype == np.int16
        np.testing.assert_array_equal(c, _lone_codes(codec.model, w))
        np.testing.assert_array_equal(c2, c)
    assert torch.get_num_threads() == 1


def test_chunking_without_context_would_differ():
    """The context margin matters: with none, frames at window edges change (so the test above can fail)."""
    codec = load_codec("tiny", chunk_seconds=0.3)
    wave = (np.random.default_rng(2).standard_normal(24000) * 0.1).astype(np.float32)
    ref = _lone_codes(codec.model, wave)
    codec.context_frames = 0
    assert (codec.encode(wave) != ref).any()
    assert receptive_field_samples(codec.config) == 2812  # 8.8 frames each side for the 24 kHz layout


def test_memory_is_bounded_by_windows():
    codec = load_codec("tiny", chunk_seconds=1.0, max_batch_seconds=2.0)
    seen: list[tuple[int, int]] = []
    orig = DacCodec.encode_padded

    def spy(self, x, frames):
        seen.append(tuple(x.shape))
        return orig(self, x, frames)

    DacCodec.encode_padded = spy
    try:
        codec.encode(np.zeros(24000 * 3, np.float32) + 0.01)
    finally:
        DacCodec.encode_padded = orig
    longest = (codec.chunk_frames + 2 * codec.context_frames) * HOP
    assert len(seen) >= 2, f"the 3 s clip must be encoded as several bounded windows, spy saw {seen}"
    assert all(b * n <= max(longest, codec.max_batch_frames * HOP) for b, n in seen)


def test_hub_name_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CodecError, match="not in the Hugging Face cache"):
        load_codec("descript/dac_24khz-not-cached")


def test_codec_config_file_and_bad_hop(tmp_path):
    import json

    f = tmp_path / "c.json"
    f.write_text(
        json.dumps(
            {
                "encoder_hidden_size": 4,
                "hidden_size": 16,
                "n_codebooks": 2,
                "codebook_size": 16,
                "codebook_dim": 2,
                "decoder_hidden_size": 16,
            }
        )
    )
    c = load_codec(f)
    assert c.n_codebooks == 2 and c.hop == HOP
    f.write_text(json.dumps({"hop_length": 512}))
    with pytest.raises(CodecError, match="hop_length 512"):
        load_codec(f)
