"""Package-level promises: public names, registries and generated docs stay in step."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from pydantic import BaseModel

from keyshift.domain.states import Phase
from keyshift.notify import CHANNELS, ChannelKind
from keyshift.providers import PROVIDERS, ProviderKind
from keyshift.service.reference import estate_reference
from keyshift.targets import AGENT_KINDS, TARGETS, VERIFY_KINDS, TargetKind

PACKAGES = [
    "keyshift.domain",
    "keyshift.engine",
    "keyshift.notify",
    "keyshift.providers",
    "keyshift.store",
    "keyshift.targets",
]


def _isort_key(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions: the order ruff's RUF022 keeps."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key), f"{name}.__all__ is not sorted"
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr}"


def test_every_provider_kind_has_a_class_with_a_config_schema() -> None:
    assert set(PROVIDERS) == set(ProviderKind)
    for kind, cls in PROVIDERS.items():
        assert cls.kind == kind
        assert issubclass(cls.Config, BaseModel)
        assert cls.capabilities
        # Views build one provider per value of these fields, not one per credential.
        assert set(cls.capability_fields) <= set(cls.Config.model_fields), kind


def test_every_target_kind_has_a_class_with_a_phase_and_config_schema() -> None:
    assert set(TARGETS) == set(TargetKind)
    for kind, cls in TARGETS.items():
        assert cls.kind == kind
        assert isinstance(cls.phase, Phase)
        assert issubclass(cls.Config, BaseModel)


def test_agent_kinds_are_the_targets_whose_classes_run_on_an_agent() -> None:
    """`AGENT_KINDS` lets estate validation know them without importing every target."""
    on_agent = {kind for kind, cls in TARGETS.items() if getattr(cls, "runs_on_agent", False)}
    assert on_agent == AGENT_KINDS


def test_verify_kinds_are_the_targets_that_run_in_the_verify_phase() -> None:
    """`VERIFY_KINDS` lets `apply` know the cutover checks without importing every target."""
    assert {kind for kind, cls in TARGETS.items() if cls.phase == Phase.VERIFY} == VERIFY_KINDS


def test_every_channel_kind_has_a_class_with_a_config_schema() -> None:
    assert set(CHANNELS) == set(ChannelKind)
    for kind, cls in CHANNELS.items():
        assert cls.kind == kind
        assert issubclass(cls.Config, BaseModel)


def test_every_registered_path_names_the_class_that_says_its_kind() -> None:
    for registry in (PROVIDERS, TARGETS, CHANNELS):
        for kind in registry:
            module, _, name = registry.where(kind).partition(":")
            cls = registry[kind]
            assert (cls.__module__.startswith(module), cls.__name__) == (True, name), kind


def test_committed_estate_reference_matches_the_models() -> None:
    committed = Path(__file__).parents[1] / "docs" / "estate-reference.md"
    assert committed.read_text(encoding="utf-8") == estate_reference(), (
        "docs/estate-reference.md is stale: run `keyshift reference > docs/estate-reference.md`"
    )


def test_the_repository_carries_the_apache_license_the_package_declares() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    assert 'license = "Apache-2.0"' in pyproject
    assert 'license-files = ["LICENSE"]' in pyproject
