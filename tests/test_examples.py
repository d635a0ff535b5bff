"""The worked example shipped with keyshift stays valid as the models change."""

from __future__ import annotations

from pathlib import Path

from keyshift.providers import PROVIDERS
from keyshift.service.estate import load_estate
from keyshift.targets import TARGETS

EXAMPLE = Path(__file__).parents[1] / "examples" / "estate.yaml"


def test_the_worked_example_estate_validates_and_covers_every_provider() -> None:
    estate = load_estate(EXAMPLE)
    assert {c.provider.type for c in estate.credentials} == set(PROVIDERS)
    kinds = {a.type for c in estate.credentials for a in c.actions}
    assert kinds == set(TARGETS)
