"""What `al info` reports: versions, the Keras backend and the devices it sees."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from al_pipeline.config import Config

PACKAGES = (
    "al-pipeline",
    "keras",
    "tensorflow-cpu",
    "tensorflow",
    "jax",
    "torch",
    "modAL-python",
    "scikit-learn",
    "label-studio-sdk",
    "label-studio",
    "numpy",
    "pandas",
    "pillow",
    "typer",
)


@dataclass(frozen=True)
class Info:
    """Environment facts."""

    python: str
    packages: dict[str, str]
    backend: str
    devices: list[str]
    accelerator: str
    precision: str
    workspace: dict[str, str] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def devices() -> tuple[str, list[str]]:
    """The Keras backend and the devices it will compute on (imports Keras: slow)."""
    import keras

    backend = keras.backend.backend()
    found: list[str] = []
    if backend == "tensorflow":
        import tensorflow as tf

        found = [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()]
    elif backend == "jax":
        import jax

        found = [f"{d.platform.upper()}:{d.device_kind}" for d in jax.devices()]
    elif backend == "torch":
        import torch

        found = ["CPU"] + [
            f"GPU:{torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    return backend, found


def has_gpu(found: list[str] | None = None) -> bool:
    """Whether Keras' backend sees a GPU."""
    found = devices()[1] if found is None else found
    return any(d.upper().startswith(("GPU", "CUDA")) for d in found)


def compute_device(found: list[str] | None = None) -> str:
    """The device Keras computes on: its first GPU, else the CPU."""
    found = devices()[1] if found is None else found
    return next((d for d in found if has_gpu([d])), "CPU")


def accelerator_memory() -> int | None:
    """Bytes of memory free on the first GPU, where the backend says (JAX, torch)."""
    import keras

    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            if "bytes_limit" in stats:
                return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                return int(torch.cuda.mem_get_info()[0])
    except (RuntimeError, IndexError):
        return None
    return None


def resolve_precision(precision: str, gpu: bool | None = None) -> str:
    """``auto`` becomes mixed_float16 on a GPU and float32 elsewhere (``gpu``: already
    known, or None to ask the backend)."""
    if precision != "auto":
        return precision
    return "mixed_float16" if (has_gpu() if gpu is None else gpu) else "float32"


def gather(workspace: dict[str, str] | None = None, precision: str = "auto") -> Info:
    backend, found = devices()
    gpu = has_gpu(found)
    return Info(
        python=f"{platform.python_version()} ({sys.executable})",
        packages=package_versions(),
        backend=backend,
        devices=found,
        accelerator=compute_device(found),
        precision=resolve_precision(precision, gpu),
        workspace=workspace or {},
    )


def describe(config: Config | None) -> Info:
    """What ``al info`` shows: the environment, and the workspace when there is one."""
    if config is None:
        return gather()
    workspace = {
        "root": str(config.root),
        "database": str(config.database),
        "pools": str(config.pools_dir),
        "checkpoints": str(config.checkpoints_dir),
        "classes": ", ".join(config.classes),
        "backbone": config.backbone,
    }
    return gather(workspace, config.precision)
