"""Typed, frozen configuration objects.

Every stage has a ``Config`` subclass of :class:`StageConfig` (a frozen pydantic model that
rejects unknown keys). :func:`load_config` turns a mapping or YAML file into one, and converts
validation failures into a one-line :class:`~activedet.errors.ConfigError` that lists the valid
keys when a key is unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from activedet.errors import ConfigError

T = TypeVar("T", bound=BaseModel)


class FrozenModel(BaseModel):
    """Base for every config object: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class StageConfig(FrozenModel):
    """Base for stage configs. Stage inputs and outputs are URIs in the artifact store."""

    mlflow_tracking_uri: str | None = Field(None, description="MLflow tracking URI; unset = no tracking")
    mlflow_run_id: str | None = Field(None, description="MLflow run to log into (default: a new run)")


def _format_error(cls: type[BaseModel], exc: ValidationError, where: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        model = cls
        for part in err["loc"][:-1]:
            field = model.model_fields.get(str(part)) if isinstance(part, str) else None
            ann = getattr(field, "annotation", None)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                model = ann
        valid = ", ".join(sorted(model.model_fields))
        return f"{where}: unknown key '{loc}' (valid keys: {valid})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{where}: '{loc}': {err['msg']}{more}"


def load_config(cls: type[T], source: dict[str, Any] | str | Path | None = None, *, where: str | None = None, **overrides) -> T:
    """Build a ``cls`` from a dict or YAML file plus keyword overrides; errors are one line."""
    data: dict[str, Any] = {}
    if isinstance(source, (str, Path)):
        where = where or str(source)
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}): save the YAML as UTF-8") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    elif isinstance(source, dict):
        data.update(source)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(cls, exc, where or cls.__name__)) from None


def _lookup(source: BaseModel, path: str) -> Any:
    value: Any = source
    for part in path.split("."):
        value = getattr(value, part)
    return value


def config_from(
    cls: type[T],
    source: BaseModel,
    *,
    where: str,
    fields: dict[str, str] | None = None,
    spread: tuple[str, ...] = (),
    **derived: Any,
) -> T:
    """Build stage config ``cls`` from another config (the experiment), naming its key paths on errors.

    ``fields`` maps a ``cls`` field to a dotted path in ``source`` (``{"iterations":
    "training.teacher_iterations"}``); a value left unset (None) there means the stage default.
    ``spread`` names dict-valued paths (``"acquisition.strategy_params"``) whose keys are ``cls``
    fields. ``derived`` are values computed here (URIs, per-cycle seeds). A validation error names
    the source key path it came from, e.g. ``acquisition.strategy_params.prefilter_factr``.
    """
    data: dict[str, Any] = dict(derived)
    origin: dict[str, str] = {}
    for name, path in (fields or {}).items():
        value = _lookup(source, path)
        origin[name] = path
        if value is not None:
            data[name] = value
    set_here = set(data) | set(origin)
    for path in spread:
        for key, value in (_lookup(source, path) or {}).items():
            if key in set_here:
                raise ConfigError(f"{where}: {path}.{key}: set by {origin.get(key, 'the pipeline')}, not here")
            data[key], origin[key] = value, f"{path}.{key}"
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        path = origin.get(key, key)
        if err["type"] == "extra_forbidden":
            params = sorted(set(cls.model_fields) - set_here - set(StageConfig.model_fields))
            raise ConfigError(f"{where}: {path}: unknown parameter (valid: {', '.join(params)})") from None
        rest = ".".join(str(p) for p in err["loc"][1:])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}: {path}{'.' + rest if rest else ''}: {msg}") from None
