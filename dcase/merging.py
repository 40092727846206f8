"""Model soups (Wortsman et al., ICML 2022), used for Task 6 submission 2 of the EnCLAP DCASE2024 report (§3.3:
"an average soup of 5 modified EnCLAP models").

* :func:`uniform_soup`: elementwise mean of the floating-point tensors of N state dicts with identical keys and
  shapes; integer / bool buffers (step counters, index tables) must be identical across ingredients.
* :func:`greedy_soup`: ingredients sorted by their own validation score; each is added to the soup only if the
  soup's validation score improves (strictly).
* :func:`soup_checkpoints`: the same on checkpoint folders (``dcase.checkpoint``: the captioner's, the retriever's
  and CNext's ``save_pretrained`` folders), read and written through ``dcase.checkpoint``. Every ingredient must be
  of the same kind with an identical config (apart from a few bookkeeping keys); the model's sub-folders
  (``tokenizer/``, ``text/``) are copied from the first ingredient.

Pure functions work on ``dict[str, torch.Tensor]``; only the ``*_checkpoints`` helpers touch files.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dcase.errors import InputError, MissingInputError, OutputExistsError

log = logging.getLogger(__name__)

StateDict = Mapping[str, torch.Tensor]
IGNORED_CONFIG_KEYS: frozenset[str] = frozenset({"_name_or_path", "transformers_version", "_commit_hash"})


class SoupError(InputError):
    """Ingredients cannot be averaged; the message names the differing key."""


def _diff_path(a: Any, b: Any, ignore: frozenset[str]) -> tuple | None:
    """Key path (tuple of keys / list indices) of the first place where two JSON-like values differ."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in sorted(set(a) | set(b), key=str):
            if k in ignore:
                continue
            if k not in a or k not in b:
                return (k,)
            sub = _diff_path(a[k], b[k], ignore)
            if sub is not None:
                return (k, *sub)
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return ()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            sub = _diff_path(x, y, ignore)
            if sub is not None:
                return (i, *sub)
        return None
    return None if a == b else ()


def _fmt(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<root>"


def _get(d: Any, path: tuple) -> Any:
    cur = d
    for p in path:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return "<absent>"
    return cur


def check_compatible(configs: Sequence[Mapping[str, Any]], ignore: frozenset[str] = IGNORED_CONFIG_KEYS) -> None:
    """All configs must be equal (one architecture). Raises :class:`SoupError` naming the first differing key."""
    if not configs:
        raise SoupError("no ingredient configs given")
    for i, cfg in enumerate(configs[1:], start=1):
        path = _diff_path(configs[0], cfg, ignore)
        if path is not None:
            raise SoupError(
                f"ingredient {i} has a different config at {_fmt(path)!r}: {_get(cfg, path)!r} vs "
                f"{_get(configs[0], path)!r} in ingredient 0 (a soup needs one architecture)"
            )


def check_state_dicts(state_dicts: Sequence[StateDict]) -> None:
    """Same keys, shapes and dtypes in every state dict; raises :class:`SoupError` naming the parameter."""
    if not state_dicts:
        raise SoupError("no state dicts given")
    ref = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        missing, extra = sorted(set(ref) - set(sd)), sorted(set(sd) - set(ref))
        if missing or extra:
            raise SoupError(
                f"ingredient {i}: parameters differ from ingredient 0 (missing {missing[:5]}, extra {extra[:5]})"
            )
        for k, t in ref.items():
            if sd[k].shape != t.shape:
                raise SoupError(
                    f"ingredient {i}: parameter {k!r} has shape {tuple(sd[k].shape)}, ingredient 0 {tuple(t.shape)}"
                )
            if sd[k].dtype != t.dtype:
                raise SoupError(f"ingredient {i}: parameter {k!r} has dtype {sd[k].dtype}, ingredient 0 {t.dtype}")


def uniform_soup(state_dicts: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    """Elementwise mean of N state dicts: floating tensors are averaged in float64 and cast back to their dtype;
    integer/bool tensors must be identical (else :class:`SoupError` naming the key)."""
    check_state_dicts(state_dicts)
    n = len(state_dicts)
    out: dict[str, torch.Tensor] = {}
    for k, t in state_dicts[0].items():
        if t.is_floating_point() or t.is_complex():
            acc = torch.zeros(t.shape, dtype=torch.complex128 if t.is_complex() else torch.float64)
            for sd in state_dicts:
                acc += sd[k].detach().to("cpu", acc.dtype)
            out[k] = (acc / n).to(t.dtype)
        else:
            for i, sd in enumerate(state_dicts[1:], start=1):
                if not torch.equal(sd[k].cpu(), t.cpu()):
                    raise SoupError(f"integer buffer {k!r} differs between ingredient 0 and {i}; it cannot be averaged")
            out[k] = t.detach().cpu().clone()
    return out


@dataclass
class GreedySoup:
    """Result of :func:`greedy_soup`: the soup, the chosen ingredient indices (in insertion order), its score, and
    one trace row per tried ingredient (index, individual score, soup score with it, kept?)."""

    state_dict: dict[str, torch.Tensor]
    chosen: list[int]
    score: float
    trace: list[dict[str, Any]] = field(default_factory=list)


def greedy_soup(
    candidates: Sequence[StateDict],
    evaluate_fn: Callable[[StateDict], float],
    greater_is_better: bool = True,
    scores: Sequence[float] | None = None,
) -> GreedySoup:
    """Greedy soup (Wortsman et al. 2022, Alg. 1): sort candidates by their validation score (``scores`` if
    given, else ``evaluate_fn`` on each), start from the best, and add each next one only if the uniform soup with
    it scores strictly better than without it."""
    check_state_dicts(candidates)
    if scores is None:
        scores = [float(evaluate_fn(sd)) for sd in candidates]
    if len(scores) != len(candidates):
        raise ValueError(f"found {len(scores)} scores for {len(candidates)} candidates")
    sign = 1.0 if greater_is_better else -1.0
    order = sorted(range(len(candidates)), key=lambda i: -sign * scores[i])
    chosen = [order[0]]
    best = float(scores[order[0]])
    trace = [{"index": order[0], "individual_score": float(scores[order[0]]), "soup_score": best, "kept": True}]
    for i in order[1:]:
        soup = uniform_soup([candidates[j] for j in [*chosen, i]])
        s = float(evaluate_fn(soup))
        kept = sign * s > sign * best
        trace.append({"index": i, "individual_score": float(scores[i]), "soup_score": s, "kept": kept})
        log.info("greedy soup: ingredient %d -> %.6f (%s)", i, s, "kept" if kept else "dropped")
        if kept:
            chosen.append(i)
            best = s
    return GreedySoup(uniform_soup([candidates[j] for j in chosen]), chosen, best, trace)


# ------------------------------------------------------------------------------------------------------------
# Checkpoint directories
# ------------------------------------------------------------------------------------------------------------


def _sub_folders(first: Path) -> dict[str, Callable[[Path], None]]:
    """Writers copying the model's own sub-folders (tokenizer/, text/) of ``first`` into a new checkpoint."""
    return {p.name: functools.partial(shutil.copytree, p) for p in sorted(first.iterdir()) if p.is_dir()}


def soup_checkpoints(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    method: str = "uniform",
    evaluate_fn: Callable[[Path], float] | None = None,
    greater_is_better: bool = True,
    overwrite: bool = False,
    ignore_config_keys: frozenset[str] = IGNORED_CONFIG_KEYS,
) -> Path:
    """Average checkpoint folders into ``out_dir`` (a checkpoint of the same kind, loadable the same way).

    ``method="uniform"``: all ingredients. ``method="greedy"``: needs ``evaluate_fn(model_dir) -> validation
    score``; ingredients are scored, candidate soups are written to a temporary folder and scored, and only
    improving ingredients are kept. The soup folder also gets ``config.yaml`` / ``run.json`` (ingredients,
    method, trace). It is written atomically.
    """
    from dcase.checkpoint import kind_of, load_checkpoint, save_checkpoint
    from dcase.config import write_run_info

    if method not in ("uniform", "greedy"):
        raise InputError(f"unknown soup method {method!r} (uniform or greedy)")
    folders = [Path(d) for d in dirs]
    if len(folders) < 2:
        raise InputError(f"a soup needs at least 2 ingredients, got {len(folders)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass overwrite=True (CLI: --overwrite)")
    if any(out.resolve() == d.resolve() for d in folders):
        raise InputError(f"{out} is one of the ingredients")
    for d in folders:
        if not d.is_dir():
            raise MissingInputError(f"checkpoint directory {d} does not exist")
    kinds = [kind_of(d) for d in folders]
    if kinds[0] is None or any(k != kinds[0] for k in kinds):
        raise SoupError(
            f"ingredients must be checkpoints of one kind; found {dict(zip(map(str, folders), kinds, strict=True))}"
        )
    kind = kinds[0]
    loaded = [load_checkpoint(d, kind)[:2] for d in folders]
    try:
        check_compatible([c for c, _ in loaded], ignore_config_keys)
        check_state_dicts([sd for _, sd in loaded])
    except SoupError as e:
        raise SoupError(f"{e} [ingredients: {[str(d) for d in folders]}]") from e
    config, subs = loaded[0][0], _sub_folders(folders[0])
    extra: dict[str, Any] = {"ingredients": [str(d) for d in folders], "method": method}
    if method == "uniform":
        soup = uniform_soup([sd for _, sd in loaded])
        extra["chosen"] = list(range(len(folders)))
    else:
        if evaluate_fn is None:
            raise InputError("method='greedy' needs evaluate_fn(model_dir) -> validation score")
        scores = [float(evaluate_fn(d)) for d in folders]
        with tempfile.TemporaryDirectory(prefix="greedy_soup_") as tmpd:

            def eval_sd(sd: Mapping[str, torch.Tensor]) -> float:
                trial = save_checkpoint(sd, Path(tmpd) / "trial", kind, config, subs)
                return float(evaluate_fn(trial))

            result = greedy_soup([sd for _, sd in loaded], eval_sd, greater_is_better, scores)
        soup = result.state_dict
        extra.update(chosen=result.chosen, score=result.score, trace=result.trace)
    run = {"soup": {"method": method, "ingredients": [str(d) for d in folders]}}
    # run.json (+ config.yaml) of the soup, written inside the checkpoint folder being built
    writers = {**subs, "run.json": lambda path: write_run_info(path.parent, run, None, extra)}
    save_checkpoint(soup, out, kind, config, writers)
    log.info("soup of %d/%d ingredients written to %s", len(extra["chosen"]), len(folders), out)
    return out
