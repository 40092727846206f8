"""DAC codec codes through ``transformers.DacModel`` (EnCLAP §2.1: 24 kHz DAC, 32 codebooks, 75 frames/s).

Three ways to get a codec (``load_codec``):
- a Hugging Face model directory or hub name (``descript/dac_24khz``; offline, a name not in the cache fails
  with a message saying so);
- Descript's original ``weights_24khz_8kbps_0.0.4.pth``, converted once with ``convert_descript_checkpoint``
  (weight-norm pairs folded into plain weights, keys mapped to ``DacModel`` names);
- random initialisation from a config: ``"tiny"`` (tests, demo), ``"full"`` (the 24 kHz shape, for benchmarks),
  or a JSON/YAML file of ``DacConfig`` fields.

Frame count. Like Descript's ``DAC.preprocess``, a clip of n samples is right-padded with zeros to
``T * hop`` samples, ``T = ceil(n / hop)``; the encoder then yields exactly T frames. Codes are int16 [K, T].

Exactness of batching and chunking. ``encode_padded`` runs the DacModel encoder layer by layer and zeroes
every clip's activations beyond its own length before each convolution that looks across time. Zeros are
what a lone clip gets from the convolutions' padding, so padding a batch does not change any frame. Long
clips are cut into windows aligned to the hop with ``context_frames`` of real audio on each side (more than
the encoder's receptive field, see ``receptive_field_samples``); only each window's centre frames are kept.
The first/last windows start/end at the clip's own edges. Equality with a lone encoding is tested
(tests/test_codec.py); the only possible source of difference is float rounding of convolutions over tensors
of different lengths, which can flip a nearest-codebook choice when two codewords are equally close.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcase.errors import InputError, MissingInputError

log = logging.getLogger(__name__)

FULL_24KHZ: dict[str, Any] = {
    "encoder_hidden_size": 64,
    "downsampling_ratios": [2, 4, 5, 8],
    "decoder_hidden_size": 1536,
    "upsampling_ratios": [8, 5, 4, 2],
    "n_codebooks": 32,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "hidden_size": 1024,
    "sampling_rate": 24000,
    "hop_length": 320,
    "quantizer_dropout": 0.0,
}

TINY_24KHZ: dict[str, Any] = {
    **FULL_24KHZ,
    "encoder_hidden_size": 4,
    "decoder_hidden_size": 32,
    "n_codebooks": 4,
    "codebook_size": 64,
    "codebook_dim": 4,
    "hidden_size": 32,
}


class CodecError(InputError):
    """A codec that cannot be built or loaded, or audio it cannot encode."""


def dac_config(spec: str | dict[str, Any]) -> Any:
    """``"tiny"``, ``"full"``, a JSON/YAML file of DacConfig fields, or a dict -> ``transformers.DacConfig``."""
    from transformers import DacConfig

    if isinstance(spec, dict):
        fields = dict(spec)
    elif spec == "tiny":
        fields = dict(TINY_24KHZ)
    elif spec == "full":
        fields = dict(FULL_24KHZ)
    else:
        path = Path(spec)
        if not path.is_file():
            raise MissingInputError(f"codec config not found: {path} (or use 'tiny' / 'full')")
        import yaml

        given = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
        if not isinstance(given, dict):
            raise CodecError(f"{path}: expected a mapping of DacConfig fields")
        # a file overrides the 24 kHz layout; hop_length follows the ratios unless given
        fields = {k: v for k, v in FULL_24KHZ.items() if k != "hop_length"} | given
    ratios = fields.get("downsampling_ratios", FULL_24KHZ["downsampling_ratios"])
    hop = int(np.prod(ratios))
    if "hop_length" in fields and int(fields["hop_length"]) != hop:
        raise CodecError(f"codec config: hop_length {fields['hop_length']} != prod(downsampling_ratios) = {hop}")
    fields["hop_length"] = hop
    return DacConfig(**fields)


# --------------------------------------------------------------------------- Descript checkpoint import

_ENC_RES = re.compile(r"^encoder\.block\.(\d+)\.block\.([0-2])\.block\.([0-3])\.(.+)$")
_ENC_BLK = re.compile(r"^encoder\.block\.(\d+)\.block\.([34])\.(.+)$")
_ENC_TOP = re.compile(r"^encoder\.block\.(\d+)\.(weight_g|weight_v|weight|bias|alpha)$")
_DEC_RES = re.compile(r"^decoder\.model\.(\d+)\.block\.([2-4])\.block\.([0-3])\.(.+)$")
_DEC_BLK = re.compile(r"^decoder\.model\.(\d+)\.block\.([01])\.(.+)$")
_DEC_TOP = re.compile(r"^decoder\.model\.(\d+)\.(weight_g|weight_v|weight|bias|alpha)$")
_RES_PARTS = ("snake1", "conv1", "snake2", "conv2")


def descript_key_to_hf(key: str, n_enc: int, n_dec: int) -> str | None:
    """Map one Descript DAC parameter name (weight-norm suffixes already folded) to its DacModel name.

    ``n_enc`` / ``n_dec``: number of encoder / decoder blocks. Returns None for names with no counterpart.
    """
    if key.startswith("quantizer.quantizers."):
        return key
    if m := _ENC_RES.match(key):
        b, r, p, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
        return f"encoder.block.{b - 1}.res_unit{r + 1}.{_RES_PARTS[p]}.{rest}" if 1 <= b <= n_enc else None
    if m := _ENC_BLK.match(key):
        b, p, rest = int(m[1]), int(m[2]), m[3]
        return f"encoder.block.{b - 1}.{'snake1' if p == 3 else 'conv1'}.{rest}" if 1 <= b <= n_enc else None
    if m := _ENC_TOP.match(key):
        i, rest = int(m[1]), m[2]
        names = {0: "encoder.conv1", n_enc + 1: "encoder.snake1", n_enc + 2: "encoder.conv2"}
        return f"{names[i]}.{rest}" if i in names else None
    if m := _DEC_RES.match(key):
        b, r, p, rest = int(m[1]), int(m[2]), int(m[3]), m[4]
        return f"decoder.block.{b - 1}.res_unit{r - 1}.{_RES_PARTS[p]}.{rest}" if 1 <= b <= n_dec else None
    if m := _DEC_BLK.match(key):
        b, p, rest = int(m[1]), int(m[2]), m[3]
        return f"decoder.block.{b - 1}.{'snake1' if p == 0 else 'conv_t1'}.{rest}" if 1 <= b <= n_dec else None
    if m := _DEC_TOP.match(key):
        i, rest = int(m[1]), m[2]
        names = {0: "decoder.conv1", n_dec + 1: "decoder.snake1", n_dec + 2: "decoder.conv2"}
        return f"{names[i]}.{rest}" if i in names else None
    return None


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm taken over all dims but 0 (torch's weight_norm with dim=0)."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return g * v / norm


def fold_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every ``X.weight_g`` / ``X.weight_v`` pair by ``X.weight``. An unpaired half is an error."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.endswith(".weight_g"):
            base = k[: -len(".weight_g")]
            if base + ".weight_v" not in state:
                raise CodecError(f"weight-norm pair incomplete: {k} has no {base}.weight_v")
            out[base + ".weight"] = fold_weight_norm(v.double(), state[base + ".weight_v"].double()).to(v.dtype)
        elif k.endswith(".weight_v"):
            if k[: -len(".weight_v")] + ".weight_g" not in state:
                raise CodecError(f"weight-norm pair incomplete: {k} has no matching weight_g")
        else:
            out[k] = v
    return out


def config_from_descript_metadata(kwargs: dict[str, Any]) -> Any:
    """Descript's ``metadata['kwargs']`` -> DacConfig."""
    try:
        enc_rates = list(kwargs["encoder_rates"])
        fields = {
            "encoder_hidden_size": int(kwargs["encoder_dim"]),
            "downsampling_ratios": enc_rates,
            "decoder_hidden_size": int(kwargs["decoder_dim"]),
            "upsampling_ratios": list(kwargs["decoder_rates"]),
            "n_codebooks": int(kwargs["n_codebooks"]),
            "codebook_size": int(kwargs["codebook_size"]),
            "codebook_dim": int(kwargs["codebook_dim"]),
            "hidden_size": int(kwargs.get("latent_dim") or kwargs["encoder_dim"] * 2 ** len(enc_rates)),
            "sampling_rate": int(kwargs["sample_rate"]),
            "quantizer_dropout": float(kwargs.get("quantizer_dropout", 0.0)),
        }
    except KeyError as e:
        raise CodecError(f"Descript checkpoint metadata lacks {e}; found keys {sorted(kwargs)}") from e
    return dac_config(fields)


def descript_state_to_dac(state: dict[str, torch.Tensor], config: Any) -> Any:
    """Build a ``DacModel`` from a Descript-layout state dict. Unmapped or missing keys -> CodecError listing them."""
    from transformers import DacModel

    folded = fold_state_dict(state)
    n_enc, n_dec = len(config.downsampling_ratios), len(config.upsampling_ratios)
    model = DacModel(config)
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for k, v in folded.items():
        hf = descript_key_to_hf(k, n_enc, n_dec)
        if hf is None or hf not in target:
            unmapped.append(k)
            continue
        if tuple(target[hf].shape) != tuple(v.shape):
            raise CodecError(f"Descript key {k!r} -> {hf!r}: shape {tuple(v.shape)} != {tuple(target[hf].shape)}")
        mapped[hf] = v.to(target[hf].dtype)
    missing = sorted(set(target) - set(mapped))
    if unmapped or missing:
        raise CodecError(
            f"Descript checkpoint does not match DacModel: {len(unmapped)} unmapped keys {unmapped[:20]}, "
            f"{len(missing)} missing keys {missing[:20]}"
        )
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def _load_descript(pth: Path) -> Any:
    """Descript's ``weights_*.pth`` as an eval-mode DacModel."""
    from dcase.checkpoint import torch_load_weights

    if not pth.is_file():
        raise MissingInputError(f"Descript checkpoint not found: {pth}")
    obj = torch_load_weights(
        pth,
        "Descript DAC checkpoint",
        "Descript's own `dac` package on a trusted machine: torch.save({'state_dict': model.state_dict(), "
        "'metadata': {'kwargs': <its metadata kwargs>}}, path), then dcase extract convert-dac",
    )
    if not isinstance(obj, dict) or "state_dict" not in obj or "metadata" not in obj:
        raise CodecError(f"{pth}: not a Descript DAC checkpoint (expected keys 'state_dict' and 'metadata')")
    config = config_from_descript_metadata(obj["metadata"].get("kwargs", {}))
    return descript_state_to_dac(obj["state_dict"], config)


def _write_converted(model: Any, pth: Path, folder: Path) -> None:
    """Write ``model`` (converted from ``pth``) into the existing ``folder``: ``save_pretrained`` plus
    ``dcase_source.json`` naming its source. Not atomic: the callers write into an ``atomic_dir``."""
    from dcase.io import sha256_file

    model.save_pretrained(str(folder))
    (folder / "dcase_source.json").write_text(
        json.dumps({"converted_from": pth.name, "source_sha256": sha256_file(pth)}, indent=2)
    )


def convert_descript_checkpoint(pth: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Convert Descript's ``weights_*.pth`` into a DacModel directory (``save_pretrained``, written atomically; an
    existing ``out_dir`` is replaced only with ``overwrite``). Returns out_dir."""
    from dcase.io import atomic_dir

    pth = Path(pth)
    model = _load_descript(pth)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        _write_converted(model, pth, tmp)
    config = model.config
    log.info("converted %s -> %s (%d codebooks, %d Hz)", pth, out_dir, config.n_codebooks, config.sampling_rate)
    return out_dir


def materialize_codec(spec: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Save the codec named by ``spec`` once as a DacModel folder ``out_dir`` (``save_pretrained``), so that every
    feature store and every exported system uses the same weights:

    - ``tiny`` / ``full`` / a DacConfig file: random weights drawn with ``seed``;
    - a Descript ``.pth``: converted (``convert_descript_checkpoint``);
    - a DacModel folder, or a hub id found in the Hugging Face cache (offline: never downloaded): its files,
      hard-linked where the file system allows.

    An existing ``out_dir/config.json`` is kept as it is; a folder without one (left by a killed run of this step)
    is replaced. The folder is written atomically (``atomic_dir``).
    """
    import shutil

    from dcase.io import atomic_dir

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    spec_s = str(spec)
    path = Path(spec_s).expanduser()
    with atomic_dir(out, overwrite=True) as tmp:
        if spec_s in ("tiny", "full") or path.suffix in (".json", ".yaml", ".yml"):
            load_codec(spec_s, seed=seed).model.save_pretrained(str(tmp))
        elif path.suffix == ".pth":
            _write_converted(_load_descript(path), path, tmp)
        else:
            src = path if path.is_dir() else None
            if src is None:
                try:
                    from huggingface_hub import snapshot_download

                    src = Path(snapshot_download(spec_s, local_files_only=True))
                except Exception as e:  # noqa: BLE001 - any failure means the codec is not available offline
                    raise CodecError(
                        f"codec {spec_s!r} is neither a local DacModel folder nor in the Hugging Face cache; "
                        "download it on a machine with internet, or give Descript's weights_24khz_8kbps_0.0.4.pth"
                    ) from e
            if not (src / "config.json").is_file():
                raise CodecError(f"{src}: not a DacModel folder (no config.json)")
            for f in src.iterdir():
                if f.is_file():
                    try:
                        os.link(f.resolve(), tmp / f.name)
                    except OSError:
                        shutil.copy2(f, tmp / f.name)
    log.info("codec %s saved in %s", spec_s, out)
    return out


# --------------------------------------------------------------------------- encoding


def receptive_field_samples(config: Any) -> int:
    """One-sided reach (in input samples) of a code frame into the waveform, for the DacModel encoder."""
    reach, rate = 3, 1  # conv1, kernel 7
    for s in config.downsampling_ratios:
        reach += 3 * (1 + 3 + 9) * rate  # residual units: kernel 7, dilations 1, 3, 9
        p = math.ceil(s / 2)
        reach += max(p, 2 * s - 1 - p) * rate  # strided conv, kernel 2s
        rate *= s
    return reach + 1 * rate  # conv2, kernel 3


def _snake(alpha: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """DacModel's Snake, x + sin(alpha x)^2 / (alpha + 1e-9), with the same float operations in the same order
    (so bit-identical) but one buffer instead of four temporaries."""
    t = alpha * x
    t.sin_().pow_(2).mul_((alpha + 1e-9).reciprocal())
    return t.add_(x)


@dataclass
class _Window:
    clip: int
    start: int  # frames, in the clip's frame grid
    stop: int
    keep_from: int  # frames of this window kept: [keep_from, keep_to) in clip frames
    keep_to: int


class DacCodec:
    """Encode 24 kHz mono audio into DAC codes int16 [n_codebooks, ceil(n / hop)]."""

    def __init__(
        self,
        model: Any,
        source: str = "random",
        checkpoint_sha256: str | None = None,
        chunk_seconds: float = 10.0,
        max_batch_seconds: float = 80.0,
    ) -> None:
        self.model = model.eval()
        cfg = model.config
        self.config = cfg
        self.source = source
        self.checkpoint_sha256 = checkpoint_sha256
        self.sample_rate = int(cfg.sampling_rate)
        self.hop = int(np.prod(cfg.downsampling_ratios))
        self.n_codebooks = int(cfg.n_codebooks)
        self.frame_rate = self.sample_rate / self.hop
        self.context_frames = math.ceil(receptive_field_samples(cfg) / self.hop) + 2
        self.chunk_frames = max(1, int(round(chunk_seconds * self.frame_rate)))
        self.max_batch_frames = max(
            self.chunk_frames + 2 * self.context_frames, int(max_batch_seconds * self.frame_rate)
        )
        if int(cfg.codebook_size) > 32768:
            raise CodecError(f"codebook_size {cfg.codebook_size} does not fit int16 codes")

    # ---- description
    def n_frames(self, n_samples: int) -> int:
        """T = ceil(n / hop): the clip is right-padded with zeros to T * hop samples."""
        return -(-int(n_samples) // self.hop)

    def provenance(self) -> dict[str, Any]:
        """Fields recorded in a store; two codecs with equal provenance produce the same codes."""
        return {
            "extractor": "dac",
            "extractor_config": {k: v for k, v in self.config.to_dict().items() if k in FULL_24KHZ},
            "checkpoint": self.source,
            "checkpoint_sha256": self.checkpoint_sha256,
            "sample_rate": self.sample_rate,
            "hop": self.hop,
            "n_codebooks": self.n_codebooks,
        }

    # ---- core
    @torch.inference_mode()
    def encode_padded(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """x [B, L] (L a multiple of hop, zero beyond each clip), frames [B] valid frames -> codes [B, K, L // hop].

        The DacModel encoder, layer by layer, with activations beyond each clip's length zeroed before every
        time-mixing convolution (see module docstring). Frames beyond a clip's length are meaningless.
        """
        enc = self.model.encoder
        B, L = x.shape
        if L % self.hop:
            raise CodecError(f"padded length {L} is not a multiple of the hop {self.hop}")
        lengths = frames.to(torch.long) * self.hop  # samples at the input rate

        def keep(n: torch.Tensor, t: int) -> torch.Tensor | None:
            """[B, 1, t] 0/1 mask of valid steps, or None when every clip fills the batch."""
            if bool((n >= t).all()):
                return None
            return (torch.arange(t, device=n.device)[None, :] < n[:, None]).to(x.dtype)[:, None, :]

        def masked(h: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
            return h if m is None else h * m

        h = enc.conv1(x[:, None, :])  # x is already zero beyond each clip
        n = lengths
        for blk, s in zip(enc.block, self.config.downsampling_ratios, strict=True):
            m = keep(n, h.shape[-1])
            for ru in (blk.res_unit1, blk.res_unit2, blk.res_unit3):
                y = ru.conv1(masked(_snake(ru.snake1.alpha, h), m))
                y = ru.conv2(_snake(ru.snake2.alpha, y))
                h += y
            h = blk.conv1(masked(_snake(blk.snake1.alpha, h), m))
            n = n // s
        h = enc.conv2(masked(_snake(enc.snake1.alpha, h), keep(n, h.shape[-1])))
        codes = self.model.quantizer(h)[1]  # [B, K, T]
        return codes

    def _windows(self, n_frames: Sequence[int]) -> list[_Window]:
        out: list[_Window] = []
        c, ctx = self.chunk_frames, self.context_frames
        for i, t in enumerate(n_frames):
            if t <= c + 2 * ctx:
                out.append(_Window(i, 0, t, 0, t))
                continue
            for a in range(0, t, c):
                b = min(t, a + c)
                out.append(_Window(i, max(0, a - ctx), min(t, b + ctx), a, b))
        return out

    def encode_many(self, waves: Sequence[np.ndarray | torch.Tensor], workers: int = 1) -> list[np.ndarray]:
        """Encode mono clips [n_i] at ``sample_rate`` -> codes int16 [K, ceil(n_i / hop)] each.

        Clips are cut into windows (long clips) and grouped by length into batches of at most
        ``max_batch_frames`` padded frames in flight (split among ``workers``), so memory is bounded
        independently of clip length. ``workers > 1`` (CPU): that many batches run at once, each on one torch
        thread. Codes then equal a one-thread lone encoding; against a multi-thread one they can differ where two
        codewords are within float rounding (convolutions round differently with another thread count).
        """
        tensors = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in waves]
        for i, w in enumerate(tensors):
            if w.dim() != 1 or w.numel() == 0:
                raise CodecError(f"clip {i}: expected a non-empty mono waveform [N], got shape {tuple(w.shape)}")
        n_frames = [self.n_frames(w.numel()) for w in tensors]
        windows = sorted(self._windows(n_frames), key=lambda w: w.stop - w.start, reverse=True)
        out = [np.empty((self.n_codebooks, t), dtype=np.int16) for t in n_frames]
        groups: list[list[_Window]] = []
        budget = self.max_batch_frames // max(1, workers)  # frames in flight stay <= max_batch_frames
        i = 0
        while i < len(windows):
            k = max(1, budget // (windows[i].stop - windows[i].start))
            groups.append(windows[i : i + k])
            i += k
        device = next(self.model.parameters()).device

        def run(group: list[_Window]) -> None:
            longest = group[0].stop - group[0].start
            x = torch.zeros(len(group), longest * self.hop)
            for j, w in enumerate(group):
                seg = tensors[w.clip][w.start * self.hop : w.stop * self.hop]
                x[j, : seg.numel()] = seg
            frames = torch.tensor([w.stop - w.start for w in group])
            codes = self.encode_padded(x.to(device), frames.to(device)).to(torch.int16).cpu().numpy()
            for j, w in enumerate(group):  # windows write disjoint frame ranges: safe across workers
                out[w.clip][:, w.keep_from : w.keep_to] = codes[j, :, w.keep_from - w.start : w.keep_to - w.start]

        if workers <= 1 or len(groups) == 1:
            for g in groups:
                run(g)
            return out
        from concurrent.futures import ThreadPoolExecutor

        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(run, groups))
        finally:
            torch.set_num_threads(n_threads)
        return out

    def encode(self, wave: np.ndarray | torch.Tensor) -> np.ndarray:
        """One mono clip [N] -> int16 [K, ceil(N / hop)]."""
        return self.encode_many([wave])[0]


def check_dac_folder(path: Path) -> None:
    """Refuse a folder that does not hold a DAC model (``config.json`` with ``model_type: dac``) before any
    weights are read: another model's checkpoint would otherwise be built as a DacModel with random weights."""
    cfg = path / "config.json"
    if not cfg.is_file():
        raise CodecError(
            f"{path}: not a DacModel directory (no config.json); convert a Descript .pth with "
            f"'dcase extract convert-dac'"
        )
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CodecError(f"{cfg}: not valid JSON ({e})") from e
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type != "dac":
        what = data.get("dcase_kind") or model_type if isinstance(data, dict) else None
        raise CodecError(
            f"{path}: holds {'a ' + repr(what) if what else 'no'} model, not a DAC codec (config.json model_type is "
            f"{model_type!r}, expected 'dac'); give a DacModel folder (dcase extract convert-dac)"
        )
    weights = [p.name for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pth", ".pt")]
    if not weights:
        raise CodecError(f"{path}: DAC config without weights (no model.safetensors); convert the checkpoint again")


def _dac_with_info(source: str) -> tuple[Any, dict[str, Any]]:
    from transformers import DacModel

    # with output_loading_info, from_pretrained returns (model, info); transformers types it as the model alone
    loaded: Any = DacModel.from_pretrained(source, output_loading_info=True)
    return loaded


def _complete_dac(source: str | Path, loaded: tuple[Any, dict[str, Any]]) -> Any:
    """The model of ``from_pretrained(..., output_loading_info=True)``; weights it lacks would be random, so any
    missing or mismatched key is a CodecError naming them."""
    model, info = loaded
    missing = list(info.get("missing_keys") or []) + [str(m) for m in info.get("mismatched_keys") or []]
    if missing:
        raise CodecError(
            f"{source}: the weights do not cover the DAC model ({len(missing)} missing or mismatched, e.g. "
            f"{missing[:3]}); they would be random. Is this a checkpoint of another model?"
        )
    return model


def load_codec(
    spec: str | Path, chunk_seconds: float = 10.0, max_batch_seconds: float = 80.0, seed: int = 0
) -> DacCodec:
    """``"tiny"`` / ``"full"`` / a config file (random weights, seeded), a DacModel directory, or a hub name."""
    from transformers import DacModel

    spec_s = str(spec)
    path = Path(spec_s)
    if path.is_dir():
        from dcase.checkpoint import hf_load
        from dcase.io import fingerprint

        check_dac_folder(path)
        model = _complete_dac(path, hf_load(_dac_with_info, path, "the DAC codec"))
        return DacCodec(model, path.name, fingerprint(path), chunk_seconds, max_batch_seconds)
    if spec_s in ("tiny", "full") or path.suffix in (".json", ".yaml", ".yml"):
        cfg = dac_config(spec_s)
        torch.manual_seed(seed)
        model = DacModel(cfg)
        return DacCodec(
            model, f"random:{path.stem if path.suffix else spec_s}:seed{seed}", None, chunk_seconds, max_batch_seconds
        )
    if path.suffix == ".pth":
        raise CodecError(f"{spec_s}: convert Descript checkpoints first: dcase extract convert-dac {spec_s} DIR")
    try:
        from transformers import PretrainedConfig

        model_type = PretrainedConfig.get_config_dict(spec_s)[0].get("model_type")
        if model_type != "dac":
            raise CodecError(f"{spec_s}: holds a {model_type!r} model, not a DAC codec (model_type 'dac')")
        model = _complete_dac(spec_s, _dac_with_info(spec_s))
    except (OSError, ValueError) as e:
        if isinstance(e, CodecError):
            raise
        raise CodecError(
            f"cannot load DAC model {spec_s!r}: not a local directory and not in the Hugging Face cache "
            f"(offline mode: HF_HUB_OFFLINE={__import__('os').environ.get('HF_HUB_OFFLINE')}). Download it on a "
            f"machine with internet, or convert Descript's .pth with 'dcase extract convert-dac'. ({e})"
        ) from e
    return DacCodec(model, spec_s, getattr(model.config, "_commit_hash", None), chunk_seconds, max_batch_seconds)
