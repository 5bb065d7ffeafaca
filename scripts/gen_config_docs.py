"""The configuration reference, written from the settings classes' own field descriptions.

Every `LORAPLANE_*` variable a service reads is a field of `CommonSettings`, `TrainerSettings` or
`ServingSettings`, and its `Field(description=...)` is the one place it is explained: the docs
site's configuration page is rendered from these classes when the site is built
(scripts/mkdocs_hooks.py), so it cannot fall behind them. A field without a description fails
the build, naming it. `python scripts/gen_config_docs.py` prints the tables.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from loraplane.settings import CommonSettings
from serving_svc.settings import ServingSettings
from trainer_svc.settings import TrainerSettings

SECTIONS: tuple[tuple[str, type[BaseSettings], type[BaseSettings] | None], ...] = (
    ("Both services", CommonSettings, None),
    ("trainer-svc", TrainerSettings, CommonSettings),
    ("serving-svc", ServingSettings, CommonSettings),
)
"""(heading, class, the class it extends): each section lists the fields its class adds, so a
setting both services share is documented once."""


class UndocumentedSetting(ValueError):
    """A settings field without a description: the page would have a blank row."""


def env_name(settings: type[BaseSettings], name: str, field: FieldInfo) -> str:
    """The environment variable pydantic-settings reads for `name` (prefix + field name)."""
    if field.alias or field.validation_alias:
        raise ValueError(f"{settings.__name__}.{name} has an alias; the page cannot name its variable")
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{arg}`" for arg in args)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f"`{member.value}`" for member in annotation)
    if origin in (Union, types.UnionType):
        present = [arg for arg in args if arg is not type(None)]
        return " or ".join(_type_name(arg) for arg in present) + (", optional" if len(present) < len(args) else "")
    if origin is dict:
        return "JSON object"
    if origin is list:
        return "JSON list"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


_BOUNDS = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def _bounds(field: FieldInfo) -> str:
    """The field's numeric bounds (`ge=1, le=64` -> ">= 1, <= 64"), which pydantic enforces at start."""
    return ", ".join(
        f"{word} {getattr(constraint, attribute)}"
        for constraint in field.metadata
        for kind, attribute, word in _BOUNDS
        if isinstance(constraint, kind)
    )


def _home_relative(path: Path) -> str:
    return f"~/{path.relative_to(Path.home())}" if path.is_relative_to(Path.home()) else str(path)


def _default(field: FieldInfo) -> str:
    """The default as a reader sets it: `true`, JSON for lists and maps, sizes with their MiB or GiB."""
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):  # the home folder as `~`, so the page does not name the builder's
        value = "" if value == Path("") else _home_relative(value)
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value, default=str)}`"
    if value == "":
        return "empty"
    if isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        return f"`{value}` ({value >> 20} MiB)" if value < 1 << 30 else f"`{value}` ({value >> 30} GiB)"
    return f"`{value}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table(settings: type[BaseSettings], parent: type[BaseSettings] | None = None) -> str:
    """A markdown table of the fields `settings` declares beyond `parent`'s."""
    inherited = set(parent.model_fields) if parent else set()
    fields = {name: field for name, field in settings.model_fields.items() if name not in inherited}
    undocumented = sorted(name for name, field in fields.items() if not (field.description or "").strip())
    if undocumented:
        raise UndocumentedSetting(f"{settings.__name__} fields without a description: {', '.join(undocumented)}")
    rows = ["| variable | type | default | description |", "|---|---|---|---|"]
    for name, field in fields.items():
        type_text = _type_name(field.annotation)
        if bounds := _bounds(field):
            type_text += f", {bounds}"
        variable = env_name(settings, name, field)
        rows.append(f"| `{variable}` | {type_text} | {_default(field)} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def configuration_reference() -> str:
    """Every section's table, each under its heading."""
    return "\n".join(f"## {title}\n\n{settings_table(settings, parent)}\n" for title, settings, parent in SECTIONS)


if __name__ == "__main__":
    print(configuration_reference())
