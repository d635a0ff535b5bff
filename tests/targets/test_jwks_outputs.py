"""`jwks_serve` and `jwks_webhook` one step at a time: what each publish, rollback and
withdrawal holds, that a version without a public JWK is refused at the step, and that a
JWKS webhook can never carry the value. Rollovers end to end:
tests/providers/test_jwks_outputs.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import ValidationError

from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.targets.base import Delivery, PublishRequest, RollbackRequest, WithdrawRequest
from keyshift.targets.jwks_serve import SERVED_KIDS, JwksServeConfig, JwksServeTarget
from keyshift.targets.webhook import JwksWebhookConfig, JwksWebhookTarget
from keyshift.testing import FakeClock
from tests.doubles.receiver import Receiver
from tests.targets.test_kubernetes_configmap import signing_key


def test_jwks_serve_records_the_kids_each_step_serves() -> None:
    target = JwksServeTarget(JwksServeConfig(), FakeClock().context())
    old, new = signing_key("v1"), signing_key("v2")
    published = asyncio.run(target.publish(PublishRequest(new, old)))
    assert published.detail[SERVED_KIDS] == [new.attributes["kid"], old.attributes["kid"]]
    withdrawn = asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    assert withdrawn.detail[SERVED_KIDS] == [new.attributes["kid"]]
    rolled_back = asyncio.run(target.rollback(RollbackRequest(failed=new, previous=old)))
    assert rolled_back.detail[SERVED_KIDS] == [old.attributes["kid"]]
    first = asyncio.run(target.rollback(RollbackRequest(failed=old, previous=None)))
    assert first.detail[SERVED_KIDS] == []


def test_jwks_serve_refuses_a_version_without_a_public_jwk_at_the_step() -> None:
    target = JwksServeTarget(JwksServeConfig(), FakeClock().context())
    plain = Delivery("tokens", "rot-1", "v1", "fp", Secret("not-a-key-0123456789"))
    with pytest.raises(PermanentError, match="has no public JWK"):
        asyncio.run(target.publish(PublishRequest(plain, None)))
    leaky = signing_key("v2")
    jwk = {**json.loads(leaky.attributes["jwk"]), "d": "private"}
    bad = Delivery("tokens", "rot-2", "v2", "fp", leaky.value, {"jwk": json.dumps(jwk)})
    with pytest.raises(PermanentError, match="private members"):
        asyncio.run(target.publish(PublishRequest(bad, None)))


def test_a_jwks_webhook_never_carries_the_value(receiver: Receiver) -> None:
    with pytest.raises(ValidationError):
        JwksWebhookConfig.model_validate({"url": receiver.url, "include_value": True})
    target = JwksWebhookTarget(
        JwksWebhookConfig.model_validate({"url": receiver.url}), FakeClock().context()
    )
    old, new = signing_key("v1"), signing_key("v2")
    done = asyncio.run(target.publish(PublishRequest(new, old)))
    assert done.detail["kids"] == [new.attributes["kid"], old.attributes["kid"]]
    [sent] = receiver.requests
    assert sent.headers["X-Keyshift-Event"] == "jwks.published"
    body = json.loads(sent.body)
    assert "value" not in body
    assert b"PRIVATE KEY" not in sent.body
    assert all("d" not in k for k in body["jwks"]["keys"])
