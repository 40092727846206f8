"""What this installation can do: package versions, device, threads, hub offline flags, Java and the metric
resources (PTB tokenizer, METEOR, SPICE + CoreNLP 3.6.0, the FENSE checker and its sentence-BERT). Used by
``dcase info``."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES: tuple[str, ...] = (
    "dcase",
    "torch",
    "transformers",
    "accelerate",
    "aac-metrics",
    "pycocoevalcap",
    "sentence-transformers",
    "safetensors",
    "tokenizers",
    "faiss-cpu",
    "pot",
    "numpy",
    "pandas",
    "soundfile",
    "soxr",
)


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed distribution versions (None when not installed); never imports the packages."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment_info(metric_settings: Any = None) -> dict[str, Any]:
    """A JSON-able report: versions, device (CUDA? how many), torch threads, hub offline flags, Java, metric
    resources (see :func:`dcase.evaluation.captions.metric_resources`)."""
    import torch

    from dcase.evaluation.captions import metric_resources

    cuda = torch.cuda.is_available()
    resources = metric_resources(metric_settings)
    return {
        "versions": package_versions(),
        "platform": f"{platform.system()} {platform.machine()}",
        "executable": sys.executable,
        "device": {
            "cuda_available": cuda,
            "cuda_device_count": torch.cuda.device_count() if cuda else 0,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "torch_threads": torch.get_num_threads(),
        },
        "hub_offline": {
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE"),
            "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE"),
            "offline": os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
            or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes", "on"),
        },
        "java": resources["java"],
        "metric_resources": {k: v for k, v in resources.items() if k != "java"},
    }


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines for ``dcase info``."""
    lines = ["versions:"]
    lines += [f"  {k:<22} {v if v is not None else 'not installed'}" for k, v in info["versions"].items()]
    d = info["device"]
    lines.append(
        f"device: cuda={'yes' if d['cuda_available'] else 'no'} (devices: {d['cuda_device_count']}"
        + (f", {', '.join(d['cuda_devices'])}" if d["cuda_devices"] else "")
        + f"), torch threads={d['torch_threads']}"
    )
    h = info["hub_offline"]
    lines.append(
        f"hub offline: {'yes' if h['offline'] else 'no'} "
        f"(HF_HUB_OFFLINE={h['HF_HUB_OFFLINE']}, TRANSFORMERS_OFFLINE={h['TRANSFORMERS_OFFLINE']})"
    )
    j = info["java"]
    lines.append(f"java: {j['version'] + ' at ' + str(j['path']) if j['present'] else 'absent: ' + str(j['reason'])}")
    lines.append("metric resources:")
    for name, r in info["metric_resources"].items():
        state = f"present  {r['path']}" if r["present"] else f"absent   {r['reason']}"
        lines.append(f"  {name:<16} {state}")
    return "\n".join(lines)


def resolve_device(device: str | None = None) -> str:
    """``device`` as given, else ``cuda`` when a GPU is available, else ``cpu``."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
