"""Fluency-error filter: the FENSE error detector (Zhou et al., ICASSP 2022), as used for candidate filtering in the
EnCLAP DCASE2024 technical report §2.3 (captions with fluency errors are discarded before reranking).

Checkpoint format (the one aac-metrics 0.5.4 and the original FENSE release use): a ``torch.save``'d dict

    {"model_type": <Hugging Face BERT name or local dir>, "num_classes": 6,
     "state_dict": {"encoder.<BertModel params>": ..., "clf.weight": [C, H], "clf.bias": [C]}}

The classifier is ``BertModel -> [CLS] state -> dropout -> Linear(H, C)``; the six sigmoid outputs are
``add_tail, repeat_event, repeat_adv, remove_conj, remove_verb, error``. Texts are lower-cased, stripped of every
non-word non-space character and padded/truncated to 64 tokens before scoring (aac-metrics ``fer``). A caption is
erroneous when P(error) > threshold (0.9 by default, the FENSE penalty threshold).

The checkpoint is read with ``torch.load(weights_only=True)``; the backbone is built from the ``model_type``
config (its weights come from the checkpoint), and its tokenizer is loaded from ``model_type`` (or from the
``backbone`` override, a local directory with config + tokenizer files). A checker that is configured but cannot
be loaded raises :class:`FluencyCheckerError`; when no checker is configured the filter is off
(:func:`fluency_stage` reports this) and no probability is ever invented.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from dcase.errors import CheckpointError, InputError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

ERROR_NAMES: tuple[str, ...] = ("add_tail", "repeat_event", "repeat_adv", "remove_conj", "remove_verb", "error")
DEFAULT_THRESHOLD = 0.9
MAX_LEN = 64


class FluencyCheckerError(CheckpointError):
    """A configured fluency checker could not be loaded."""


class FluencyScorer(Protocol):
    """What the reranker needs of a fluency checker (``FluencyChecker``, or a stand-in in tests): texts [N] ->
    P(caption has a fluency error), float [N] (EnCLAP DCASE2024 report §2.3)."""

    def error_probabilities(self, texts: Sequence[str]) -> np.ndarray: ...


class CheckerNet(Protocol):
    """The checker network built by ``build_checker_module``: token ids [B, L] -> logits [B, C]."""

    model_type: str
    num_classes: int

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


def _module_cls() -> type:
    from torch import nn

    class CheckerModule(nn.Module):
        """BERT encoder + linear head on the [CLS] state; parameter names match the FENSE checkpoints."""

        def __init__(self, encoder: PreTrainedModel, num_classes: int, model_type: str) -> None:
            super().__init__()
            self.model_type = model_type
            self.num_classes = num_classes
            self.encoder = encoder
            self.dropout = nn.Dropout(encoder.config.hidden_dropout_prob)
            self.clf = nn.Linear(encoder.config.hidden_size, num_classes)

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            token_type_ids: torch.Tensor | None = None,
            **_: Any,
        ) -> torch.Tensor:
            """[B, L] token ids -> [B, C] logits."""
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return self.clf(self.dropout(out.last_hidden_state[:, 0, :]))

    return CheckerModule


def build_checker_module(
    encoder: PreTrainedModel, num_classes: int = len(ERROR_NAMES), model_type: str = ""
) -> CheckerNet:
    """Wrap a Hugging Face BERT ``encoder`` in the FENSE checker head (random head weights)."""
    net: CheckerNet = _module_cls()(encoder, num_classes, model_type)
    return net


def preprocess_texts(texts: Sequence[str]) -> list[str]:
    """FENSE text normalisation: drop every character that is neither a word character nor whitespace; lower-case."""
    return [re.sub(r"[^\w\s]", "", t).lower() for t in texts]


@dataclass
class FluencyChecker:
    """A loaded checker: ``model`` (torch module, eval mode), ``tokenizer``, ``threshold``, source ``path``."""

    model: CheckerNet
    tokenizer: PreTrainedTokenizerBase
    threshold: float = DEFAULT_THRESHOLD
    path: str = ""
    device: str = "cpu"
    batch_size: int = 32

    def probabilities(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per-class sigmoid probabilities ``{name: float32 [N]}`` for ``texts`` [N]."""
        import torch

        names = (
            ERROR_NAMES
            if self.model.num_classes == len(ERROR_NAMES)
            else tuple(f"class_{i}" for i in range(self.model.num_classes))
        )
        chunks = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    preprocess_texts(texts[i : i + self.batch_size]),
                    truncation=True,
                    padding="max_length",
                    max_length=MAX_LEN,
                    return_tensors="pt",
                )
                batch = {
                    k: v.to(self.device)
                    for k, v in batch.items()
                    if k in ("input_ids", "attention_mask", "token_type_ids")
                }
                chunks.append(self.model(**batch).float().sigmoid().cpu().numpy())
        probs = np.concatenate(chunks, 0) if chunks else np.zeros((0, len(names)), np.float32)
        return {n: probs[:, j] for j, n in enumerate(names)}

    def error_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """P(caption has a fluency error), float32 [N] (the last, ``error`` output)."""
        probs = self.probabilities(texts)
        return probs["error"] if "error" in probs else list(probs.values())[-1]

    def is_erroneous(self, texts: Sequence[str]) -> np.ndarray:
        """bool [N]: P(error) > threshold."""
        return self.error_probabilities(texts) > self.threshold


def save_checker(model: CheckerNet, path: str | Path, model_type: str | None = None) -> None:
    """Save a checker module in the FENSE / aac-metrics checkpoint format (atomically)."""
    import torch

    from dcase.io import atomic_path

    payload = {
        "model_type": model_type or model.model_type,
        "num_classes": int(model.num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


FENSE_DEFAULT = "fense"  # names the official FENSE checker wherever aac-metrics / FENSE keep it


FENSE_CHECKER_FILE = "echecker_clotho_audiocaps_base.ckpt"  # the official FENSE error detector


def default_checker_location() -> Path:
    """Where FENSE (and aac-metrics) keep the official checker: ``$FENSE_DATA``, else ``<torch hub>/fense_data``."""
    import os

    if os.environ.get("FENSE_DATA"):
        home = Path(os.environ["FENSE_DATA"]).expanduser()
    else:
        try:
            import torch

            home = Path(torch.hub.get_dir()) / "fense_data"
        except ImportError:
            home = Path.home() / ".cache" / "torch" / "hub" / "fense_data"
    return home / FENSE_CHECKER_FILE


CHECKER_ABSENT = "is absent (its download host is unreachable offline; copy the file there or set DCASE_FENSE_CHECKER)"


def locate_checker(configured: str | Path | None = None) -> tuple[Path, bool]:
    """Where the official FENSE checker is looked for, for the reranker and the caption metrics alike: (path,
    configured?). ``configured`` (a setting, e.g. ``MetricSettings.fense_checker``), else ``$DCASE_FENSE_CHECKER``,
    else ``default_checker_location()``. The file may be absent; the callers decide what that means."""
    import os

    spec = configured or os.environ.get("DCASE_FENSE_CHECKER")
    if spec:
        return Path(spec).expanduser(), True
    return default_checker_location(), False


def resolve_checker_path(spec: str | Path) -> Path:
    """A checker file: ``spec`` itself, or for ``"fense"`` the official checker where the caption metrics find it
    (:func:`locate_checker`). Raises FluencyCheckerError saying where to put the file."""
    if str(spec) != FENSE_DEFAULT:
        return Path(spec).expanduser()
    path, _ = locate_checker()
    if not path.is_file():
        raise FluencyCheckerError(f"fluency checker 'fense': {path} {CHECKER_ABSENT}")
    return path


def load_fluency_checker(
    path: str | Path,
    backbone: str | Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    device: str = "cpu",
    batch_size: int = 32,
) -> FluencyChecker:
    """Load a FENSE checker checkpoint (aac-metrics format). Any failure raises :class:`FluencyCheckerError`.

    ``backbone`` overrides the checkpoint's ``model_type`` (a local BERT directory holding config + tokenizer).
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from dcase.checkpoint import torch_load_weights

    path = resolve_checker_path(path)
    if not path.is_file():
        raise FluencyCheckerError(f"fluency checker {path} does not exist")
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"fluency threshold must be in [0, 1], got {threshold}")
    try:
        states = torch_load_weights(
            path,
            "fluency checker",
            "torch.save({'model_type': ..., 'num_classes': ..., 'state_dict': model.state_dict()}, path) on a "
            "trusted machine (the FENSE / aac-metrics checker format)",
        )
    except CheckpointError as e:
        raise FluencyCheckerError(f"fluency checker: {e}") from e
    if not isinstance(states, dict) or not {"model_type", "num_classes", "state_dict"} <= set(states):
        keys = sorted(states) if isinstance(states, dict) else type(states).__name__
        raise FluencyCheckerError(
            f"{path} is not a FENSE checker checkpoint (expected keys model_type, num_classes, state_dict; got {keys})"
        )
    model_type = str(backbone) if backbone else str(states["model_type"])
    try:
        config = AutoConfig.from_pretrained(model_type)
        tokenizer = AutoTokenizer.from_pretrained(model_type)
    except Exception as e:  # noqa: BLE001
        raise FluencyCheckerError(
            f"fluency checker {path}: cannot load its backbone {model_type!r} config/tokenizer offline ({e}); "
            "pass a local copy as backbone"
        ) from e
    encoder = AutoModel.from_config(config)
    model = _module_cls()(encoder, int(states["num_classes"]), model_type)  # the torch module: load, eval, to
    state = dict(states["state_dict"])
    expected = set(model.state_dict())
    # Older transformers kept `position_ids` as a persistent buffer; newer ones rebuild it (as aac-metrics does).
    for k in [k for k in state if k not in expected and k.endswith("embeddings.position_ids")]:
        state.pop(k)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FluencyCheckerError(f"fluency checker {path} does not match backbone {model_type!r}: {e}") from e
    model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    log.info("fluency checker %s loaded (backbone %s, threshold %.2f)", path, model_type, threshold)
    return FluencyChecker(model, tokenizer, threshold, str(path), device, batch_size)


def fluency_stage(
    checker_path: str | Path | None,
    backbone: str | Path | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    device: str = "cpu",
) -> tuple[FluencyChecker | None, dict[str, Any]]:
    """Set up the filter stage: (checker or None, status dict for scores.json / run info).

    ``checker_path=None`` -> the filter is off (logged, ``{"fluency_filter": "off", ...}``); a given path must load.
    """
    if not checker_path:
        log.warning("no fluency checker configured: the FENSE fluency filter is OFF (candidates are not filtered)")
        return None, {"fluency_filter": "off", "reason": "no checker configured"}
    checker = load_fluency_checker(checker_path, backbone=backbone, threshold=threshold, device=device)
    return checker, {"fluency_filter": "on", "checker": str(checker_path), "threshold": threshold}


def build_debug_checker(
    out_dir: str | Path, words: Sequence[str], hidden: int = 16, layers: int = 1, seed: int = 0
) -> Path:
    """Debug-size factory for tests: a random tiny BERT backbone (config + word-level tokenizer) saved in
    ``out_dir/backbone`` and a checker checkpoint ``out_dir/checker.ckpt`` in the FENSE format. Its probabilities
    are meaningless; never use it as a real fluency filter. Returns the checkpoint path."""
    import torch

    # BertTokenizerFast is exported lazily: the type information of transformers 5 lists only BertTokenizer.
    from transformers import BertConfig, BertModel, BertTokenizerFast  # type: ignore[attr-defined]

    out_dir = Path(out_dir)
    bb = out_dir / "backbone"
    bb.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(w.lower() for w in words)]
    # transformers 5 takes `vocab` (a dict or a vocab.txt path); 4.x took `vocab_file`: a dict suits both styles.
    (bb / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    if tok.convert_tokens_to_ids(vocab[-1]) == tok.unk_token_id:
        tok = BertTokenizerFast(vocab_file=str(bb / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(str(bb))
    unk = sum(1 for w in vocab[5:] if tok.convert_tokens_to_ids(w) == tok.unk_token_id)
    if unk:
        raise RuntimeError(f"debug checker tokenizer maps {unk} vocabulary words to [UNK]")
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=MAX_LEN,
    )
    cfg.save_pretrained(str(bb))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = build_checker_module(BertModel(cfg), len(ERROR_NAMES), str(bb))
    torch.random.set_rng_state(gen_state)
    path = out_dir / "checker.ckpt"
    save_checker(model, path)
    return path
