"""The one training loop (Hugging Face Accelerate), shared by the captioner and the retriever.

A stage describes *what* to train with a ``TrainTask`` (model, dataset, collate, loss, evaluation, saving);
``fit(task, cfg)`` does the rest the same way for every stage:

- AdamW (betas, weight decay; no decay on biases and LayerNorm/1-D parameters), gradient accumulation,
  gradient clipping, bf16/fp16 autocast (``mixed_precision``; fp16 needs a GPU, bf16 also runs on CPU);
- the inverse-square-root schedule with linear warm-up of the EnCLAP paper (ICASSP 2024, §3.1), see
  ``inverse_sqrt_lambda`` for the exact formula;
- length-bucketed batches (``BucketBatchSampler``), deterministic for (seed, epoch), sharded over processes;
- a progress bar and JSONL logs (``train_log.jsonl``: loss, lr, samples/s; evaluation metrics), the same records
  sent to Accelerate's experiment trackers (``report_to``: TensorBoard by default when it is installed, under
  ``trackers/``), and ``curves.png`` drawn from the log when the run ends (``dcase.curves``; ``dcase plot``);
- evaluation every ``eval_every`` updates, the best ``keep_best`` model checkpoints by ``metric_for_best``
  plus ``last``;
- exact resume: ``state/`` holds the model and optimiser (safetensors), scheduler, RNG states of every process
  and the data position (epoch, batch in epoch) as JSON. Rerunning ``fit`` with the same ``output_dir``
  continues from it and sees the same batches as an uninterrupted run (bit-exact on CPU). The state records
  the whole stage config; resuming with a config that differs outside ``SAFE_RESUME_KEYS`` (when to stop,
  evaluate, save, log; data-loader workers) is refused with the list of changed keys (``ResumeError``).

Run it on one CPU, or on many GPUs/nodes with ``accelerate launch`` (or ``torchrun``): the global batch is
``batch_size * num_processes * grad_accum``.

Layout of ``output_dir``::

    config.yaml, run.json      resolved config and run info (``write_run_info``)
    stage_config.yaml          the whole stage config (when ``fit`` is given it)
    train_log.jsonl            one JSON record per log / evaluation
    curves.png                 loss, learning rate, samples/s and validation metrics (written at the end)
    trackers/dcase/            TensorBoard event files (when TensorBoard is a tracker)
    state/                     resume state (model.safetensors, optimizer.safetensors, trainer.json, rng_*.json)
    checkpoints/step-000123/   best checkpoints (``task.save_model``), at most ``keep_best``
    last/                      the final model
    best.json                  the ranking of kept checkpoints
    best -> checkpoints/...    a link to the best checkpoint (``last`` when nothing was evaluated)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import yaml
from safetensors.torch import save_file, save_model

from dcase.checkpoint import load_safetensors_into, read_safetensors
from dcase.config import ConfigError, check_values, to_dict, write_run_info
from dcase.errors import CheckpointError, DcaseError, InputError
from dcase.io import atomic_write_text, check_output, read_json

log = logging.getLogger(__name__)

STATE_DIR = "state"
LOG_FILE = "train_log.jsonl"
DEFAULT_TIMESCALE = 10_000
STAGE_CONFIG = "stage_config.yaml"
# Config keys (dotted, in the stage config) that may change when a run is resumed: they do not change what the
# resumed run computes, only when it stops, how often it evaluates / saves / logs, and how data is loaded.
# Anything else differing from the saved state refuses the resume (docs/errors.md).
SAFE_RESUME_KEYS: frozenset[str] = frozenset(
    {
        "train.max_steps",
        "train.max_epochs",
        "train.eval_every",
        "train.save_every",
        "train.log_every",
        "train.num_workers",
        "train.keep_best",
        "train.output_dir",
        "eval_batch_size",
        "data.cache_audio",
    }
)


class ResumeError(InputError):
    """A run folder holds the state of a run with another config (or process count); it is not resumed."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested config dicts; a key
    present in only one of them has ``None`` on the other side."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


@dataclass
class TrainConfig:
    """Optimisation settings shared by every stage (one section ``train:`` of a stage config)."""

    output_dir: str = "runs/train"
    seed: int = 0
    max_steps: int = field(default=1000, metadata={"min": 1})  # optimiser updates
    max_epochs: float | None = field(default=None, metadata={"gt": 0})  # stop at whichever of the two comes first
    batch_size: int = field(default=8, metadata={"min": 1})  # per process, per micro-batch
    grad_accum: int = field(default=1, metadata={"min": 1})
    lr: float = field(default=1e-4, metadata={"gt": 0})  # peak learning rate
    warmup_steps: int = field(default=0, metadata={"min": 0})
    lr_timescale: int | None = field(default=None, metadata={"min": 1})  # None = warmup_steps, or 10000 without
    weight_decay: float = field(default=0.01, metadata={"min": 0})
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"min": 0, "lt": 1})
    eps: float = field(default=1e-8, metadata={"gt": 0})
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    mixed_precision: str = field(default="no", metadata={"choices": ("no", "bf16", "fp16")})  # fp16: GPU only
    eval_every: int = field(default=500, metadata={"min": 0})  # 0 = only at the end
    save_every: int = field(default=500, metadata={"min": 0})  # resume-state interval; 0 = only at the end
    keep_best: int = field(default=3, metadata={"min": 1})
    metric_for_best: str = "loss"
    greater_is_better: bool = False
    log_every: int = field(default=10, metadata={"min": 1})
    num_workers: int = field(default=0, metadata={"min": 0})
    bucket_size: int = field(default=50, metadata={"min": 0})  # batches per length-sorted bucket; 0 = no bucketing
    find_unused_parameters: bool = False  # DDP option for models with parameters unused by the loss
    # experiment trackers (Accelerate): auto = TensorBoard when the tensorboard package is installed, else none;
    # none; all (every installed one); or names separated by commas (tensorboard, wandb, mlflow, comet_ml, aim, ...)
    report_to: str = "auto"


ModelT = TypeVar("ModelT", bound=torch.nn.Module)


class TrainTask(Protocol[ModelT]):
    """What a stage provides to ``fit``. ``loss`` must call ``model(...)`` (the DDP-wrapped forward); ``evaluate``
    and ``save_model`` get the unwrapped model that ``build_model`` made."""

    def build_model(self) -> ModelT: ...
    def train_dataset(self) -> torch.utils.data.Dataset: ...
    def collate(self, items: list) -> dict[str, torch.Tensor]: ...
    def item_lengths(self) -> list[int] | None: ...
    def loss(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model: ModelT, accelerator: Any) -> dict[str, float]: ...
    def save_model(self, model: ModelT, path: Path) -> None: ...


@runtime_checkable
class EpochAware(Protocol):
    """A dataset whose random choices depend on the epoch (seeded with (seed, epoch, index))."""

    def set_epoch(self, epoch: int) -> None: ...


# ----------------------------------------------------------------------------------------------- trackers
def resolve_trackers(report_to: str | None) -> list[str]:
    """The Accelerate tracker names of a ``report_to`` setting (see ``TrainConfig.report_to``). A tracker that is
    asked for by name but not installed is a ConfigError; ``auto`` without TensorBoard gives none, logged once."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    names = [n.strip().lower() for n in str(report_to or "none").split(",") if n.strip()]
    available = [str(LoggerType(t).value) for t in get_available_trackers()]
    builtin = {str(t.value) for t in LoggerType}
    if names in ([], ["none"]):
        return []
    if names == ["auto"]:
        if "tensorboard" in available:
            return ["tensorboard"]
        log.info(
            "no experiment tracker: the tensorboard package is not installed (pip install tensorboard, or set "
            "train.report_to / --report-to to wandb, mlflow, ...); curves.png is drawn from train_log.jsonl"
        )
        return []
    if "all" in names:
        return available
    unknown = [n for n in names if n not in builtin and n not in LOGGER_TYPE_TO_CLASS]
    if unknown:
        raise ConfigError(
            f"report_to: unknown tracker(s) {unknown}; use auto, none, all or names among {sorted(builtin - {'all'})}"
        )
    missing = [n for n in names if n in builtin and n not in available]
    if missing:
        raise ConfigError(f"report_to: {missing} not installed here (pip install {' '.join(missing)}); or use auto")
    return names


def _tracker_config(cfg: TrainConfig) -> dict[str, Any]:
    """The run's settings as tracker hyper-parameters (scalars; anything else as text)."""
    from dataclasses import asdict

    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in asdict(cfg).items()}


# ----------------------------------------------------------------------------------------------- schedule
def inverse_sqrt_lambda(warmup_steps: int, timescale: int | None = None) -> Callable[[int], float]:
    """Learning-rate multiplier for optimiser update ``s = 0, 1, 2, ...`` (the lr used by the s-th update).

    - warm-up ``W > 0``: ``(s + 1) / W`` for ``s < W``, so update ``W - 1`` uses the peak;
    - then ``sqrt(tau / (tau + k))`` where ``k`` counts the updates since the peak update (``k = s - W + 1``;
      without warm-up ``k = s``, so update 0 uses the peak);
    - ``tau = timescale``, or ``W`` with warm-up (the classic ``sqrt(W / (s + 1))``), or 10000 without
      warm-up (the Hugging Face ``inverse_sqrt`` convention; the papers do not give it).
    """
    tau = float(timescale or (warmup_steps if warmup_steps > 0 else DEFAULT_TIMESCALE))
    peak_update = max(warmup_steps - 1, 0)

    def fn(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        return math.sqrt(tau / (tau + s - peak_update))

    return fn


# ------------------------------------------------------------------------------------------------ batches
class BucketBatchSampler:
    """Batches of dataset indices for one process, grouped by similar length.

    For epoch ``e`` a generator seeded with ``(seed, e)`` shuffles all indices; consecutive chunks of
    ``bucket_size`` global batches are sorted by length and cut into global batches of
    ``batch_size * num_replicas`` (so padding is small); the global batches are shuffled and process ``rank``
    takes its slice of each. Indices wrap around (cyclically, even when the dataset is smaller than a global batch),
    so every process gets the same number of full batches.
    Deterministic for (seed, epoch); ``start_batch`` skips batches already consumed (exact resume).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        lengths: Sequence[int] | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        bucket_size: int = 50,
    ) -> None:
        if n_items <= 0:
            raise InputError("the training dataset is empty")
        if lengths is not None and len(lengths) != n_items:
            raise ValueError(f"item_lengths() gave {len(lengths)} lengths for {n_items} items")
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        self.num_replicas, self.rank, self.bucket_size = num_replicas, rank, bucket_size
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        g = self.batch_size * self.num_replicas
        return math.ceil(self.n_items / g)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """All global batches of ``epoch`` (each ``batch_size * num_replicas`` indices)."""
        g = self.batch_size * self.num_replicas
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(self.n_items)
        total = len(self) * g
        perm = np.resize(perm, total)  # wrap around (cyclically, however small the dataset): full batches
        if self.lengths is not None and self.bucket_size > 0:
            chunk = g * self.bucket_size
            parts = []
            for i in range(0, total, chunk):
                part = perm[i : i + chunk]
                parts.append(part[np.argsort(-self.lengths[part], kind="stable")])
            perm = np.concatenate(parts)
        batches = [perm[i : i + g] for i in range(0, total, g)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        for gb in self.global_batches(self.epoch)[self.start_batch :]:
            yield gb[self.rank * self.batch_size : (self.rank + 1) * self.batch_size].tolist()


# -------------------------------------------------------------------------------------------- state files
def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True: (name, keys, pos, has_gauss, cached_gaussian)
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))


@dataclass
class _Progress:
    step: int = 0  # optimiser updates done
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of `epoch` already consumed
    samples: int = 0
    best: list | None = None  # [[metric, step, path], ...] best first

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "samples": self.samples,
            "best": self.best or [],
        }


# ---------------------------------------------------------------------------------------------------- fit
def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch: dict) -> int:
    for v in batch.values():
        if torch.is_tensor(v) and v.ndim > 0:
            return int(v.shape[0])
    return 0


class _Trainer:
    def __init__(self, task: TrainTask, cfg: TrainConfig, run_config: Any = None) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, set_seed

        check_values(cfg, "train")  # a config built in code is checked like a YAML one
        self.task, self.cfg = task, cfg
        self.out = check_output(cfg.output_dir, overwrite=True, kind="folder")  # a run folder is resumed
        # the whole stage config (JSON form), saved with the state: a resume must be of the same run
        self.stage_config = run_config
        self.run_config = json.loads(
            json.dumps(to_dict(run_config) if run_config is not None else {"train": to_dict(cfg)})
        )
        mp = cfg.mixed_precision
        if not torch.cuda.is_available() and mp == "fp16":
            log.warning("fp16 needs a GPU; training in fp32 on CPU (bf16 autocast works on CPU)")
            mp = "no"
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mp:
            # a second fit() in the same process (e.g. pretrain then finetune) with another precision: Accelerate
            # keeps one global state; drop it but keep the process group (PartialState)
            AcceleratorState._reset_state(reset_partial_state=False)
        from accelerate.utils import ProjectConfiguration

        trackers = resolve_trackers(cfg.report_to)
        self.acc = Accelerator(
            cpu=not torch.cuda.is_available(),  # without it, torchrun on CPU gives one process (no gloo)
            mixed_precision=mp,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)],
            log_with=trackers or None,
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "trackers")),
        )
        set_seed(cfg.seed)
        model = task.build_model()
        self.dataset = task.train_dataset()
        if not isinstance(self.dataset, Sized):
            raise TypeError(f"{type(task).__name__}.train_dataset() must return a dataset with a length")
        lengths = task.item_lengths()
        self.sampler = BucketBatchSampler(
            len(self.dataset),
            cfg.batch_size,
            lengths,
            seed=cfg.seed,
            num_replicas=self.acc.num_processes,
            rank=self.acc.process_index,
            bucket_size=cfg.bucket_size,
        )
        opt = torch.optim.AdamW(
            _param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps
        )
        self.model, self.opt = self.acc.prepare(model, opt)
        # not prepared: Accelerate would step it once per process
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, inverse_sqrt_lambda(cfg.warmup_steps, cfg.lr_timescale)
        )
        self.prog = _Progress(best=[])

    # ------------------------------------------------------------------ state
    @property
    def state_dir(self) -> Path:
        return self.out / STATE_DIR

    def save_state(self) -> None:
        """Write ``state/`` atomically: into ``state.tmp``, then swap (``state.old`` kept until done)."""
        tmp, old = self.out / f"{STATE_DIR}.tmp", self.out / f"{STATE_DIR}.old"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.acc.wait_for_everyone()
        rng_t, rng_m = _rng_state()
        save_file(rng_t, str(tmp / f"rng_{self.acc.process_index}.safetensors"))
        atomic_write_text(tmp / f"rng_{self.acc.process_index}.json", json.dumps(rng_m))
        if self.acc.is_main_process:
            save_model(self.acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
            opt_t, opt_m = _optimizer_to_files(self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt)
            save_file(opt_t, str(tmp / "optimizer.safetensors"))
            trainer = {
                "progress": self.prog.to_dict(),
                "scheduler": self.sched.state_dict(),
                "optimizer": opt_m,
                "num_processes": self.acc.num_processes,
                "config": self.run_config,
            }
            if self.acc.scaler is not None:
                trainer["scaler"] = self.acc.scaler.state_dict()
            atomic_write_text(tmp / "trainer.json", json.dumps(trainer))
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            shutil.rmtree(old, ignore_errors=True)
            if self.state_dir.exists():
                os.replace(self.state_dir, old)
            os.replace(tmp, self.state_dir)
            shutil.rmtree(old, ignore_errors=True)
        self.acc.wait_for_everyone()

    def check_resume(self, state_dir: Path, saved: Mapping[str, Any] | None) -> None:
        """Refuse to resume a run whose saved config differs from this one outside ``SAFE_RESUME_KEYS``."""
        if saved is None:
            log.warning("%s: saved without its config (older dcase); the resume cannot be checked", state_dir)
            return
        diff = config_diff(saved, self.run_config)
        unsafe = [d for d in diff if d[0] not in SAFE_RESUME_KEYS]
        if unsafe:
            shown = "; ".join(f"{k}: the run has {a!r}, this command has {b!r}" for k, a, b in unsafe[:20])
            more = f" (and {len(unsafe) - 20} more)" if len(unsafe) > 20 else ""
            raise ResumeError(
                f"{self.out}: refusing to resume a run with a changed config: {shown}{more}. Use a new "
                f"train.output_dir, or give the run's own values back; only {sorted(SAFE_RESUME_KEYS)} may change "
                "on resume"
            )
        for k, a, b in diff:
            log.info("resume: %s changed from %r to %r (a safe change)", k, a, b)

    def load_state(self) -> bool:
        d = self.state_dir
        if not (d / "trainer.json").exists() and (self.out / f"{STATE_DIR}.old" / "trainer.json").exists():
            d = self.out / f"{STATE_DIR}.old"  # killed between the two renames
        if not (d / "trainer.json").exists():
            return False
        trainer = read_json(d / "trainer.json", "training state")
        self.check_resume(d, trainer.get("config"))
        if trainer["num_processes"] != self.acc.num_processes:
            raise ResumeError(
                f"{d}: saved with {trainer['num_processes']} processes, resuming with "
                f"{self.acc.num_processes}; the data order would differ"
            )
        dev = str(self.acc.device)
        load_safetensors_into(self.acc.unwrap_model(self.model), d / "model.safetensors", dev)
        inner = self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt
        try:
            _optimizer_from_files(inner, read_safetensors(d / "optimizer.safetensors", dev), trainer["optimizer"])
        except (KeyError, ValueError, RuntimeError) as e:
            if isinstance(e, DcaseError):
                raise
            raise CheckpointError(f"{d}: the optimiser state does not fit this model ({e})") from e
        self.sched.load_state_dict(trainer["scheduler"])
        if self.acc.scaler is not None and "scaler" in trainer:
            self.acc.scaler.load_state_dict(trainer["scaler"])
        p = trainer["progress"]
        self.prog = _Progress(p["step"], p["epoch"], p["batch_in_epoch"], p["samples"], p["best"])
        rank = self.acc.process_index
        _set_rng_state(
            read_safetensors(d / f"rng_{rank}.safetensors"), read_json(d / f"rng_{rank}.json", "training state")
        )
        log.info(
            "resumed from %s at update %d (epoch %d, batch %d)",
            d,
            self.prog.step,
            self.prog.epoch,
            self.prog.batch_in_epoch,
        )
        return True

    # ------------------------------------------------------------ checkpoints
    def _log(self, record: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            with open(self.out / LOG_FILE, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.acc.trackers:
                values = {
                    k: float(v)
                    for k, v in record.items()
                    if k != "step" and isinstance(v, int | float) and math.isfinite(float(v))
                }
                self.acc.log(values, step=int(record["step"]))

    def evaluate_and_keep(self) -> None:
        cfg = self.cfg
        model = self.acc.unwrap_model(self.model)
        model.eval()
        with torch.no_grad():
            metrics = dict(self.task.evaluate(model, self.acc))
        model.train()
        self._log({"step": self.prog.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        log.info("update %d eval: %s", self.prog.step, metrics)
        if cfg.metric_for_best not in metrics or metrics[cfg.metric_for_best] is None:
            if metrics:
                log.warning("metric_for_best %r not among evaluation metrics %s", cfg.metric_for_best, sorted(metrics))
            return
        value = float(metrics[cfg.metric_for_best])
        best = list(self.prog.best or [])
        sign = -1.0 if cfg.greater_is_better else 1.0
        if len(best) >= cfg.keep_best and sign * value >= sign * best[-1][0]:
            return
        path = self.out / "checkpoints" / f"step-{self.prog.step:06d}"
        if self.acc.is_main_process:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.task.save_model(model, tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        best.append([value, self.prog.step, str(path)])
        best.sort(key=lambda r: (sign * r[0], r[1]))
        for _, _, p in best[cfg.keep_best :]:
            if self.acc.is_main_process:
                shutil.rmtree(p, ignore_errors=True)
        self.prog.best = best[: cfg.keep_best]
        if self.acc.is_main_process:
            atomic_write_text(
                self.out / "best.json",
                json.dumps(
                    {
                        "metric": cfg.metric_for_best,
                        "greater_is_better": cfg.greater_is_better,
                        "checkpoints": [{"value": v, "step": s, "path": p} for v, s, p in self.prog.best],
                    },
                    indent=2,
                ),
            )
        self.acc.wait_for_everyone()

    def save_last(self) -> Path:
        path = self.out / "last"
        if self.acc.is_main_process:
            tmp = self.out / "last.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.task.save_model(self.acc.unwrap_model(self.model), tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        self.acc.wait_for_everyone()
        return path

    # -------------------------------------------------------------------- run
    def micro_batches(self) -> Iterator[dict]:
        """Endless micro-batches from the saved data position, advancing ``prog.epoch/batch_in_epoch``."""
        while True:
            self.sampler.set_epoch(self.prog.epoch, self.prog.batch_in_epoch)
            if isinstance(self.dataset, EpochAware):
                self.dataset.set_epoch(self.prog.epoch)
            loader = torch.utils.data.DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.task.collate,
                num_workers=self.cfg.num_workers,
                generator=torch.Generator().manual_seed(self.cfg.seed + self.prog.epoch),  # keeps global RNG
            )
            for batch in loader:
                self.prog.batch_in_epoch += 1
                yield batch
            self.prog.epoch += 1
            self.prog.batch_in_epoch = 0

    def accumulate(self, batches: Iterator[dict], window: dict[str, list[float]]) -> None:
        """The ``grad_accum`` micro-batches of one update: forward, backward (gradients synchronised on the last
        one only), and their losses appended to ``window``."""
        cfg, acc, model = self.cfg, self.acc, self.model
        for i in range(cfg.grad_accum):
            batch = _to_device(next(batches), acc.device)
            sync = contextlib.nullcontext() if i == cfg.grad_accum - 1 else acc.no_sync(model)
            with sync:
                with acc.autocast():
                    loss, parts = self.task.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss.item()} at update {self.prog.step} (epoch {self.prog.epoch}, "
                        f"batch {self.prog.batch_in_epoch}); lower the lr or check the inputs"
                    )
                acc.backward(loss / cfg.grad_accum)
            window.setdefault("loss", []).append(float(loss.detach()))
            for k, v in parts.items():
                window.setdefault(k, []).append(float(v))
            self.prog.samples += _batch_size(batch) * acc.num_processes

    def run(self) -> Path:
        cfg, acc = self.cfg, self.acc
        self.load_state()  # first: a refused resume must not rewrite the run's config.yaml
        self.start_run()
        max_steps = self.total_updates()
        model = self.model
        model.train()
        batches = self.micro_batches()
        bar = None
        if acc.is_local_main_process:
            from tqdm.auto import tqdm

            bar = tqdm(total=max_steps, initial=self.prog.step, desc="train", dynamic_ncols=True)
        window: dict[str, list[float]] = {}
        t0, n0 = time.perf_counter(), self.prog.samples
        while self.prog.step < max_steps:
            self.accumulate(batches, window)
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            lr = self.opt.param_groups[0]["lr"]
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
            self.prog.step += 1
            if bar is not None:
                bar.update(1)
            step = self.prog.step
            if step % cfg.log_every == 0 or step == max_steps:
                self.log_window(window, lr, t0, n0, bar)
                window, t0, n0 = {}, time.perf_counter(), self.prog.samples
            if (cfg.eval_every > 0 and step % cfg.eval_every == 0) or step == max_steps:
                self.evaluate_and_keep()
            if (cfg.save_every > 0 and step % cfg.save_every == 0) or step == max_steps:
                self.save_state()
        if bar is not None:
            bar.close()
        return self.finish_run()

    def start_run(self) -> None:
        """The run folder's config and run info (main process), the trackers, and a log line of the batch sizes."""
        cfg, acc = self.cfg, self.acc
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            if self.stage_config is not None:
                atomic_write_text(self.out / STAGE_CONFIG, yaml.safe_dump(to_dict(self.stage_config), sort_keys=False))
            write_run_info(
                self.out,
                cfg,
                seed=cfg.seed,
                extra={
                    "num_processes": acc.num_processes,
                    "device": str(acc.device),
                    "mixed_precision": acc.mixed_precision,
                    "task": type(self.task).__name__,
                },
            )
        acc.wait_for_everyone()
        if acc.log_with:
            acc.init_trackers("dcase", config=_tracker_config(cfg), init_kwargs={"wandb": {"name": self.out.name}})
        log.info(
            "training on %d process%s (%s, %s): %d items per process x %d processes x grad_accum %d = global batch %d",
            acc.num_processes,
            "es" if acc.num_processes > 1 else "",
            acc.distributed_type.value,
            acc.device,
            cfg.batch_size,
            acc.num_processes,
            cfg.grad_accum,
            cfg.batch_size * acc.num_processes * cfg.grad_accum,
        )

    def total_updates(self) -> int:
        """Updates to run: ``max_steps``, capped by ``max_epochs`` when it is set (at least one update)."""
        cfg = self.cfg
        if cfg.max_epochs is None:
            return cfg.max_steps
        per_epoch = len(self.sampler) / cfg.grad_accum
        return min(cfg.max_steps, max(1, math.ceil(cfg.max_epochs * per_epoch)))

    def log_window(self, window: dict[str, list[float]], lr: float, t0: float, n0: int, bar: Any) -> None:
        """One ``train_log.jsonl`` record: the mean losses of ``window`` (averaged over processes), the learning rate
        and the throughput since ``t0`` (``perf_counter``) and ``n0`` samples; the progress bar shows loss and lr."""
        acc = self.acc
        means = {k: float(np.mean(v)) for k, v in window.items()}
        if acc.num_processes > 1:
            t = torch.tensor(list(means.values()), device=acc.device, dtype=torch.float64)
            means = dict(zip(means, acc.reduce(t, "mean").tolist(), strict=True))
        dt = time.perf_counter() - t0
        rec = {
            "step": self.prog.step,
            "epoch": self.prog.epoch,
            "lr": lr,
            "samples_per_s": (self.prog.samples - n0) / max(dt, 1e-9),
            **means,
        }
        self._log(rec)
        if bar is not None:
            bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")

    def finish_run(self) -> Path:
        """Save ``last``, link ``best``, close the trackers and draw the curves; the best checkpoint's path."""
        acc = self.acc
        last = self.save_last()
        best = self.prog.best or []
        best_path = Path(best[0][2]) if best else last
        if acc.is_main_process:
            link_best(self.out, best_path)
            for tracker in acc.trackers:
                tracker.finish()  # not acc.end_training(): it would end the process group of a later fit()
            self.write_curves()
        acc.wait_for_everyone()
        return best_path

    def write_curves(self) -> None:
        """``curves.png`` from ``train_log.jsonl``; a failure to draw is logged, never fatal to a finished run."""
        from dcase.curves import plot_curves

        try:
            log.info("training curves: %s", plot_curves(self.out))
        except (OSError, ValueError) as e:
            log.warning("could not draw %s: %s", self.out / "curves.png", e)


def link_best(run_dir: Path, best: Path) -> None:
    """``<run_dir>/best``: a relative symbolic link to the best checkpoint (``last`` when nothing was evaluated), so
    that ``<run>/best`` names a loadable checkpoint folder. Replaced atomically."""
    target = os.path.relpath(best, run_dir)
    tmp = run_dir / ".best.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, run_dir / "best")


def fit(task: TrainTask, cfg: TrainConfig, run_config: Any = None) -> Path:
    """Train ``task`` with ``cfg``; resume from ``cfg.output_dir/state`` if present.

    ``run_config``: the whole stage config (a dataclass holding ``cfg`` as ``train``), recorded as
    ``stage_config.yaml`` and with the resume state. Resuming with a config that differs outside
    ``SAFE_RESUME_KEYS`` (or with another number of processes) is a ResumeError listing the changed keys.
    Returns the best checkpoint directory (by ``metric_for_best``), or ``last`` when nothing was evaluated.
    """
    return _Trainer(task, cfg, run_config).run()
