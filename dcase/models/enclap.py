"""EnCLAP: a BART captioner fed with neural-codec codes and one clip embedding (Kim et al., ICASSP 2024, §2).

Encoder input (paper eqs. 1-3), for a clip with codes ``C`` [N, L] and clip embedding ``E_A`` [clip_dim]:

    e_codec[l] = sum_n W_n[C[n, l]]                      N codebook tables W_n, summed           [L, D]
    I_concat   = (e_bos, e_codec, e_eos)                 BART's <s> / </s> token embeddings       [L+2, D]
    I_pos      = I_concat + e_pos[0 : L+2]               BART's learned positions                 [L+2, D]
    I_b        = (e_clip, I_pos),  e_clip = Linear(E_A)  the clip slot gets NO position           [L+3, D]

Slots of ``I_b``: ``CLIP_SLOT`` = 0, ``BOS_SLOT`` = 1, codec frame ``l`` at ``FIRST_CODE_SLOT + l``, EOS at
``FIRST_CODE_SLOT + L``, then padding (masked out by the attention mask). BART's ``layernorm_embedding``,
dropout and encoder layers then run on ``I_b``; the BART decoder generates the caption.

Each codebook table has ``codebook_size`` codes plus its own padding id (``codebook_size + CODEC_PAD_OFFSET``)
and mask id (``codebook_size + CODEC_MASK_OFFSET``). The N tables are stored as one ``nn.EmbeddingBag``
(table ``n`` = rows ``n * (codebook_size + 2) ...``) so the sum over codebooks never materialises [B, L, N, D].

Masked codec modelling (MCM, §2.2.1): every batch draws fresh span masks (15 % of each codebook sequence, spans
of 10 frames; ``sample_span_mask``), replaces those codes by the mask id, and N linear heads on the encoder
output predict the original codes. Heads are evaluated only at masked positions (scoring every position and
ignoring the unmasked ones gives the same loss at ~7x the head cost). ``L = L_caption + lambda L_mcm``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dcase.config import PROBABILITY, ConfigError
from dcase.errors import CheckpointError, InputError
from dcase.losses import IGNORE_INDEX, caption_loss, mcm_loss

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

CODEC_PAD_OFFSET = 0  # per-codebook padding id = codebook_size + CODEC_PAD_OFFSET
CODEC_MASK_OFFSET = 1  # per-codebook MCM mask id = codebook_size + CODEC_MASK_OFFSET
CODEC_SPECIAL_IDS = 2  # extra rows per codebook table
CLIP_SLOT = 0  # encoder-input slot of the clip embedding
BOS_SLOT = 1  # encoder-input slot of <s>
FIRST_CODE_SLOT = 2  # encoder-input slot of codec frame 0
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # BART's order: ids 0..4
BOS_TOKEN_ID, PAD_TOKEN_ID, EOS_TOKEN_ID = (SPECIAL_TOKENS.index(t) for t in ("<s>", "<pad>", "</s>"))
TOKENIZER_DIR = "tokenizer"


_BART_FIELDS = (
    "vocab_size",
    "d_model",
    "encoder_layers",
    "decoder_layers",
    "encoder_attention_heads",
    "decoder_attention_heads",
    "encoder_ffn_dim",
    "decoder_ffn_dim",
    "max_position_embeddings",
    "dropout",
    "attention_dropout",
    "activation_dropout",
)


@dataclass
class EnCLAPConfig:
    """Model settings. With ``bart_name_or_path`` the BART fields come from that checkpoint (e.g.
    ``facebook/bart-large`` or a local directory); otherwise a random BART is built from the fields here."""

    bart_name_or_path: str | None = None
    vocab_size: int = field(default=50265, metadata={"min": 1})
    d_model: int = field(default=1024, metadata={"min": 1})
    encoder_layers: int = field(default=12, metadata={"min": 1})
    decoder_layers: int = field(default=12, metadata={"min": 1})
    encoder_attention_heads: int = field(default=16, metadata={"min": 1})
    decoder_attention_heads: int = field(default=16, metadata={"min": 1})
    encoder_ffn_dim: int = field(default=4096, metadata={"min": 1})
    decoder_ffn_dim: int = field(default=4096, metadata={"min": 1})
    max_position_embeddings: int = field(default=1024, metadata={"min": 1})
    dropout: float = field(default=0.1, metadata=PROBABILITY)
    attention_dropout: float = field(default=0.0, metadata=PROBABILITY)
    activation_dropout: float = field(default=0.0, metadata=PROBABILITY)
    n_codebooks: int = field(default=32, metadata={"min": 1})  # DAC 24 kHz
    codebook_size: int = field(default=1024, metadata={"min": 1})
    clip_dim: int = field(default=768, metadata={"min": 1})  # CNext; or the retriever's joint-space dim
    # codec frames per clip (longer inputs are cropped by the dataset)
    max_codec_positions: int = field(default=1022, metadata={"min": 1})
    mcm_rate: float = field(default=0.15, metadata=PROBABILITY)
    mcm_span: int = field(default=10, metadata={"min": 1})
    mcm_lambda: float = field(default=0.7, metadata=PROBABILITY)
    label_smoothing: float = field(default=0.2, metadata=PROBABILITY)
    max_caption_tokens: int = field(default=64, metadata={"min": 1})
    forced_eos: bool = True  # generation ends with </s> at the length limit (official EnCLAP's forced_eos_token_id)

    @property
    def pad_code(self) -> int:
        return self.codebook_size + CODEC_PAD_OFFSET

    @property
    def mask_code(self) -> int:
        return self.codebook_size + CODEC_MASK_OFFSET

    @classmethod
    def tiny(cls, **overrides: Any) -> EnCLAPConfig:
        """A debug-size random model (tests, demo)."""
        base: dict[str, Any] = dict(
            vocab_size=300,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=130,
            dropout=0.0,
            n_codebooks=4,
            codebook_size=16,
            clip_dim=8,
            max_codec_positions=128,
        )
        base.update(overrides)
        return cls(**base)


def sample_span_mask(
    lengths: torch.Tensor,
    n_codebooks: int,
    max_len: int,
    rate: float = 0.15,
    span: int = 10,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MCM span mask: lengths [B] -> bool [B, N, max_len], drawn independently per (clip, codebook).

    Each row of valid length ``len`` gets ``k`` non-overlapping spans of ``s = min(span, len)`` frames inside
    ``[0, len)``, with ``k`` the stochastic rounding of ``rate * len / s`` (so E[masked] = rate * len), capped at
    ``len // s``; the spans are a uniform draw (``k`` distinct starts among ``len - k (s - 1)`` compressed
    slots, then spread out). Padding frames are never masked. Uses the torch RNG (or ``generator``).
    """
    device = lengths.device
    lens = lengths.long().repeat_interleave(n_codebooks)  # [R]
    R = lens.numel()
    s = lens.clamp(max=span).clamp(min=1)
    target = rate * lens.double() / s
    k = (
        torch.floor(target)
        + (
            torch.rand(R, generator=generator, device=device, dtype=torch.float64) < target - torch.floor(target)
        ).double()
    )
    k = torch.minimum(k.long(), lens // s)
    n_slots = lens - k * (s - 1)
    pos = torch.arange(max_len, device=device)
    keys = torch.rand(R, max_len, generator=generator, device=device)
    keys = keys.masked_fill(pos[None] >= n_slots[:, None], 2.0)  # invalid slots sort last
    rank = keys.argsort(dim=1).argsort(dim=1)
    chosen = rank < k[:, None]  # k distinct slots per row
    start = pos[None] + (chosen.long().cumsum(1) - 1) * (s - 1)[:, None]
    edges = torch.zeros(R, max_len + 1, dtype=torch.long, device=device)
    ones = chosen.long()
    edges.scatter_add_(1, torch.where(chosen, start, 0), ones)
    edges.scatter_add_(1, torch.where(chosen, start + s[:, None], 0), -ones)
    mask = edges.cumsum(1)[:, :max_len] > 0
    return mask.view(-1, n_codebooks, max_len)


@dataclass
class EnCLAPOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # [B, T, V]
    caption_loss: torch.Tensor | None = None
    mcm_loss: torch.Tensor | None = None
    mcm_per_codebook: torch.Tensor | None = None  # [N] cross entropy per codebook (detached)
    mcm_mask: torch.Tensor | None = None  # [B, N, L]


class EnCLAP(nn.Module):
    """BART + N summed codebook embeddings + a clip-embedding slot + N MCM heads (EnCLAP §2)."""

    codebook_offsets: torch.Tensor  # [N] buffer: codebook n's rows start at n * (codebook_size + 2)

    def __init__(
        self,
        config: EnCLAPConfig,
        tokenizer: PreTrainedTokenizerBase | None = None,
        bart: Any = None,  # a BartForConditionalGeneration (typed Any: its config fields are all Optional)
    ) -> None:
        super().__init__()
        from transformers import BartConfig, BartForConditionalGeneration, GenerationConfig

        self.config = config
        if bart is None:
            if config.bart_name_or_path:
                raise ValueError(
                    f"bart_name_or_path={config.bart_name_or_path!r}: pretrained BART weights are loaded by "
                    "build_enclap (constructors do no I/O); pass bart= to EnCLAP"
                )
            bart = BartForConditionalGeneration(
                # forced_bos_token_id is no declared field of BartConfig in transformers 5 (an extra attribute)
                BartConfig(  # type: ignore[call-arg]
                    vocab_size=config.vocab_size,
                    d_model=config.d_model,
                    encoder_layers=config.encoder_layers,
                    decoder_layers=config.decoder_layers,
                    encoder_attention_heads=config.encoder_attention_heads,
                    decoder_attention_heads=config.decoder_attention_heads,
                    encoder_ffn_dim=config.encoder_ffn_dim,
                    decoder_ffn_dim=config.decoder_ffn_dim,
                    max_position_embeddings=config.max_position_embeddings,
                    dropout=config.dropout,
                    attention_dropout=config.attention_dropout,
                    activation_dropout=config.activation_dropout,
                    pad_token_id=PAD_TOKEN_ID,
                    bos_token_id=BOS_TOKEN_ID,
                    eos_token_id=EOS_TOKEN_ID,
                    decoder_start_token_id=EOS_TOKEN_ID,  # BART starts decoding with </s>, then <s>
                    forced_bos_token_id=BOS_TOKEN_ID,
                    forced_eos_token_id=EOS_TOKEN_ID,
                )
            )
        self.bart = bart
        bc = bart.config
        # the BART fields of the config describe the BART actually used (e.g. facebook/bart-large's)
        config = dataclasses.replace(config, **{f: getattr(bc, f) for f in _BART_FIELDS})
        self.config = config
        # explicit generation defaults (a hub checkpoint's own, e.g. bart-large's beam/no-repeat settings, are
        # replaced): decoding starts with </s>, forces <s> first, stops at </s> and, with ``forced_eos`` (the
        # official EnCLAP's generation config), ends a caption that reaches the length limit with </s>; greedy
        # unless told otherwise
        bart.generation_config = GenerationConfig(
            decoder_start_token_id=bc.decoder_start_token_id,
            bos_token_id=bc.bos_token_id,
            eos_token_id=bc.eos_token_id,
            pad_token_id=bc.pad_token_id,
            forced_bos_token_id=bc.bos_token_id,
            forced_eos_token_id=bc.eos_token_id if config.forced_eos else None,
            max_new_tokens=config.max_caption_tokens,
        )
        if config.max_codec_positions + 2 > bc.max_position_embeddings:
            raise ConfigError(
                f"max_codec_positions={config.max_codec_positions} + <s> + </s> exceeds BART's "
                f"max_position_embeddings={bc.max_position_embeddings}"
            )
        self.tokenizer = tokenizer
        if tokenizer is not None and len(tokenizer) > bc.vocab_size:
            raise CheckpointError(f"tokenizer has {len(tokenizer)} tokens but BART's vocabulary is {bc.vocab_size}")
        D, N, K = bc.d_model, config.n_codebooks, config.codebook_size
        self.codebook_embed = nn.EmbeddingBag(N * (K + CODEC_SPECIAL_IDS), D, mode="sum")
        nn.init.normal_(self.codebook_embed.weight, std=bc.init_std)
        self.register_buffer("codebook_offsets", torch.arange(N) * (K + CODEC_SPECIAL_IDS), persistent=False)
        self.clip_proj = nn.Linear(config.clip_dim, D)
        self.mcm_heads = nn.ModuleList(nn.Linear(D, K) for _ in range(N))
        for layer in (self.clip_proj, *self.mcm_heads):  # BART's init, as the official model's post_init gives them
            nn.init.normal_(layer.weight, std=bc.init_std)
            nn.init.zeros_(layer.bias)

    # ----------------------------------------------------------------------------- encoder input (eqs. 1-3)
    @property
    def d_model(self) -> int:
        return self.bart.config.d_model

    def codebook_table(self, n: int) -> torch.Tensor:
        """Embedding table ``W_n`` of codebook ``n``: [codebook_size + 2, D] (a view)."""
        rows = self.config.codebook_size + CODEC_SPECIAL_IDS
        return self.codebook_embed.weight[n * rows : (n + 1) * rows]

    def embed_inputs(
        self, codes: torch.Tensor, codes_mask: torch.Tensor, clip_emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Build ``I_b`` (eqs. 1-3). codes [B, N, L] (ids < codebook_size + 2), codes_mask [B, L] bool (valid
        prefix), clip_emb [B, clip_dim] -> (inputs_embeds [B, L+3, D], attention_mask [B, L+3] long)."""
        B, N, L = codes.shape
        if N != self.config.n_codebooks:
            raise ValueError(f"codes have {N} codebooks, the model expects {self.config.n_codebooks}")
        if L > self.config.max_codec_positions:
            raise ValueError(f"{L} codec frames exceed max_codec_positions={self.config.max_codec_positions}")
        enc = self.bart.model.encoder
        lengths = codes_mask.long().sum(1)  # [B]
        # e_codec: sum over codebooks of W_n[c_n,l] (one EmbeddingBag "sum" per frame)
        flat = (codes.long() + self.codebook_offsets[None, :, None]).transpose(1, 2).reshape(B * L, N)
        e_codec = self.codebook_embed(flat).view(B, L, -1)
        bos_eos = enc.embed_tokens(
            torch.tensor([self.bart.config.bos_token_id, self.bart.config.eos_token_id], device=codes.device)
        )  # [2, D] (BART's scaled word embeddings)
        slot = torch.arange(L + 2, device=codes.device)[None]  # positions in I_concat
        is_bos = (slot == 0)[..., None]
        is_code = ((slot >= 1) & (slot <= lengths[:, None]))[..., None]
        is_eos = (slot == lengths[:, None] + 1)[..., None]
        e_codec = F.pad(e_codec, (0, 0, 1, 1))  # align frame l with slot l + 1
        i_concat = is_code * e_codec + is_bos * bos_eos[0] + is_eos * bos_eos[1]  # eq. 1
        pos = enc.embed_positions.weight[enc.embed_positions.offset + torch.arange(L + 2, device=codes.device)]
        i_pos = i_concat + pos[None]  # eq. 2
        e_clip = self.clip_proj(clip_emb.to(i_pos.dtype))[:, None]  # [B, 1, D], no position
        inputs_embeds = torch.cat([e_clip, i_pos], dim=1)  # eq. 3
        attention_mask = torch.cat(
            [torch.ones(B, 1, dtype=torch.long, device=codes.device), (slot <= lengths[:, None] + 1).long()], dim=1
        )
        return inputs_embeds, attention_mask

    def encode(self, codes: torch.Tensor, codes_mask: torch.Tensor, clip_emb: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Run BART's encoder on ``I_b``: -> (BaseModelOutput with last_hidden_state [B, L+3, D],
        attention_mask [B, L+3]). Padding frames may hold any id; they are replaced by the pad id."""
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutput

        codes = self._checked_codes(codes, codes_mask)
        enc = self.bart.model.encoder
        inputs_embeds, attention_mask = self.embed_inputs(codes, codes_mask, clip_emb)
        h = enc.layernorm_embedding(inputs_embeds)
        h = F.dropout(h, p=enc.dropout, training=self.training)
        mask4d = create_bidirectional_mask(config=enc.config, inputs_embeds=h, attention_mask=attention_mask)
        for layer in enc.layers:
            if self.training and enc.layerdrop > 0 and torch.rand(()) < enc.layerdrop:
                continue
            h = layer(h, mask4d)
        return BaseModelOutput(last_hidden_state=h), attention_mask

    def _checked_codes(self, codes: torch.Tensor, codes_mask: torch.Tensor) -> torch.Tensor:
        if codes.ndim != 3 or codes_mask.shape != (codes.shape[0], codes.shape[2]):
            raise ValueError(
                f"expected codes [B, N, L] and codes_mask [B, L], got {tuple(codes.shape)} and "
                f"{tuple(codes_mask.shape)}"
            )
        valid = codes_mask.bool()
        if (valid[:, 1:] & ~valid[:, :-1]).any():
            raise ValueError("codes_mask must mark a prefix of valid frames (right padding)")
        limit = self.config.codebook_size + CODEC_SPECIAL_IDS
        if ((codes < 0) | (codes >= limit)).any():
            raise ValueError(f"codes outside [0, {limit}) (codebook_size={self.config.codebook_size})")
        return torch.where(valid[:, None, :], codes.long(), self.config.pad_code)

    # ------------------------------------------------------------------------------------------- training
    def forward(
        self,
        codes: torch.Tensor,
        codes_mask: torch.Tensor,
        clip_emb: torch.Tensor,
        labels: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        mcm: bool = False,
        label_smoothing: float | None = None,
        mcm_lambda: float | None = None,
    ) -> EnCLAPOutput:
        """Teacher-forced forward. labels [B, T] (``IGNORE_INDEX`` at padding) -> ``EnCLAPOutput``.

        With ``mcm=True`` a fresh span mask corrupts the codes (the caption is predicted from the corrupted
        input too, §2.2.1) and ``loss = L_caption + mcm_lambda * L_mcm``. Label smoothing (default
        ``config.label_smoothing``) applies to the caption loss only.
        """
        from transformers.models.bart.modeling_bart import shift_tokens_right

        cfg = self.config
        codes = self._checked_codes(codes, codes_mask)
        mask = None
        if mcm:
            mask = sample_span_mask(
                codes_mask.long().sum(1), cfg.n_codebooks, codes.shape[2], cfg.mcm_rate, cfg.mcm_span
            )
            inputs = codes.masked_fill(mask, cfg.mask_code)
        else:
            inputs = codes
        enc_out, enc_mask = self.encode(inputs, codes_mask, clip_emb)
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("forward needs labels or decoder_input_ids")
            bc = self.bart.config
            decoder_input_ids = shift_tokens_right(labels, bc.pad_token_id, bc.decoder_start_token_id)
        logits = self.bart(encoder_outputs=enc_out, attention_mask=enc_mask, decoder_input_ids=decoder_input_ids).logits
        out = EnCLAPOutput(loss=None, logits=logits, mcm_mask=mask)
        if labels is None:
            return out
        ls = cfg.label_smoothing if label_smoothing is None else label_smoothing
        out.caption_loss = caption_loss(logits, labels, ls)
        out.loss = out.caption_loss
        if mask is not None:  # mcm
            hidden = enc_out.last_hidden_state[:, FIRST_CODE_SLOT : FIRST_CODE_SLOT + codes.shape[2]]  # [B, L, D]
            head_logits, targets = [], []
            for n, head in enumerate(self.mcm_heads):
                m = mask[:, n]  # [B, L]: only the masked frames are scored
                head_logits.append(head(hidden[m]))
                targets.append(codes[:, n][m])
            out.mcm_loss, out.mcm_per_codebook = mcm_loss(head_logits, targets)
            lam = cfg.mcm_lambda if mcm_lambda is None else mcm_lambda
            out.loss = out.caption_loss + lam * out.mcm_loss
        return out

    # ----------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self, codes: torch.Tensor, codes_mask: torch.Tensor, clip_emb: torch.Tensor, **gen_kwargs: Any
    ) -> torch.Tensor:
        """Hugging Face ``generate`` (greedy, sampling, beam search; KV cache) from one encoder pass.
        -> token ids [B * num_return_sequences, T] starting with the decoder start token."""
        enc_out, enc_mask = self.encode(codes, codes_mask, clip_emb)
        return self.generate_from_encoder(enc_out, enc_mask, **gen_kwargs)

    @torch.no_grad()
    def generate_from_encoder(self, encoder_out: Any, enc_mask: torch.Tensor, **gen_kwargs: Any) -> torch.Tensor:
        """``generate`` reusing encoder outputs from ``encode`` (e.g. 30 samples per clip, one encoder pass)."""
        from transformers.modeling_outputs import BaseModelOutput

        # a fresh wrapper: generate expands the encoder outputs for beams/samples in place
        hidden = encoder_out if torch.is_tensor(encoder_out) else encoder_out.last_hidden_state
        return self.bart.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=enc_mask, **gen_kwargs
        )

    def decode_logits(self, encoder_out: Any, enc_mask: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Decoder logits [B, T, V] for given encoder outputs [B, S, D] (tensor or BaseModelOutput)."""
        from transformers.modeling_outputs import BaseModelOutput

        if torch.is_tensor(encoder_out):
            encoder_out = BaseModelOutput(last_hidden_state=encoder_out)
        return self.bart(
            encoder_outputs=encoder_out, attention_mask=enc_mask, decoder_input_ids=decoder_input_ids
        ).logits

    @torch.no_grad()
    def sequence_logprobs(self, encoder_out: Any, enc_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Length-normalised teacher-forced log-likelihood at temperature 1: -> [B].

        labels [B, T]: target ids without the decoder start token (e.g. ``generate(...)[:, 1:]``); positions
        holding the pad id or ``IGNORE_INDEX`` are ignored. Score = mean over kept tokens of log p(y_t | y_<t).
        """
        from transformers.models.bart.modeling_bart import shift_tokens_right

        bc = self.bart.config
        labels = labels.masked_fill(labels == bc.pad_token_id, IGNORE_INDEX)
        dec_in = shift_tokens_right(labels, bc.pad_token_id, bc.decoder_start_token_id)
        logp = self.decode_logits(encoder_out, enc_mask, dec_in).float().log_softmax(-1)
        keep = labels != IGNORE_INDEX
        tok = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * keep
        return tok.sum(1) / keep.sum(1).clamp(min=1)

    # ----------------------------------------------------------------------------------- text helpers
    def tokenize(self, captions: list[str], device: torch.device | None = None) -> torch.Tensor:
        """Captions -> labels [B, T] (``<s> ... </s>``, ``IGNORE_INDEX`` padding, at most max_caption_tokens)."""
        if self.tokenizer is None:
            raise CheckpointError("this EnCLAP has no tokenizer")
        enc = self.tokenizer(
            list(captions),
            padding=True,
            truncation=True,
            max_length=self.config.max_caption_tokens,
            return_tensors="pt",
        )
        ids = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
        return ids.to(device) if device is not None else ids

    def decode_text(self, token_ids: torch.Tensor) -> list[str]:
        """Generated ids -> stripped caption strings."""
        if self.tokenizer is None:
            raise CheckpointError("this EnCLAP has no tokenizer")
        return [t.strip() for t in self.tokenizer.batch_decode(token_ids, skip_special_tokens=True)]

    # --------------------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, path: str | Path) -> Path:
        """A ``dcase.checkpoint`` folder: ``config.json`` (config = {"enclap": EnCLAP config, "bart": the full BART
        config}), ``model.safetensors`` and ``tokenizer/``; written atomically."""
        from dcase.checkpoint import save_checkpoint

        config = {"enclap": dataclasses.asdict(self.config), "bart": self.bart.config.to_dict()}
        tok = self.tokenizer
        writers = {TOKENIZER_DIR: lambda p: tok.save_pretrained(str(p))} if tok is not None else {}
        return save_checkpoint(self, path, "enclap", config, writers)

    @classmethod
    def config_of(cls, path: str | Path) -> EnCLAPConfig:
        """The ``EnCLAPConfig`` of a checkpoint (as ``from_pretrained`` resolves it), without loading its weights."""
        from dcase.checkpoint import read_checkpoint_config

        meta, folder = read_checkpoint_config(path, "enclap")
        return _enclap_config(meta, folder)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> EnCLAP:
        """Load a checkpoint folder, training run folder or cached Hub repository (``dcase.checkpoint``)."""
        from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

        from dcase.checkpoint import hf_load, load_checkpoint, load_state

        meta, state, folder = load_checkpoint(path, "enclap", device)
        config = _enclap_config(meta, folder)
        bart = BartForConditionalGeneration(BartConfig.from_dict(meta["bart"]))
        tok_dir = folder / TOKENIZER_DIR
        tok = hf_load(AutoTokenizer.from_pretrained, tok_dir, "the captioner's tokenizer") if tok_dir.is_dir() else None
        model = cls(config, tokenizer=tok, bart=bart)
        load_state(model, state, folder)
        return model.to(device)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute BART layer activations in the backward pass (less memory, ~30 % more compute)."""
        enable = getattr(self.bart, "activation_checkpointing_enable", None) or self.bart.gradient_checkpointing_enable
        enable()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _enclap_config(meta: dict[str, Any], folder: Path) -> EnCLAPConfig:
    """The EnCLAP part of a checkpoint's config.json (keys of older versions that no longer exist are dropped)."""
    if not isinstance(meta.get("enclap"), dict) or not isinstance(meta.get("bart"), dict):
        raise CheckpointError(f"{folder}: config.json lacks the 'enclap' and 'bart' sections of an EnCLAP config")
    known = {f.name for f in dataclasses.fields(EnCLAPConfig)}
    return EnCLAPConfig(**{k: v for k, v in meta["enclap"].items() if k in known})


def build_enclap(
    config: EnCLAPConfig, captions: Iterable[str] | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> EnCLAP:
    """A new EnCLAP: BART and its tokenizer from ``bart_name_or_path``, or a random BART with ``tokenizer`` or
    a tokenizer trained on ``captions`` (``vocab_size`` then shrinks to the tokenizer's vocabulary)."""
    if config.bart_name_or_path:
        from transformers import AutoTokenizer, BartForConditionalGeneration

        # fp32 master weights whatever the checkpoint's storage dtype (autocast handles bf16/fp16)
        from dcase.checkpoint import hf_load

        def load_bart(src: str) -> Any:
            return BartForConditionalGeneration.from_pretrained(src, dtype=torch.float32)

        bart = hf_load(load_bart, config.bart_name_or_path, "BART (model.bart_name_or_path)")
        tokenizer = tokenizer or hf_load(AutoTokenizer.from_pretrained, config.bart_name_or_path, "BART's tokenizer")
        return EnCLAP(config, tokenizer=tokenizer, bart=bart)
    if tokenizer is None:
        if captions is None:
            raise ValueError("a random-weight EnCLAP needs captions to train its tokenizer (or bart_name_or_path)")
        tokenizer = train_caption_tokenizer(captions, config.vocab_size)
    return EnCLAP(dataclasses.replace(config, vocab_size=len(tokenizer)), tokenizer=tokenizer)


def train_caption_tokenizer(captions: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with BART's special tokens (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3,
    ``<mask>`` 4) trained on ``captions``; encodes as ``<s> text </s>`` like BART. -> PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    captions = [c for c in captions if c and c.strip()]
    if not captions:
        raise InputError("train_caption_tokenizer: no non-empty captions")
    min_vocab = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < min_vocab:
        raise ConfigError(f"vocab_size {vocab_size} is below the byte alphabet + specials ({min_vocab})")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(captions, trainer)
    bos, eos = SPECIAL_TOKENS[0], SPECIAL_TOKENS[2]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, tok.token_to_id(bos)), (eos, tok.token_to_id(eos))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        pad_token=SPECIAL_TOKENS[1],
        eos_token=eos,
        unk_token=SPECIAL_TOKENS[3],
        mask_token=SPECIAL_TOKENS[4],
    )


__all__ = [
    "BOS_SLOT",
    "CLIP_SLOT",
    "CODEC_MASK_OFFSET",
    "CODEC_PAD_OFFSET",
    "FIRST_CODE_SLOT",
    "EnCLAP",
    "EnCLAPConfig",
    "EnCLAPOutput",
    "build_enclap",
    "sample_span_mask",
    "train_caption_tokenizer",
]
