"""The estate-file reference, generated from the pydantic models so docs and validation agree.

`keyshift reference > docs/estate-reference.md` regenerates it; a test fails when
the committed file differs from what the models say.
"""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from keyshift.domain.durations import format_duration
from keyshift.domain.estate import (
    ActionSpec,
    CredentialSpec,
    FreezeSpec,
    IntegrationSpec,
    Policy,
    ProviderSpec,
    RateLimit,
    SecretMatch,
    TriggerSpec,
    Worker,
)
from keyshift.domain.notifications import EVENT_KINDS, ChannelSpec, Notifications, Route
from keyshift.notify import CHANNELS
from keyshift.providers import INTEGRATIONS, PROVIDERS
from keyshift.targets import TARGETS


def _schema_type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(_schema_type(p) for p in prop[key])
    kind = prop.get("type")
    if kind == "array":
        return "list of " + _schema_type(prop.get("items", {}))
    if kind == "object":
        extra = prop.get("additionalProperties")
        return "mapping" + (f" of {_schema_type(extra)}" if isinstance(extra, dict) else "")
    if kind == "string" and prop.get("format") == "duration":
        return "duration"
    names = {
        "string": "text",
        "integer": "integer",
        "boolean": "true/false",
        "null": "null",
        "number": "number",
    }
    return names.get(str(kind), "any")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value: Any = info.default
    if value is PydanticUndefined:
        value = info.default_factory() if info.default_factory else None  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "its own defaults"
    if hasattr(value, "total_seconds"):
        return f"`{format_duration(value)}`"
    if hasattr(value, "value"):
        value = value.value
    return f"`{value!r}`" if value not in (None, [], {}) else "-"


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    schema = model.model_json_schema(mode="validation", by_alias=False)
    props: dict[str, Any] = schema.get("properties", {})
    lines = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        shown = name + (f" (alias `{info.alias}`)" if info.alias and info.alias != name else "")
        doc = " ".join((info.description or "").split()).replace("|", "/")
        prop = props.get(name, {})
        limits = [
            f"{label} {prop[key]}"
            for key, label in (("minimum", "min"), ("maximum", "max"), ("minItems", "min items"))
            if key in prop
        ]
        type_name = _schema_type(prop) + (f" ({', '.join(limits)})" if limits else "")
        lines.append(f"| `{shown}` | {type_name.replace('|', '/')} | {_default(info)} | {doc} |")
    return lines


def _doc(obj: Any) -> str:
    return " ".join((obj.__doc__ or "").split())


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation names (through unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _nested(kind: str, model: type[BaseModel]) -> list[str]:
    """A table for each model a field of `model` takes (e.g. each kind of `challenge`)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        for nested in _models_in(info.annotation):
            out += [f"#### `{kind}` `{name}`: {nested.__name__}", "", _doc(nested), ""]
            out += [*_table(nested), ""]
    return out


def estate_reference() -> str:
    out = [
        "# Estate file reference",
        "",
        "Generated from keyshift's pydantic models by `keyshift reference`; do not edit by hand.",
        "Durations are written `30s`, `10m`, `12h`, `30d`, `1h30m`. Secret values are never",
        "written inline: fields ending in `_from` take `env:NAME` or `file:/path`.",
        "",
        "Top level: `integrations`, `policies`, `credentials`, `freeze`, `triggers` (lists),",
        "`alerts`, `governance`, `notifications`, `worker`.",
        "",
        "## credentials[]",
        "",
        _doc(CredentialSpec),
        "",
        *_table(CredentialSpec),
        "",
        "## credentials[].provider",
        "",
        _doc(ProviderSpec),
        "",
        *_table(ProviderSpec),
        "",
        "## credentials[].actions[]",
        "",
        _doc(ActionSpec),
        " Actions run grouped by phase (publishing, reloading, verifying, notifying),",
        "by `order` within a phase.",
        "",
        *_table(ActionSpec),
        "",
        "## policies[] (or an inline `policy:`)",
        "",
        _doc(Policy),
        "",
        *_table(Policy),
        "",
        "## integrations[]",
        "",
        _doc(IntegrationSpec),
        "",
        *_table(IntegrationSpec),
        "",
        "## freeze[]",
        "",
        _doc(FreezeSpec),
        "",
        *_table(FreezeSpec),
        "",
        "## worker",
        "",
        _doc(Worker),
        "",
        *_table(Worker),
        "",
        "## triggers[]",
        "",
        _doc(TriggerSpec),
        "",
        *_table(TriggerSpec),
        "",
        "### triggers[].rate_limit",
        "",
        _doc(RateLimit),
        "",
        *_table(RateLimit),
        "",
        "### triggers[].match[]",
        "",
        _doc(SecretMatch),
        "",
        *_table(SecretMatch),
        "",
        "## notifications",
        "",
        _doc(Notifications),
        "",
        *_table(Notifications),
        "",
        "### notifications.routes[]",
        "",
        _doc(Route),
        f" Event kinds: {', '.join(f'`{k}`' for k in EVENT_KINDS)}.",
        "",
        *_table(Route),
        "",
        "### notifications.channels[]",
        "",
        _doc(ChannelSpec),
        "",
        *_table(ChannelSpec),
        "",
        "## Provider types",
        "",
    ]
    for provider, cls in sorted(PROVIDERS.items()):
        out += [f"### `{provider}`", "", _doc(cls.Config), "", *_table(cls.Config), ""]
        out += _nested(provider, cls.Config)
    out += ["## Integration types", ""]
    for integration, model in sorted(INTEGRATIONS.items()):
        out += [f"### `{integration}`", "", _doc(model), "", *_table(model), ""]
    out += ["## Action types", ""]
    for kind, cls in sorted(TARGETS.items()):
        out += [
            f"### `{kind}` (phase: {cls.phase.value})",
            "",
            _doc(cls.Config),
            "",
            *_table(cls.Config),
            "",
        ]
    out += ["## Channel types", ""]
    for channel, channel_cls in sorted(CHANNELS.items()):
        config = channel_cls.Config
        out += [f"### `{channel}`", "", _doc(config), "", *_table(config), ""]
    return "\n".join(out).rstrip() + "\n"
