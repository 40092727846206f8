"""The feature store: sharded safetensors files, an index, and a provenance record.

Layout of a store directory::

    provenance.json        what made the features (extractor, its config, checkpoint sha256, sample rate, hop,
                           n_codebooks, dcase version, manifest hash, kind "codec" | "embed")
    shards/*.safetensors   one tensor per clip, keyed by clip_id; each shard is written atomically; its header
                           metadata records when it was written and each clip's audio files (path, size,
                           mtime, sha256)
    index.json             clip_id -> {shard, key, shape, dtype, audio}; rebuilt from the shard headers at the end
    skipped.json           clips left out under --skip-bad, with the reason
    run/                   config.yaml + run.json of the extraction run

A killed job leaves only complete shards (plus at most a ``.tmp`` file): rerunning skips every clip found in a
shard whose audio is unchanged. A shard is flushed every ``shard_size`` clips or ``flush_seconds`` seconds,
whichever comes first, so a kill loses at most that much work. Adding features of a different provenance to a
store is refused, naming the differing fields.

Audio that changed after it was encoded (other size, or another sha256 when the size or mtime differ) is
re-extracted by the extractors (the newer shard's entry wins) and reported by ``verify_store``: a store never
serves features of audio that is no longer there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dcase.errors import InputError
from dcase.io import atomic_path, atomic_write_text, read_json, safetensors_header

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
INDEX = "index.json"
SHARDS = "shards"
SKIPPED = "skipped.json"
# Fields that may differ between runs adding to one store (they describe the run, not the features).
RUN_FIELDS = ("manifest_hash", "manifest_hashes", "created")


@runtime_checkable
class ShapedStore(Protocol):
    """A feature mapping that tells the shape of a clip's array without reading it (``FeatureStore``,
    ``StoreChain``); plain dicts (tests) do not, and their arrays are read instead."""

    def shape(self, clip_id: str) -> tuple[int, ...]: ...


@runtime_checkable
class RecordedStore(Protocol):
    """A feature mapping that records what made it: its folder and its ``provenance.json`` (``FeatureStore``)."""

    path: Path
    provenance: dict[str, Any]


def array_shape(store: Mapping[str, np.ndarray], clip_id: str) -> tuple[int, ...]:
    """The shape of ``store[clip_id]``, from the store's index when it has one."""
    return tuple(store.shape(clip_id)) if isinstance(store, ShapedStore) else tuple(np.shape(store[clip_id]))


class StoreError(InputError):
    """A store that is missing, corrupt, incomplete, or of a different provenance."""


class ProvenanceError(StoreError):
    """Features of a different provenance would be mixed into one store."""


class MissingFeatureError(StoreError, KeyError):
    """A clip that is not in the store(s). Also a ``KeyError``, as ``Mapping`` lookups require."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def provenance_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two provenance records, ignoring per-run fields."""
    out: list[str] = []
    for k in sorted((set(old) | set(new)) - set(RUN_FIELDS)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += [
                f"{k}.{s}: store has {a.get(s)!r}, this run has {b.get(s)!r}"
                for s in sorted(set(a) | set(b))
                if a.get(s) != b.get(s)
            ]
        else:
            out.append(f"{k}: store has {a!r}, this run has {b!r}")
    return out


def check_provenance(path: str | Path, provenance: Mapping[str, Any]) -> bool:
    """Raise ProvenanceError if ``path`` holds a store of another provenance. Returns True if one exists."""
    f = Path(path) / PROVENANCE
    if not f.is_file():
        if (Path(path) / SHARDS).is_dir() and any((Path(path) / SHARDS).glob("*.safetensors")):
            raise StoreError(f"{path}: has shards but no {PROVENANCE}; refusing to add to a store of unknown origin")
        return False
    old = read_json(f, "store provenance")
    diff = provenance_diff(old, provenance)
    if diff:
        raise ProvenanceError(
            f"{path}: refusing to add features of a different provenance to this store; differing fields:\n  "
            + "\n  ".join(diff)
            + "\nUse a new --out directory (or delete the old store)."
        )
    return True


def write_provenance(path: str | Path, provenance: Mapping[str, Any]) -> None:
    rec = {**provenance, "created": provenance.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Path(path).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path) / PROVENANCE, json.dumps(rec, indent=2, sort_keys=True))


def scan_shards(path: str | Path) -> dict[str, dict[str, Any]]:
    """clip_id -> {shard, key, shape, dtype, audio (when recorded)} from every shard's header; of a clip in several
    shards, the most recently written one. Corrupt shards raise StoreError."""
    out: dict[str, dict[str, Any]] = {}
    shard_dir = Path(path) / SHARDS
    if not shard_dir.is_dir():
        return out
    written: dict[str, int] = {}
    for shard in sorted(shard_dir.glob("*.safetensors")):
        try:
            header, meta = safetensors_header(shard)
            when = int(meta.get("written_ns", 0))
            audio = json.loads(meta.get("audio") or "{}")
        except (OSError, ValueError) as e:
            raise StoreError(f"{shard}: corrupt shard ({e}); delete it and rerun to re-extract its clips") from e
        for key, ent in header.items():
            if key in out and when <= written[key]:
                log.debug(
                    "%s: clip %r also in the newer or earlier %s; keeping that one", shard, key, out[key]["shard"]
                )
                continue
            # a clip in several shards: the most recently written entry (a re-extraction of changed audio) wins
            out[key] = {"shard": shard.name, "key": key, "shape": ent["shape"], "dtype": ent["dtype"]}
            if key in audio:
                out[key]["audio"] = audio[key]
            written[key] = when
    return out


def read_row_audio(row: Any) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Read each audio file of ``row`` (``row_audio_files``) once: (its bytes, to decode from memory; its
    fingerprint {path, size, mtime_ns, sha256 of those bytes}, recorded with the features)."""
    from dcase.data.audio import row_audio_files

    blobs: list[bytes] = []
    fingerprint: list[dict[str, Any]] = []
    for p in row_audio_files(row):
        st = os.stat(p)  # before reading: a file replaced meanwhile gets a newer mtime, so the next run re-hashes it
        with open(p, "rb") as f:
            data = f.read()
        blobs.append(data)
        sha = hashlib.sha256(data).hexdigest()
        fingerprint.append({"path": p, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha})
    return blobs, fingerprint


def audio_changed(recorded: Sequence[Mapping[str, Any]] | None, row: Any, full_hash: bool = False) -> str | None:
    """Why the audio of ``row`` differs from the ``recorded`` fingerprint, or None when it is the same (or nothing
    was recorded). A file with the recorded path, size and mtime is taken as unchanged unless ``full_hash``;
    otherwise its sha256 decides (a copied or touched file with the same bytes is unchanged)."""
    from dcase.data.audio import row_audio_files
    from dcase.io import sha256_file

    if not recorded:
        return None
    paths = row_audio_files(row)
    if len(paths) != len(recorded):
        return f"it was encoded from {len(recorded)} audio file(s), the manifest now lists {len(paths)}"
    for rec, p in zip(recorded, paths, strict=True):
        try:
            st = os.stat(p)
        except OSError:
            return f"{p} is missing"
        if st.st_size != rec.get("size"):
            return f"{p} changed size ({rec.get('size')} -> {st.st_size} bytes)"
        if not full_hash and p == rec.get("path") and st.st_mtime_ns == rec.get("mtime_ns"):
            continue
        if sha256_file(p) != rec.get("sha256"):
            return f"{p} has other content (sha256 differs from the encoded file's)"
    return None


def _host_tag() -> str:
    return "".join(c for c in socket.gethostname() if c.isalnum())[:16] or "host"


_TMP_SHARD = re.compile(r"^\.part-r\d+-\d+-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]+-\d+\.safetensors\..*\.tmp$")


def remove_stale_tmp(path: str | Path) -> list[Path]:
    """Delete the half-written shard files (``.part-....tmp``) left in ``path/shards`` by killed writers: those of
    this host whose process is gone. A live writer's file, or another host's, is never touched. Returns them."""
    removed: list[Path] = []
    shard_dir = Path(path) / SHARDS
    if not shard_dir.is_dir():
        return removed
    host = _host_tag()
    for f in shard_dir.glob(".part-*.tmp"):
        m = _TMP_SHARD.match(f.name)
        if m is None or m["host"] != host:
            continue
        try:
            os.kill(int(m["pid"]), 0)
            continue  # the writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, another user's
            continue
        f.unlink(missing_ok=True)
        removed.append(f)
    if removed:
        log.info("%s: removed %d half-written shard file(s) of killed runs", shard_dir, len(removed))
    return removed


class ShardWriter:
    """Buffers clip features and writes them as atomic safetensors shards: every ``shard_size`` clips, or as soon
    as the oldest buffered clip has waited ``flush_seconds`` (None: no time limit), whichever comes first."""

    def __init__(
        self, path: str | Path, rank: int = 0, shard_size: int = 256, flush_seconds: float | None = None
    ) -> None:
        if shard_size < 1:
            raise StoreError(f"shard size must be >= 1 clip, got {shard_size}")
        if flush_seconds is not None and flush_seconds <= 0:
            raise StoreError(f"flush interval must be > 0 seconds, got {flush_seconds}")
        self.dir = Path(path) / SHARDS
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.shard_size = shard_size
        self.flush_seconds = flush_seconds
        self.buffer: dict[str, np.ndarray] = {}
        self.audio: dict[str, list[dict[str, Any]]] = {}
        self.first_at: float | None = None
        # unique per writer: a rerun in the same process and second must never overwrite a finished shard
        # host and pid in the name: remove_stale_tmp can tell a dead writer's leftovers from a live one's
        when = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        self.stamp = f"{when}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.n_shards = 0
        self.n_written = 0

    def add(self, clip_id: str, array: np.ndarray, audio: list[dict[str, Any]] | None = None) -> None:
        """Buffer one clip's features (``audio``: its ``read_row_audio`` fingerprint); flush when a limit is reached."""
        if clip_id in self.buffer:
            raise StoreError(f"clip {clip_id!r} added twice")
        self.buffer[clip_id] = np.ascontiguousarray(array)
        if audio is not None:
            self.audio[clip_id] = audio
        if self.first_at is None:
            self.first_at = time.monotonic()
        if len(self.buffer) >= self.shard_size or (
            self.flush_seconds is not None and time.monotonic() - self.first_at >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        from safetensors.numpy import save_file

        name = f"part-r{self.rank:03d}-{self.stamp}-{self.n_shards:05d}.safetensors"
        if (self.dir / name).exists():
            raise StoreError(f"{self.dir / name}: shard exists; refusing to overwrite finished features")
        meta = {
            "rank": str(self.rank),
            "n": str(len(self.buffer)),
            "written_ns": str(time.time_ns()),
            "audio": json.dumps(self.audio, sort_keys=True),
        }
        with atomic_path(self.dir / name) as tmp:
            save_file(self.buffer, str(tmp), metadata=meta)
        self.n_shards += 1
        self.n_written += len(self.buffer)
        self.buffer, self.audio, self.first_at = {}, {}, None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def finalize_store(path: str | Path, provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild ``index.json`` from the shard headers (atomically); optionally refresh provenance. Returns index."""
    path = Path(path)
    index = scan_shards(path)
    atomic_write_text(path / INDEX, json.dumps(index, indent=1, sort_keys=True))
    if provenance is not None:
        old = read_json(path / PROVENANCE, "store provenance") if (path / PROVENANCE).is_file() else {}
        hashes = list(old.get("manifest_hashes", []))
        if provenance.get("manifest_hash") and provenance["manifest_hash"] not in hashes:
            hashes.append(provenance["manifest_hash"])
        write_provenance(path, {**old, **provenance, "manifest_hashes": hashes, "created": old.get("created")})
    return index


class FeatureStore(Mapping[str, np.ndarray]):
    """Read-only view of a store: ``store[clip_id]`` -> codec int16 [K, T] or embedding float32 [D]."""

    def __init__(self, path: Path, provenance: dict[str, Any], index: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.provenance = provenance
        self.index = index
        self._handles: dict[str, Any] = {}

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        path = Path(path)
        if not path.is_dir():
            raise StoreError(f"feature store not found: {path}")
        if not (path / PROVENANCE).is_file():
            raise StoreError(f"{path}: not a feature store (no {PROVENANCE})")
        if not (path / INDEX).is_file():
            raise StoreError(f"{path}: no {INDEX}: the extraction did not finish; rerun the same command to resume")
        try:
            provenance = read_json(path / PROVENANCE, "store provenance")
            index = read_json(path / INDEX, "store index")
        except InputError as e:
            raise StoreError(f"{e}; rerun the extraction command to rebuild it") from e
        return cls(path, provenance, index)

    @property
    def kind(self) -> str:
        return str(self.provenance.get("kind"))

    def shape(self, clip_id: str) -> tuple[int, ...]:
        return tuple(self.index[clip_id]["shape"])

    def __getitem__(self, clip_id: str) -> np.ndarray:
        ent = self.index.get(clip_id)
        if ent is None:
            raise MissingFeatureError(f"clip {clip_id!r} is not in feature store {self.path}")
        h = self._handles.get(ent["shard"])
        if h is None:
            from safetensors import safe_open

            shard = self.path / SHARDS / ent["shard"]
            try:
                h = safe_open(str(shard), framework="np")
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise StoreError(f"{shard}: cannot open shard ({e})") from e
            self._handles[ent["shard"]] = h
        return h.get_tensor(ent["key"])

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, kind={self.kind!r}, clips={len(self)})"


def verify_store(store: FeatureStore | str | Path, manifest: Any) -> dict[str, Any]:
    """Check a store against a manifest (DataFrame or path). Raises StoreError listing every problem.

    Every manifest clip must be present, or listed in skipped.json; codec entries must be int16
    [n_codebooks, T] with T within 1 frame of duration * frame rate (mixup rows: at least the longer source)
    and codes in [0, codebook_size); embed entries float32 [D] and finite; the audio files must still be the
    ones that were encoded (size and sha256 against the recorded fingerprint; entries of older stores without
    one are counted as ``audio_unchecked``). Returns a summary dict.
    """
    from dcase.data.manifest import frame_rows, read_manifest

    if not isinstance(store, FeatureStore):
        store = FeatureStore.open(store)
    df = manifest if not isinstance(manifest, (str, Path)) else read_manifest(manifest)
    prov = store.provenance
    skipped = {}
    if (store.path / SKIPPED).is_file():
        skipped = {s["clip_id"]: s["reason"] for s in read_json(store.path / SKIPPED, "skip report")}
    problems: list[str] = []
    n_ok = unchecked = 0
    kind = prov.get("kind")
    for row in frame_rows(df):
        cid = row.clip_id
        if cid not in store.index:
            if cid in skipped:
                continue
            problems.append(f"{cid!r}: missing")
            continue
        recorded = store.index[cid].get("audio")
        unchecked += recorded is None
        why = audio_changed(recorded, row, full_hash=True)
        if why:
            problems.append(f"{cid!r}: its audio changed after it was encoded ({why}); rerun dcase extract")
            continue
        x = store[cid]
        if kind == "codec":
            k = int(prov["n_codebooks"])
            if x.dtype != np.int16 or x.ndim != 2 or x.shape[0] != k:
                problems.append(f"{cid!r}: expected int16 [{k}, T], got {x.dtype} {list(x.shape)}")
                continue
            rate = prov["sample_rate"] / prov["hop"]
            expect = float(row.duration_s) * rate
            lo = math.floor(expect) - 1
            if x.shape[1] < lo or (row.source != "clotho_mixup" and x.shape[1] > math.ceil(expect) + 1):
                problems.append(f"{cid!r}: {x.shape[1]} frames, expected ~{expect:.1f} for {row.duration_s:.3f} s")
            cb = int(prov.get("extractor_config", {}).get("codebook_size", 1 << 15))
            if x.size and (x.min() < 0 or x.max() >= cb):
                problems.append(f"{cid!r}: codes outside [0, {cb})")
        else:
            d = prov.get("embed_dim")
            if x.dtype != np.float32 or x.ndim != 1 or (d is not None and x.shape[0] != int(d)):
                problems.append(f"{cid!r}: expected float32 [{d}], got {x.dtype} {list(x.shape)}")
                continue
            if not np.isfinite(x).all():
                problems.append(f"{cid!r}: contains NaN or inf")
        n_ok += 1
    if problems:
        raise StoreError(
            f"{store.path}: {len(problems)} problem(s) against the manifest ({len(df)} clips):\n  "
            + "\n  ".join(problems[:30])
            + ("\n  ..." if len(problems) > 30 else "")
        )
    return {
        "clips": len(df),
        "ok": n_ok,
        "skipped": len([c for c in df["clip_id"] if c in skipped]),
        "extra_in_store": len(set(store.index) - set(df["clip_id"])),
        "audio_unchecked": unchecked,
    }


# ------------------------------------------------------------------------------------------ several stores
class StoreChain(Mapping[str, np.ndarray]):
    """Several feature stores (or dicts) seen as one mapping; the first store holding a clip wins."""

    def __init__(self, stores: Sequence[Mapping[str, np.ndarray]], names: Sequence[str] | None = None) -> None:
        self.stores = list(stores)
        self.names = list(names) if names is not None else [repr(s)[:60] for s in self.stores]

    @classmethod
    def open(cls, paths: Sequence[str | Path]) -> StoreChain:
        return cls([FeatureStore.open(p) for p in paths], [str(p) for p in paths])

    def holder(self, key: str) -> Mapping[str, np.ndarray] | None:
        """The first store holding ``key``, or None."""
        for s in self.stores:
            if key in s:
                return s
        return None

    def __getitem__(self, key: str) -> np.ndarray:
        s = self.holder(key)
        if s is None:
            raise MissingFeatureError(f"clip {key!r} is in none of the feature stores {self.names}")
        return s[key]

    def shape(self, key: str) -> tuple[int, ...]:
        s = self.holder(key)
        if s is None:
            raise MissingFeatureError(f"clip {key!r} is in none of the feature stores {self.names}")
        return array_shape(s, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.holder(key) is not None

    def __iter__(self) -> Iterator[str]:
        seen: set[str] = set()
        for s in self.stores:
            for k in s:
                if k not in seen:
                    seen.add(k)
                    yield k

    def __len__(self) -> int:
        return sum(1 for _ in self)


def check_coverage(df: Any, codes: Mapping[str, np.ndarray], embeds: Mapping[str, np.ndarray], where: str) -> None:
    """Every clip of ``df`` must be in both stores; raises StoreError naming the missing clips."""
    for name, store in (("codec", codes), ("embedding", embeds)):
        missing = [c for c in df["clip_id"] if c not in store]
        if missing:
            raise StoreError(
                f"{where}: {len(missing)} clip(s) have no {name} features, e.g. {missing[:5]}; "
                f"run `dcase extract` for them"
            )


def store_sizes(stores: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The model sizes a store (or ``StoreChain``) records in its provenance: codec stores give ``n_codebooks`` and
    ``codebook_size``, embedding stores ``clip_dim``. Empty for plain mappings (tests); stores that disagree are a
    ``StoreError`` naming them."""
    parts = stores.stores if isinstance(stores, StoreChain) else [stores]
    found: dict[str, dict[int, list[str]]] = {}
    for s in parts:
        if not isinstance(s, RecordedStore) or not s.provenance:
            continue
        prov = s.provenance
        if prov.get("kind") == "codec":
            extractor = prov.get("extractor_config") or {}
            pairs = {"n_codebooks": prov.get("n_codebooks"), "codebook_size": extractor.get("codebook_size")}
        elif prov.get("kind") == "embed":
            pairs = {"clip_dim": prov.get("embed_dim")}
        else:
            continue
        for k, v in pairs.items():
            if v is None:  # a store that does not record this size
                continue
            found.setdefault(k, {}).setdefault(int(v), []).append(str(s.path))
    bad = {k: v for k, v in found.items() if len(v) > 1}
    if bad:
        raise StoreError(f"the feature stores disagree on {bad}")
    return {k: next(iter(v)) for k, v in found.items()}
