"""Using a trained system from Python: ``Captioner`` (Task 6) and ``Retriever`` (Task 8, text-to-audio search).

Both load a **system folder** (``system.json`` + the checkpoints it names, written by
``dcase.stages.systems.export_system``: ``<run>/systems/task6_<n>/system``, ``demo_out/system``) from a local path or,
by repository id, from the Hugging Face cache (``HF_HUB_OFFLINE`` honoured: nothing is downloaded when it is set)::

    from dcase.api import Captioner, Retriever

    captioner = Captioner.from_pretrained("demo_out/system")
    captions = captioner.caption(["a.wav", "b.flac"])           # ["a dog barks ...", ...]

    retriever = Retriever.from_pretrained("demo_out/system")    # a Task 6 system's retriever, a Task 8 system
    retriever.index("my_sounds/")                               # or a retriever checkpoint folder
    hits = retriever.search("a dog barks", k=10)                 # [Hit(file=..., score=...), ...]

``Captioner.caption`` runs the whole chain of the DCASE2024 report (§2.3, §3.1) in memory, without feature stores:
audio at any rate / channel count / length -> DAC codes (the head of ``max_codec_positions`` frames, as the
generation stage crops them) + the clip embedding of the system's clip embedder -> candidates (30 nucleus samples by
default, the system's ``generation`` settings) -> encoder score (retriever cosine), decoder score, fluency filter ->
reranking. It is built from the generation stage's own pieces (``candidates_for_batch``, ``encoder_scores``,
``lazy_fluency``, ``rerank``), with the clip's file name as its sampling key: for the same file and settings it
selects exactly what ``dcase generate`` selects on a manifest of that folder (tested).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from dcase.errors import CheckpointError, InputError, MissingInputError

if TYPE_CHECKING:
    import pandas as pd

    from dcase.decoding.sample import Candidate

log = logging.getLogger(__name__)

CHUNK_CLIPS = 16  # clips whose audio is held in memory at once by Captioner.caption
COLLECTION_FORMAT = "dcase-audio-collection"
COLLECTION_FILE = "collection.json"


class SystemFolderError(CheckpointError):
    """A folder that is not a usable system folder (no ``system.json``, wrong task, missing parts)."""


# ------------------------------------------------------------------------------------------- system folders
def resolve_system(path_or_hub_id: str | Path) -> Path:
    """The local folder of a system: a folder as is, or a Hub repository id found in the Hugging Face cache
    (``HF_HUB_CACHE``; downloaded only when ``HF_HUB_OFFLINE`` is not set)."""
    from dcase.checkpoint import resolve_checkpoint

    return resolve_checkpoint(path_or_hub_id)


def read_system(folder: str | Path, task: int | None = None) -> dict[str, Any]:
    """``system.json`` of a system folder, checked (format, version, task)."""
    from dcase.stages.systems import SYSTEM_FILE, SYSTEM_FORMAT

    folder = Path(folder)
    path = folder / SYSTEM_FILE
    if not path.is_file():
        raise SystemFolderError(
            f"{folder}: not a system folder (no {SYSTEM_FILE}); use a folder written by `dcase pipeline run` "
            "(<run>/systems/task6_<n>/system) or `dcase demo` (demo_out/system)"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SystemFolderError(f"{path}: not valid JSON ({e})") from e
    if doc.get("format") != SYSTEM_FORMAT or doc.get("format_version") != 1:
        raise SystemFolderError(
            f"{path}: format {doc.get('format')!r} version {doc.get('format_version')!r}; this dcase reads "
            f"{SYSTEM_FORMAT!r} version 1"
        )
    if task is not None and doc.get("task") != task:
        raise SystemFolderError(f"{path}: a Task {doc.get('task')} system, expected a Task {task} system")
    return doc


def _part(folder: Path, doc: dict[str, Any], key: str) -> Path:
    rel = doc.get(key)
    if not rel:
        raise SystemFolderError(f"{folder / 'system.json'}: no {key!r} entry")
    path = folder / rel
    if not path.is_dir():
        raise SystemFolderError(f"{folder / 'system.json'} names {key} {rel!r}, but {path} is missing")
    return path


def _under(folder: Path, value: str | None) -> str | None:
    """A path of ``system.json``: a relative one under ``folder``; absolute or empty ones as they are."""
    return str(folder / value) if value and not Path(value).is_absolute() else value


def audio_files(items: str | Path | Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Audio files from files and folders (a folder: its audio files, sorted by name; ``recursive``: also those of
    its sub-folders, sorted by relative path). A missing path or a folder without audio is a MissingInputError."""
    from dcase.data.audio import AUDIO_EXTENSIONS, is_audio_file

    if isinstance(items, str | Path):
        items = [items]
    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                (f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file() and is_audio_file(f.name)),
                key=lambda f: f.relative_to(p).as_posix(),
            )
            if not found:
                raise MissingInputError(f"{p}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise MissingInputError(f"{p}: no such audio file or folder")
    return [f.resolve() for f in out]


# ------------------------------------------------------------------------------------------------ captioner
@dataclass
class ScoredCandidate:
    """One distinct candidate caption of a clip and its scores (report §2.3). ``final_score = w_enc *
    encoder_score + w_dec * decoder_score``; ``fluency_error_prob`` is None when the filter is off or the
    candidate was not checked (lazy checking stops at the first fluent candidate in score order)."""

    text: str
    final_score: float
    encoder_score: float | None
    decoder_score: float
    fluency_error_prob: float | None
    count: int  # samples that produced this text
    selected: bool


@dataclass
class CaptionResult:
    """The caption of one file and its candidates, best first (the order the reranker selects in)."""

    file: str
    caption: str
    candidates: list[ScoredCandidate] = field(default_factory=list)
    fallback: bool = False  # no candidate passed the fluency filter; the best-scoring one was kept


class Captioner:
    """A Task 6 system in memory: captioner(s), retriever (reranking), clip embedder, DAC codec, generation
    settings (``settings``: a ``GenerationSettings``, may be replaced before ``caption``)."""

    def __init__(
        self,
        models: Sequence[Any],
        codec: Any,
        clip_embedder: Any,
        retriever: Any | None,
        settings: Any,
        checker: Any | None = None,
        device: str = "cpu",
        folder: Path | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.models = list(models)
        self.codec, self.clip_embedder, self.retriever = codec, clip_embedder, retriever
        self.settings, self.checker, self.device = settings, checker, device
        self.folder, self.info = folder, dict(info or {})
        mc = self.models[0].config
        self.max_frames = min(m.config.max_codec_positions for m in self.models)
        if codec.n_codebooks != mc.n_codebooks or int(codec.config.codebook_size) > mc.codebook_size:
            raise SystemFolderError(
                f"{folder}: the codec gives {codec.n_codebooks} codebooks of {codec.config.codebook_size} codes, the "
                f"captioner reads {mc.n_codebooks} codebooks of {mc.codebook_size}"
            )
        if int(clip_embedder.embed_dim) != mc.clip_dim:
            raise SystemFolderError(
                f"{folder}: the clip embedder gives {clip_embedder.embed_dim}-d embeddings, the captioner's clip slot "
                f"reads {mc.clip_dim}"
            )
        self.timings: dict[str, float] = {}  # seconds per phase of the last caption() call

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | None = None,
        fluency_checker: str | Path | None = "system",
    ) -> Captioner:
        """Load a Task 6 system folder (local, or a repository id in the Hugging Face cache).

        ``fluency_checker``: ``"system"`` uses the system's own setting (its ``generation.fluency_checker``, a
        path that must exist, relative paths under the system folder); None switches the filter off; a path loads
        that FENSE checker.
        """
        from dcase.config import from_dict
        from dcase.decoding.fluency import fluency_stage
        from dcase.env import resolve_device
        from dcase.features.codec import load_codec
        from dcase.features.embed import load_embedder
        from dcase.models.retriever import Retriever as RetrieverModel
        from dcase.stages.generation import GenerationSettings, load_captioners

        device = resolve_device(device)
        folder = resolve_system(path_or_hub_id)
        doc = read_system(folder, task=6)
        captioners = doc.get("captioners") or []
        if not captioners:
            raise SystemFolderError(f"{folder / 'system.json'}: no captioners")
        paths = [_part(folder, {"c": c}, "c") for c in captioners]
        settings = from_dict(GenerationSettings, doc.get("generation") or {}, prefix=f"{folder}/system.json generation")
        if fluency_checker != "system":
            settings = dataclasses.replace(settings, fluency_checker=str(fluency_checker) if fluency_checker else None)
        settings = dataclasses.replace(
            settings,
            fluency_checker=_under(folder, settings.fluency_checker),
            fluency_backbone=_under(folder, settings.fluency_backbone),
        )
        if settings.fluency_checker and not Path(settings.fluency_checker).exists():
            raise MissingInputError(
                f"{folder / 'system.json'}: its fluency checker {settings.fluency_checker} does not exist here; pass "
                "fluency_checker=None (CLI: --no-fluency-filter) to caption without the filter, or the checker's path"
            )
        settings.check()
        checker, status = fluency_stage(
            settings.fluency_checker, settings.fluency_backbone, settings.fluency_threshold, device
        )
        models = load_captioners(paths, device)
        if len(models) > 1 and settings.ensemble == "token":
            from dcase.decoding.ensemble import check_same_tokenizer

            check_same_tokenizer(models, [str(p) for p in paths])
        codec = load_codec(_part(folder, doc, "codec"))
        codec.model.to(device)
        embedder_path = _part(folder, doc, "clip_embedder")
        embedder = load_embedder(embedder_path)
        if hasattr(embedder, "to"):
            embedder.to(device)
        retriever = None
        if doc.get("retriever"):
            if doc["retriever"] == doc["clip_embedder"] and isinstance(embedder, RetrieverModel):
                retriever = embedder
            else:
                retriever = RetrieverModel.from_pretrained(_part(folder, doc, "retriever"), device=device)
        elif settings.w_enc != 0:
            raise SystemFolderError(f"{folder}: w_enc={settings.w_enc} but the system has no retriever")
        info = {k: doc.get(k) for k in ("name", "label")} | status
        return cls(models, codec, embedder, retriever, settings, checker, device, folder, info)

    # ------------------------------------------------------------------ features
    def _codes(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """DAC codes int64 [K, T <= max_frames] of mono waves at the codec rate. Only the head the captioner reads
        is encoded (plus the encoder's receptive field), which gives the head's codes of the whole clip."""
        c = self.codec
        keep = (self.max_frames + 2 * c.context_frames + c.chunk_frames) * c.hop
        heads = [w[:keep] if len(w) > keep else w for w in waves]
        heads = [np.pad(w, (0, c.hop - len(w))) if len(w) < c.hop else w for w in heads]
        return [codes[:, : self.max_frames].astype(np.int64) for codes in c.encode_many(heads)]

    @overload
    def caption(
        self,
        files: str | Path | Sequence[str | Path],
        return_candidates: Literal[False] = False,
        progress: bool = False,
    ) -> list[str]: ...

    @overload
    def caption(
        self, files: str | Path | Sequence[str | Path], return_candidates: Literal[True], progress: bool = False
    ) -> list[CaptionResult]: ...

    @overload
    def caption(
        self, files: str | Path | Sequence[str | Path], return_candidates: bool, progress: bool = False
    ) -> list[str] | list[CaptionResult]: ...

    def caption(
        self, files: str | Path | Sequence[str | Path], return_candidates: bool = False, progress: bool = False
    ) -> list[str] | list[CaptionResult]:
        """Caption audio files (any format soundfile reads, any rate, channel count and length; a folder: its
        audio files). Returns the captions in input order, or with ``return_candidates`` a ``CaptionResult`` per
        file with its scored candidates, best first. ``timings`` holds the seconds spent per phase."""
        paths = audio_files(files)
        results = self._run(paths, progress)
        return results if return_candidates else [r.caption for r in results]

    def _run(self, paths: list[Path], progress: bool) -> list[CaptionResult]:
        """Caption ``paths`` in chunks of ``CHUNK_CLIPS`` clips; ``timings`` gets the seconds spent per phase."""
        import pandas as pd

        from dcase.decoding.rerank import rank_order
        from dcase.features.embed import embed_waves

        self.settings.check()
        t = dict.fromkeys(("audio", "codec", "embedding", "sampling", "reranking"), 0.0)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(paths), unit="clip", desc="caption", dynamic_ncols=True)
        tables = []
        for start in range(0, len(paths), CHUNK_CLIPS):
            chunk = paths[start : start + CHUNK_CLIPS]
            t0 = time.perf_counter()
            waves = self._waves(chunk)
            t1 = time.perf_counter()
            codes = self._codes(waves[self.codec.sample_rate])
            t2 = time.perf_counter()
            clip_emb = embed_waves(self.clip_embedder, waves[int(self.clip_embedder.sample_rate)])
            audio_emb = self._audio_embeddings(clip_emb, waves)
            t3 = time.perf_counter()
            cands = self._candidates(chunk, codes, clip_emb, bar)
            t4 = time.perf_counter()
            tables.append(self._rerank([str(start + i) for i in range(len(chunk))], cands, audio_emb))
            t5 = time.perf_counter()
            for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                t[k] += dt
        if bar is not None:
            bar.close()
        self.timings = {k: round(v, 4) for k, v in t.items()}
        table = pd.concat(tables, ignore_index=True)
        return _caption_results(paths, table.iloc[rank_order(table)])

    def _waves(self, chunk: Sequence[Path]) -> dict[int, list[np.ndarray]]:
        """The clips as mono float32 waves [T], keyed by each rate a model reads (codec, clip embedder, retriever)."""
        from dcase.data.audio import AudioError, load_audio, resample

        native = []
        for p in chunk:
            try:
                native.append(load_audio(p))
            except AudioError as e:
                raise InputError(f"cannot caption {p}: {e}") from e
        rates = {self.codec.sample_rate, int(self.clip_embedder.sample_rate)}
        if self.retriever is not None:
            rates.add(int(self.retriever.sample_rate))
        return {sr: [resample(x, r, sr) for x, r in native] for sr in rates}

    def _audio_embeddings(self, clip_emb: list[np.ndarray], waves: dict[int, list[np.ndarray]]) -> np.ndarray | None:
        """The retriever's L2-normalised audio embeddings float32 [B, D] (the encoder score's audio side, report
        §2.3); None without a retriever. A retriever that is also the clip embedder reuses ``clip_emb``."""
        from dcase.features.embed import embed_waves
        from dcase.stages.generation import l2_normalise

        if self.retriever is None:
            return None
        emb = (
            clip_emb
            if self.retriever is self.clip_embedder
            else embed_waves(self.retriever, waves[int(self.retriever.sample_rate)])
        )
        return l2_normalise(np.stack(emb).astype(np.float32))

    def _candidates(
        self, chunk: Sequence[Path], codes: list[np.ndarray], clip_emb: list[np.ndarray], bar: Any | None
    ) -> list[list[Candidate]]:
        """The candidates of each clip of ``chunk`` (codes int64 [K, T], clip embeddings [D]), sampled in batches of
        clips of similar length, each clip seeded by its file name (as ``dcase generate`` seeds it)."""
        from dcase.stages.generation import sample_candidates

        cands = sample_candidates(
            self.models,
            range(len(chunk)),
            lambda i: codes[i].shape[1],
            lambda i: (codes[i], clip_emb[i], ""),
            lambda i: chunk[i].name,
            self.settings,
            self.device,
            lambda i: CheckpointError(
                f"{chunk[i]}: every sample decoded to an empty caption (the captioner ends at once; "
                "check the checkpoint, or raise sampling.min_new_tokens)"
            ),
            bar,
        )
        return [cands[i] for i in range(len(chunk))]

    def _rerank(self, ids: list[str], cands: list[list[Candidate]], audio_emb: np.ndarray | None) -> pd.DataFrame:
        """The reranked candidates table of one chunk (clip ids ``ids``): encoder score, fluency filter, final
        score and selection (report §2.3), as the generation stage ranks them."""
        from dcase.decoding.rerank import rerank
        from dcase.stages.generation import candidates_table, encoder_scores

        g = self.settings
        enc: list[np.ndarray | None] = [None] * len(cands)
        if self.retriever is not None and audio_emb is not None:
            texts = [[c.text for c in cs] for cs in cands]
            enc = list(encoder_scores(self.retriever, audio_emb, texts, g.text_batch_size))
        table = candidates_table(ids, cands, enc, g, self.checker)
        return rerank(table, g.w_enc, g.w_dec, g.fluency_threshold if self.checker is not None else None)


def _caption_results(paths: Sequence[Path], table: pd.DataFrame) -> list[CaptionResult]:
    """One ``CaptionResult`` per path (clip id: its index in ``paths``) from the reranked table, in rank order."""
    per_clip = dict(iter(table.groupby("clip_id", sort=False)))
    out = []
    for i, p in enumerate(paths):
        rows = per_clip[str(i)]
        cands = [
            ScoredCandidate(
                text=str(r["text"]),
                final_score=float(r["final_score"]),
                encoder_score=None if np.isnan(r["encoder_score"]) else float(r["encoder_score"]),
                decoder_score=float(r["decoder_score"]),
                fluency_error_prob=None if np.isnan(r["fluency_error_prob"]) else float(r["fluency_error_prob"]),
                count=int(r["count"]),
                selected=bool(r["selected"]),
            )
            for r in rows.to_dict("records")
        ]
        chosen = next(c for c in cands if c.selected)
        out.append(CaptionResult(str(p), chosen.text, cands, bool(rows["fallback"].any())))
    return out


# ------------------------------------------------------------------------------------------------ retriever
@dataclass
class Hit:
    """One search result: an indexed audio file and its similarity to the query (higher = better)."""

    file: str
    score: float


def _retriever_members(folder: Path) -> tuple[list[Path], str]:
    """(retriever checkpoint folders, ranking mode) of a Task 8 system, a Task 6 system (its retriever) or a
    retriever checkpoint folder."""
    from dcase.checkpoint import kind_of
    from dcase.stages.systems import SYSTEM_FILE

    if (folder / SYSTEM_FILE).is_file():
        doc = read_system(folder)
        if doc.get("task") == 8:
            members = [_part(folder, {"r": r}, "r") for r in doc.get("retrievers") or []]
            if not members:
                raise SystemFolderError(f"{folder / SYSTEM_FILE}: no retrievers")
            return members, str(doc.get("mode") or "cosine")
        key = "retriever" if doc.get("retriever") else "clip_embedder"
        path = _part(folder, doc, key)
        if kind_of(path) != "retriever":
            raise SystemFolderError(f"{folder}: this Task 6 system has no text-audio retriever ({key} is {path})")
        return [path], "cosine"
    if kind_of(folder) == "retriever":
        return [folder], "cosine"
    raise SystemFolderError(
        f"{folder}: neither a system folder (system.json) nor a retriever checkpoint (config.json with dcase_kind "
        "retriever)"
    )


class Retriever:
    """Text-to-audio search with a retriever (or a Task 8 ensemble: the mean of per-query z-scored similarities,
    as the Task 8 systems rank). ``index`` embeds a collection of audio files; ``search`` ranks it for a text."""

    def __init__(
        self,
        models: Sequence[Any],
        sources: Sequence[Path],
        mode: str = "cosine",
        device: str = "cpu",
        origin: str | Path | None = None,
    ) -> None:
        if not models:
            raise ValueError("a Retriever needs at least one retriever model")
        self.models, self.sources, self.mode, self.device = list(models), [Path(s) for s in sources], mode, device
        self.origin = str(origin) if origin is not None else str(self.sources[0])  # what from_pretrained loaded
        self.collection: AudioCollection | None = None
        self._fingerprints: list[str] | None = None

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | Path, device: str | None = None) -> Retriever:
        """A Task 8 system folder, a Task 6 system folder (its reranking retriever) or a retriever checkpoint:
        local, or a repository id in the Hugging Face cache."""
        from dcase.env import resolve_device
        from dcase.models.retriever import Retriever as RetrieverModel

        device = resolve_device(device)
        folder = resolve_system(path_or_hub_id)
        members, mode = _retriever_members(folder)
        if mode != "cosine":
            log.info("%s ranks with %s (transductive, a whole query set at once); search ranks by cosine", folder, mode)
        models = [RetrieverModel.from_pretrained(m, device=device) for m in members]
        return cls(models, members, "cosine", device, origin=folder)

    @classmethod
    def load_index(
        cls, index_dir: str | Path, retriever: str | Path | None = None, device: str | None = None
    ) -> Retriever:
        """A retriever with the collection saved by ``index(..., out=index_dir)`` (``dcase index``); the retriever
        is the one the index recorded, or ``retriever`` (which must have the same weights)."""
        coll = AudioCollection.load(index_dir)
        src = retriever or coll.retriever
        try:
            r = cls.from_pretrained(src, device=device)
        except MissingInputError as e:
            raise MissingInputError(
                f"{index_dir}: the retriever it was built with ({src}) cannot be loaded; pass --retriever DIR "
                f"(retriever=...) with the same weights ({e})"
            ) from e
        coll.check_models(r)
        r.collection = coll
        return r

    def fingerprints(self) -> list[str]:
        """Weight fingerprints (``dcase.io.fingerprint``) of the member checkpoints (an index records them)."""
        from dcase.io import fingerprint

        if self._fingerprints is None:
            self._fingerprints = [fingerprint(s) for s in self.sources]
        return self._fingerprints

    def embed_text(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per member model: L2-normalised text embeddings float32 [Q, D]."""
        return [m.embed_text(list(texts)).float().numpy() for m in self.models]

    def index(
        self,
        files_or_folder: str | Path | Iterable[str | Path],
        out: str | Path | None = None,
        recursive: bool = True,
        max_seconds: float | None = 30.0,
        batch_size: int = 16,
        progress: bool = False,
    ) -> AudioCollection:
        """Embed the audio files (folders: their audio files, ``recursive`` by default) and keep them for
        ``search``. With ``out``, the collection is saved there and an existing one is updated incrementally: a
        file whose path, size and modification time are unchanged keeps its embeddings; a changed size or time
        re-hashes the file and re-embeds it only when its content changed; files no longer present are dropped.
        Audio longer than ``max_seconds`` is embedded from its head (as the Task 8 systems do)."""
        files = audio_files(files_or_folder, recursive=recursive)
        old = None
        if out is not None and (Path(out) / COLLECTION_FILE).is_file():
            old = AudioCollection.load(out)
            if old.fingerprints != self.fingerprints() or old.max_seconds != max_seconds:
                log.info("%s was built with other retriever weights or max_seconds: rebuilding it", out)
                old = None
        coll = AudioCollection.build(self, files, old, max_seconds, batch_size, progress)
        if not len(coll):
            raise InputError(f"{files_or_folder}: none of the {len(files)} audio files could be read")
        if out is not None:
            coll.save(out)
        self.collection = coll
        return coll

    # A str is also a Sequence[str], so mypy flags the two overloads as overlapping; the first match wins (a str
    # gets list[Hit]), which is what search does at run time, as typeshed does for the same str / Sequence[str] case.
    @overload
    def search(self, query: str, k: int = 10) -> list[Hit]: ...  # type: ignore[overload-overlap]

    @overload
    def search(self, query: Sequence[str], k: int = 10) -> list[list[Hit]]: ...

    def search(self, query: str | Sequence[str], k: int = 10) -> list[Hit] | list[list[Hit]]:
        """The ``k`` indexed files most similar to ``query`` (a text, or a list of texts: one list per text)."""
        from dcase.evaluation.retrieval import ensemble_similarity, top_k

        if self.collection is None:
            raise InputError("nothing is indexed: call index(files_or_folder) (CLI: dcase index) first")
        single = isinstance(query, str)
        texts = [query] if isinstance(query, str) else list(query)
        if not texts or any(not str(t).strip() for t in texts):
            raise InputError("search queries must be non-empty texts")
        coll = self.collection
        k = min(int(k), len(coll))
        if k < 1:
            raise InputError("k must be >= 1")
        text = self.embed_text(texts)
        if len(self.models) == 1:
            scores, items = coll.indexes[0].search(text[0], k)
        else:
            sim = ensemble_similarity([t @ e.T for t, e in zip(text, coll.embeddings, strict=True)])
            items = top_k(sim, k)
            scores = np.take_along_axis(sim, items, axis=1)
        out = [
            [Hit(coll.files[j], float(s)) for s, j in zip(sc, it, strict=True) if j >= 0]
            for sc, it in zip(scores, items, strict=True)
        ]
        return out[0] if single else out


@dataclass
class FileKey:
    """The identity of an indexed file: absolute path, size, modification time (ns) and content sha256."""

    path: str
    size: int
    mtime_ns: int
    sha256: str


class AudioCollection:
    """Embeddings of a collection of audio files under each member retriever, with a faiss index each.

    On disk (``save``): ``collection.json`` (format, retriever source and weight fingerprints, ``max_seconds``,
    one ``FileKey`` per file) and ``members/<i>/`` (a ``dcase.evaluation.retrieval.AudioIndex`` whose clip ids are
    the file paths), written atomically as one folder.
    """

    def __init__(
        self,
        files: Sequence[FileKey],
        embeddings: Sequence[np.ndarray],
        fingerprints: Sequence[str],
        retriever: str,
        max_seconds: float | None,
        indexes: Sequence[Any] | None = None,
    ) -> None:
        from dcase.evaluation.retrieval import AudioIndex, IndexConfig

        self.keys = list(files)
        self.files = [k.path for k in self.keys]
        self.embeddings = [np.ascontiguousarray(e, dtype=np.float32) for e in embeddings]
        self.fingerprints, self.retriever, self.max_seconds = list(fingerprints), str(retriever), max_seconds
        for e in self.embeddings:
            if e.shape[0] != len(self.files):
                raise ValueError(f"{e.shape[0]} embeddings for {len(self.files)} files")
        self.indexes = (
            list(indexes)
            if indexes is not None
            else [AudioIndex(e, self.files, IndexConfig(use_gpu=False)) for e in self.embeddings]
        )

    def __len__(self) -> int:
        return len(self.files)

    @classmethod
    def build(
        cls,
        retriever: Retriever,
        files: Sequence[Path],
        old: AudioCollection | None,
        max_seconds: float | None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> AudioCollection:
        """Keys and embeddings of ``files``, reusing ``old``'s embeddings of unchanged files (``Retriever.index``)."""
        from types import SimpleNamespace

        from dcase.data.audio import AudioError, audio_info
        from dcase.features.embed import embed_rows
        from dcase.io import sha256_file

        cached = {k.path: (i, k) for i, k in enumerate(old.keys)} if old is not None else {}
        keys: list[FileKey] = []
        reuse: list[int | None] = []
        for f in files:
            st = f.stat()
            prev = cached.get(str(f))
            if prev is not None and (prev[1].size, prev[1].mtime_ns) == (st.st_size, st.st_mtime_ns):
                keys.append(prev[1])
                reuse.append(prev[0])
                continue
            digest = sha256_file(f)
            keys.append(FileKey(str(f), int(st.st_size), int(st.st_mtime_ns), digest))
            reuse.append(prev[0] if prev is not None and prev[1].sha256 == digest else None)
        todo = [i for i, r in enumerate(reuse) if r is None]
        log.info("%d files: %d embedded before, %d to embed", len(files), len(files) - len(todo), len(todo))
        rows, bad = [], set()
        for i in todo:
            try:
                duration, _ = audio_info(keys[i].path)
            except AudioError as e:  # one unreadable file does not stop a folder from being indexed
                log.warning("skipping %s", e)
                bad.add(i)
                continue
            rows.append(SimpleNamespace(clip_id=keys[i].path, audio_path=keys[i].path, duration_s=duration))
        if bad:
            keep = [i for i in range(len(keys)) if i not in bad]
            keys, reuse = [keys[i] for i in keep], [reuse[i] for i in keep]
            todo = [j for j, i in enumerate(keep) if reuse[j] is None]
            files = [files[i] for i in keep]
        reused = [(i, r) for i, r in enumerate(reuse) if r is not None]  # (new row, old row)
        embeddings = []
        for m, model in enumerate(retriever.models):
            emb = np.zeros((len(files), model.embed_dim), dtype=np.float32)
            if old is not None:
                emb[[i for i, _ in reused]] = old.embeddings[m][[r for _, r in reused]]
            if rows:
                emb[todo] = embed_rows(model, rows, batch_size, max_seconds, progress=progress)
            embeddings.append(emb)
        return cls(keys, embeddings, retriever.fingerprints(), retriever.origin, max_seconds)

    def check_models(self, retriever: Retriever) -> None:
        if retriever.fingerprints() != self.fingerprints:
            raise InputError(
                f"the index was built with other retriever weights ({self.retriever}); rebuild it with dcase index"
            )

    def save(self, path: str | Path) -> Path:
        from dcase.io import atomic_dir, atomic_write_text

        doc = {
            "format": COLLECTION_FORMAT,
            "format_version": 1,
            "retriever": self.retriever,
            "fingerprints": self.fingerprints,
            "max_seconds": self.max_seconds,
            "files": [dataclasses.asdict(k) for k in self.keys],
        }
        with atomic_dir(path) as tmp:
            for i, idx in enumerate(self.indexes):
                idx.save(tmp / "members" / str(i))
            atomic_write_text(tmp / COLLECTION_FILE, json.dumps(doc, indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> AudioCollection:
        from dcase.evaluation.retrieval import AudioIndex

        path = Path(path)
        if not (path / COLLECTION_FILE).is_file():
            raise MissingInputError(f"{path}: not an audio index (no {COLLECTION_FILE}); build one with dcase index")
        doc = json.loads((path / COLLECTION_FILE).read_text(encoding="utf-8"))
        if doc.get("format") != COLLECTION_FORMAT or doc.get("format_version") != 1:
            raise InputError(f"{path / COLLECTION_FILE}: not a {COLLECTION_FORMAT} version 1 file")
        keys = [FileKey(**k) for k in doc["files"]]
        indexes = [AudioIndex.load(path / "members" / str(i)) for i in range(len(doc["fingerprints"]))]
        for idx in indexes:
            if idx.clip_ids != [k.path for k in keys]:
                raise InputError(f"{path}: its member indexes do not match {COLLECTION_FILE}; rebuild it")
        return cls(
            keys,
            [idx.embeddings for idx in indexes],
            doc["fingerprints"],
            doc["retriever"],
            doc.get("max_seconds"),
            indexes,
        )
