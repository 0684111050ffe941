"""The workspace config, resolved once from al.toml, the environment and flags.

This is the only module that reads the environment. Everything else receives a
:class:`Config` explicitly.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from al_pipeline.errors import ConfigError, WorkspaceExistsError, WorkspaceNotFoundError
from al_pipeline.paths import server_url

CONFIG_FILE = "al.toml"
DATABASE_FILE = "state.sqlite3"
WORKSPACE_ENV = "AL_WORKSPACE"
FINE_TUNE_RATE = 1e-4  # fine-tuning's learning rate, chosen on validation: docs/benchmarks.md
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
CLASS_NAME_MAX = 64  # a folder name in pools and exports, and a Label Studio choice


@dataclass(frozen=True)
class Config:
    """Everything a command needs to know about its workspace.

    Attributes:
        root: The workspace folder (holds al.toml).
        name: Human-readable workspace name (also the Label Studio project title).
        classes: Class names, in label-index order.
        backbone: Name of the backbone in the backbone registry.
        image_size: Square input size in pixels fed to the backbone.
        features: ``last`` (the backbone's pooled last layer), ``mid`` (middle layers'
            pooled outputs too, concatenated: they keep small details) or ``halves`` (the
            last layer pooled over its upper and lower half apart); see backbones.
        seed: Seed for every random choice (test split, selection, training).
        max_pixels: Images with more pixels are rejected as decompression bombs.
        near_duplicate_bits: Perceptual-hash Hamming distance at or below which two
            images count as near-duplicates for the test split.
        pools_dir: Default home of pools (crops from ``pool import-voc`` go here).
        checkpoints_dir: Where per-round models are saved.
        database: The SQLite state database.
        cache_dir: Embedding cache (features per item, per backbone and weights).
        weights: ``imagenet``, ``none`` or a path to a no-top ``.h5`` weights file.
        keras_home: Keras' cache root (``$KERAS_HOME``, default ``~/.keras``).
        offline: Never try to download weights (``$AL_OFFLINE=1``).
        precision: ``auto`` (mixed_float16 when Keras sees a GPU, else float32), or a
            Keras dtype policy: ``float32``, ``mixed_float16``, ``mixed_bfloat16``.
        imbalance: How training copes with unequal classes: ``auto``, ``weights``,
            ``oversample``, ``logit-adjust`` or ``none`` (see ``TrainingSettings``).
        tau: The logit adjustment's strength, with ``logit-adjust``.
        fine_tune_layers: The top backbone layers every training also fine-tunes, on
            augmented images: ``al train`` and every round's model (0: a head on frozen
            features, the default; fine-tuning is slow on a CPU).
        fine_tune_epochs: Epochs of that fine-tuning.
        fine_tune_rate: Its learning rate.
        studio_dir: The embedded Label Studio's data, credentials, pid and log files.
        studio_url: A Label Studio server to use instead of the stored connection
            (``$LABEL_STUDIO_URL``).
        studio_api_key: Its API key (``$LABEL_STUDIO_API_KEY``).
        lock_wait: Seconds a command that writes waits for another one holding the
            workspace before it gives up (``$AL_LOCK_WAIT``).
    """

    root: Path
    name: str
    classes: tuple[str, ...]
    backbone: str = "mobilenet_v2"
    image_size: int = 224
    features: str = "last"
    seed: int = 0
    max_pixels: int = 64_000_000
    near_duplicate_bits: int = 6
    pools_dir: Path = field(default=Path("pools"))
    checkpoints_dir: Path = field(default=Path("checkpoints"))
    database: Path = field(default=Path(DATABASE_FILE))
    cache_dir: Path = field(default=Path("cache"))
    weights: str = "imagenet"
    keras_home: Path = field(default_factory=lambda: Path.home() / ".keras")
    offline: bool = False
    precision: str = "auto"
    imbalance: str = "auto"  # chosen on validation splits: docs/benchmarks.md
    tau: float = 0.5
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 5
    fine_tune_rate: float = FINE_TUNE_RATE
    studio_dir: Path = field(default=Path("studio"))
    studio_url: str | None = None
    studio_api_key: str | None = None
    lock_wait: float = 300.0

    def __post_init__(self) -> None:
        for name in ("pools_dir", "checkpoints_dir", "database", "cache_dir", "studio_dir"):
            path = getattr(self, name)
            if not path.is_absolute():
                object.__setattr__(self, name, self.root / path)

    def exports_dir(self) -> Path:
        """Where ``al export`` writes when no ``--out`` is given (created on demand)."""
        folder = self.root / "exports"
        folder.mkdir(exist_ok=True)
        return folder

    def own_folders(self) -> tuple[Path, ...]:
        """Folders the workspace writes into (models, caches, Label Studio's data, exports,
        simulations, the report): never photos to label, even under a folder added whole.
        The pools folder is not one: crops are registered from it."""
        named = [self.root / name for name in ("exports", "simulation", "report")]
        return (self.checkpoints_dir, self.cache_dir, self.studio_dir, *named)

    def class_index(self, name: str) -> int:
        """Return the label index of ``name`` or raise a clear error."""
        from al_pipeline.errors import UnknownClassError

        try:
            return self.classes.index(name)
        except ValueError:
            raise UnknownClassError(
                f"Unknown class '{name}'. This workspace's classes are: "
                f"{', '.join(self.classes)}. Rename the folder or label, or create the "
                "workspace with that class (al init --classes ...)."
            ) from None


def parse_classes(text: str) -> tuple[str, ...]:
    """Parse a comma-separated class list and validate each name."""
    classes = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(classes) < 2:
        raise ConfigError(
            f"Got classes '{text}': a classifier needs at least 2 classes. "
            "Pass them comma-separated, e.g. --classes with_mask,without_mask"
        )
    for name in classes:
        if not _CLASS_NAME.match(name) or len(name) > CLASS_NAME_MAX:
            raise ConfigError(
                f"Class name '{name}' is not allowed: use ASCII letters, digits, '_' and '-' "
                f"(at most {CLASS_NAME_MAX}), starting with a letter or digit."
            )
    duplicates = sorted({c for c in classes if classes.count(c) > 1})
    if duplicates:
        raise ConfigError(f"Class names repeat: {', '.join(duplicates)}. List each class once.")
    folded = [c.casefold() for c in classes]
    alike = sorted({c for c in classes if folded.count(c.casefold()) > 1})
    if alike:
        raise ConfigError(
            f"Class names {', '.join(alike)} differ only in case: their folders (in pools and "
            "exports) would be one folder on macOS and Windows. Rename one."
        )
    return classes


def find_workspace(start: Path | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Find the workspace: ``start`` if given, else ``$AL_WORKSPACE``, else upwards from cwd.

    Raises:
        WorkspaceNotFoundError: when no al.toml is found.
    """
    env = os.environ if env is None else env
    if start is None and env.get(WORKSPACE_ENV):
        start = Path(env[WORKSPACE_ENV])
        if not (start / CONFIG_FILE).is_file():
            raise WorkspaceNotFoundError(
                f"${WORKSPACE_ENV} is '{start}', but there is no {CONFIG_FILE} there. "
                f"Fix or unset ${WORKSPACE_ENV}, or run 'al init {start}'."
            )
        return start.resolve()
    if start is not None:
        if not (start / CONFIG_FILE).is_file():
            raise WorkspaceNotFoundError(
                f"No workspace at '{start}' (no {CONFIG_FILE}). Create one with "
                f"'al init {start} --classes A,B' or pass the right --workspace."
            )
        return start.resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise WorkspaceNotFoundError(
        f"No workspace found in '{here}' or any folder above it. Create one with "
        "'al init DIR --classes A,B', cd into it, or pass --workspace DIR."
    )


def load_config(root: Path) -> Config:
    """Read ``root/al.toml`` into a :class:`Config`."""
    path = root / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read {path}: {exc.strerror}. Check its permissions.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}). Save it as UTF-8, or restore it."
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}). Fix the file by hand.") from exc
    return _config_from_mapping(root, data, source=str(path))


# Every key al.toml may hold, by table: another is a typo that would be ignored silently.
_KEYS = {
    "workspace": ("name", "classes", "seed"),
    "model": (
        "backbone",
        "image_size",
        "features",
        "weights",
        "precision",
        "imbalance",
        "tau",
        "fine_tune_layers",
        "fine_tune_epochs",
        "fine_tune_rate",
    ),
    "ingest": ("max_pixels", "near_duplicate_bits"),
    "paths": ("pools", "checkpoints", "database", "cache", "studio"),
}


def _check_layout(data: Mapping[str, Any], source: str) -> None:
    for table, value in data.items():
        if table not in _KEYS:
            raise ConfigError(
                f"{source}: al.toml has no table [{table}].{_near(table, _KEYS)} Its tables: "
                f"{', '.join(_KEYS)}. Fix or remove it."
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{source}: [{table}] must be a table, got {value!r}. Fix the file by "
                "hand (see 'al init' for the layout)."
            )
        for key in value:
            if key not in _KEYS[table]:
                raise ConfigError(
                    f"{source}: [{table}] has no setting '{key}'.{_near(key, _KEYS[table])} "
                    f"Its settings: {', '.join(_KEYS[table])}. Fix or remove it."
                )


def _near(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _config_from_mapping(root: Path, data: Mapping[str, Any], source: str) -> Config:
    _check_layout(data, source)
    workspace = data.get("workspace", {})
    model = data.get("model", {})
    ingest = data.get("ingest", {})
    paths = data.get("paths", {})
    classes = workspace.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ConfigError(
            f"{source}: [workspace] classes must be a list of strings, got {classes!r}."
        )
    try:
        return Config(
            root=root,
            name=workspace_name(str(workspace.get("name", root.name))),
            classes=parse_classes(",".join(classes)),
            backbone=str(model.get("backbone", Config.backbone)),
            weights=str(model.get("weights", Config.weights)),
            precision=_precision(model.get("precision", Config.precision)),
            imbalance=_choice(model.get("imbalance", Config.imbalance), IMBALANCES, "imbalance"),
            tau=_tau(model.get("tau", Config.tau)),
            **_fine_tuning(model),
            image_size=_positive_int(model.get("image_size", Config.image_size), "image_size"),
            features=_choice(model.get("features", Config.features), FEATURES, "features"),
            seed=_seed(workspace.get("seed", Config.seed)),
            max_pixels=_positive_int(ingest.get("max_pixels", Config.max_pixels), "max_pixels"),
            near_duplicate_bits=_hash_bits(
                ingest.get("near_duplicate_bits", Config.near_duplicate_bits)
            ),
            pools_dir=Path(paths.get("pools", "pools")),
            checkpoints_dir=Path(paths.get("checkpoints", "checkpoints")),
            database=Path(paths.get("database", DATABASE_FILE)),
            cache_dir=Path(paths.get("cache", "cache")),
            studio_dir=Path(paths.get("studio", "studio")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}. Fix the value in the file.") from exc


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
IMBALANCES = ("auto", "weights", "oversample", "logit-adjust", "none")
FEATURES = ("last", "mid", "halves")
SEED_MAX = 2**32 - 1  # NumPy's global seed, which Keras sets for training, takes no more
TAU_MAX = 5  # the strongest logit adjustment allowed (tau from 0 to this)
CROP_MARGIN = 0.15  # VOC boxes grow by this share of their size on each side when cropped


def _choice(value: object, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _tau(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= TAU_MAX:
        raise ValueError(f"tau must be a number from 0 to {TAU_MAX}, got {value!r}")
    return float(value)


def _fine_tuning(model: Mapping[str, Any]) -> dict[str, Any]:
    """The [model] table's fine-tuning keys, checked."""
    rate = model.get("fine_tune_rate", Config.fine_tune_rate)
    if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 < rate <= 1:
        raise ValueError(f"fine_tune_rate must be a number above 0 and at most 1, got {rate!r}")
    layers = model.get("fine_tune_layers", Config.fine_tune_layers)
    epochs = model.get("fine_tune_epochs", Config.fine_tune_epochs)
    return {
        "fine_tune_layers": _non_negative_int(layers, "fine_tune_layers"),
        "fine_tune_epochs": _positive_int(epochs, "fine_tune_epochs"),
        "fine_tune_rate": float(rate),
    }


def _hash_bits(value: object) -> int:
    """A Hamming distance between 64-bit hashes: above 32 makes most photos one group."""
    bits = _non_negative_int(value, "near_duplicate_bits")
    if bits > 32:
        raise ValueError(f"near_duplicate_bits must be from 0 to 32 (of 64), got {bits}")
    return bits


def _precision(value: object) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return str(value)


def _positive_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _seed(value: object) -> int:
    seed = _non_negative_int(value, "seed")
    if seed > SEED_MAX:
        raise ValueError(f"seed must be at most {SEED_MAX} (2**32 - 1), got {seed}")
    return seed


def _non_negative_int(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer of 0 or more, got {value!r}")
    return value


def workspace_name(name: str) -> str:
    """A workspace name: printable (it titles the Label Studio project), 1-100 characters."""
    stripped = name.strip()
    if not stripped or len(stripped) > 100 or not stripped.isprintable():
        raise ConfigError(
            f"Workspace name {name!r} is not allowed: use 1 to 100 printable characters "
            "(no control characters such as newlines or tabs)."
        )
    return stripped


def resolve_config(
    workspace: Path | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Config:
    """Resolve the config once: al.toml, then the environment, then flags.

    Args:
        workspace: ``--workspace`` flag, or None to search.
        env: Environment mapping (defaults to ``os.environ``).
        **overrides: Flag values; ``None`` means "not given".
    """
    env = os.environ if env is None else env
    config = load_config(find_workspace(workspace, env))
    config = replace(config, **_from_environment(env))
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - set(Config.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"Unknown config override(s): {', '.join(sorted(unknown))}.")
    if given.get("features", Config.features) not in FEATURES:
        raise ConfigError(f"--features {given['features']!r}: use one of {', '.join(FEATURES)}.")
    return replace(config, **given) if given else config


def _from_environment(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if env.get("KERAS_HOME"):
        values["keras_home"] = Path(env["KERAS_HOME"]).expanduser()
    if env.get("AL_OFFLINE", "").lower() in ("1", "true", "yes"):
        values["offline"] = True
    if env.get("LABEL_STUDIO_URL"):
        values["studio_url"] = server_url(env["LABEL_STUDIO_URL"], "$LABEL_STUDIO_URL")
    if env.get("LABEL_STUDIO_API_KEY"):
        values["studio_api_key"] = env["LABEL_STUDIO_API_KEY"]
    if env.get("AL_LOCK_WAIT"):
        try:
            values["lock_wait"] = max(0.0, float(env["AL_LOCK_WAIT"]))
        except ValueError:
            raise ConfigError(
                f"$AL_LOCK_WAIT is {env['AL_LOCK_WAIT']!r}; set it to a number of seconds."
            ) from None
    return values


# Label Studio reads LABEL_STUDIO_X, then HEARTEX_X, then a bare X: a stray USERNAME or
# PORT in the user's shell would change the embedded server.
_STUDIO_BARE_SETTINGS = frozenset(
    {"USERNAME", "PASSWORD", "PORT", "HOST", "DEBUG", "USER_TOKEN", "DJANGO_DB", "SECRET_KEY"}
)


def server_environment(settings: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child Label Studio server: this process's environment without
    anything Label Studio would read as a setting, plus ``settings``."""
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LABEL_STUDIO_", "HEARTEX_")) and key not in _STUDIO_BARE_SETTINGS
    }
    return {**kept, **settings}


def render_toml(config: Config) -> str:
    """Serialise a config as the al.toml text written by ``al init``."""

    def rel(path: Path) -> str:
        try:
            return path.relative_to(config.root).as_posix()
        except ValueError:
            return path.as_posix()

    def text(value: object) -> str:
        return json.dumps(str(value), ensure_ascii=False)

    classes = ", ".join(text(c) for c in config.classes)
    return (
        "# al-pipeline workspace. Edit by hand; every command reads it.\n"
        "[workspace]\n"
        f"name = {text(config.name)}\n"
        f"classes = [{classes}]\n"
        f"seed = {config.seed}\n\n"
        "[model]\n"
        f"backbone = {text(config.backbone)}\n"
        f"image_size = {config.image_size}\n"
        "# last: the backbone's pooled output; mid: middle layers' too (small faces);\n"
        "# halves: the last layer's upper and lower half pooled apart (where a mask sits)\n"
        f"features = {text(config.features)}\n"
        "# imagenet, none, or the path of a no-top .h5 weights file\n"
        f"weights = {text(config.weights)}\n"
        "# auto: mixed_float16 on a GPU, float32 on a CPU\n"
        f"precision = {text(config.precision)}\n"
        "# unequal classes: auto (logit-adjust for a head, weights when fine-tuning),\n"
        "# weights (inverse frequency), oversample (classes drawn equally often),\n"
        "# logit-adjust (by tau), or none\n"
        f"imbalance = {text(config.imbalance)}\n"
        f"tau = {config.tau}\n"
        "# Fine-tune the top K backbone layers in every training, rounds included\n"
        "# (0: a head on frozen features). Slow on a CPU.\n"
        f"fine_tune_layers = {config.fine_tune_layers}\n"
        f"fine_tune_epochs = {config.fine_tune_epochs}\n"
        f"fine_tune_rate = {config.fine_tune_rate:g}\n\n"
        "[ingest]\n"
        "# Images with more pixels are rejected as decompression bombs.\n"
        f"max_pixels = {config.max_pixels}\n"
        "# Perceptual-hash distance (of 64 bits) at which images count as near-duplicates.\n"
        f"near_duplicate_bits = {config.near_duplicate_bits}\n\n"
        "[paths]\n"
        f"pools = {text(rel(config.pools_dir))}\n"
        f"checkpoints = {text(rel(config.checkpoints_dir))}\n"
        f"database = {text(rel(config.database))}\n"
        f"cache = {text(rel(config.cache_dir))}\n"
        "# The embedded Label Studio server's data, credentials and log.\n"
        f"studio = {text(rel(config.studio_dir))}\n"
    )


def new_config(root: Path, classes: tuple[str, ...], name: str | None = None) -> Config:
    """Build the config for a new workspace at ``root`` (not yet written)."""
    root = root.resolve()
    if (root / CONFIG_FILE).exists():
        raise WorkspaceExistsError(
            f"'{root}' is already a workspace ({CONFIG_FILE} exists). Use it as it is, "
            "or choose another folder."
        )
    return Config(root=root, name=workspace_name(name or root.name), classes=classes)
