"""``activedet stage NAME``: run one pipeline stage.

Flags are generated from the stage's ``Config`` model (``--field-name VALUE``; lists and mappings
as JSON or YAML), and ``--config FILE`` reads a YAML mapping first. The stage's ``run(config)``
does the work; its result is printed as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing

import yaml

from activedet.config import load_config
from activedet.errors import ConfigError
from activedet.stages import STAGES, stage_module


def _flag_type(annotation):
    """Scalars parse as themselves; structured values parse as YAML (a superset of JSON)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (int, float, str):
        return str  # pydantic converts and validates
    return "yaml"


def add_config_flags(parser: argparse.ArgumentParser, config_cls) -> None:
    """Add one ``--flag`` per field of a pydantic config class."""
    for name, field in config_cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        kind = _flag_type(field.annotation)
        if field.is_required() or (field.default is None and field.default_factory is None):
            default = ""
        elif field.default_factory is not None:
            default = f" (default: {field.default_factory()!r})"
        else:
            default = f" (default: {field.default!r})"
        help_text = (field.description or "") + default
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=name, default=None, metavar="YAML" if kind == "yaml" else "VALUE", help=help_text)
        parser.set_defaults(**{f"_kind_{name}": kind})


def config_from_args(config_cls, args: argparse.Namespace, where: str):
    """Build a config from ``--config FILE`` and the generated flags."""
    overrides = {}
    for name in config_cls.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        if getattr(args, f"_kind_{name}", "str") == "yaml" and isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise ConfigError(f"{where}: --{name.replace('_', '-')}: cannot parse {value!r}") from None
        overrides[name] = value
    return load_config(config_cls, getattr(args, "config", None), where=where, **overrides)


def _run_stage(args: argparse.Namespace) -> int:
    module = stage_module(args.stage_name)
    config = config_from_args(module.Config, args, where=f"stage {args.stage_name}")
    result = module.run(config)
    payload = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


def register(sub) -> None:
    parser = sub.add_parser("stage", help="run one pipeline stage", description=__doc__)
    stages = parser.add_subparsers(dest="stage", metavar="STAGE")
    stages.required = True
    for name in STAGES:
        module = stage_module(name)
        doc = (module.__doc__ or name).strip().splitlines()[0]
        p = stages.add_parser(name, help=doc, description=module.__doc__)
        p.add_argument("--config", help="YAML file with the stage config (flags override it)")
        add_config_flags(p, module.Config)
        p.set_defaults(func=_run_stage, stage_name=name)
