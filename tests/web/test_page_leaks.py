"""No page, fragment, download or error page shows a secret value: after rotations that
completed, one rolled back because its consumer echoed the value, and one waiting for
approval, every page route is rendered for every id it takes, and none holds any value
keyshift issued (or a 16-character piece of one), an API token or a session cookie."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sqlalchemy import select

from keyshift.store.models import VersionRow
from tests.api.conftest import Api
from tests.engine.test_governance import GROUPS
from tests.helpers import json_value, rotations_of
from tests.test_no_secret_leaks import (
    LEAKING_CONSUMER,
    _file_action,
    _leaked_into,
    _leaking_command,
)
from tests.web.conftest import sign_in
from tests.web.test_page_rbac import ROUTES
from tests.web.test_pages import apply_estate, rotate_through_pages, settle


def _estate(tmp: Path, actions: list[dict[str, object]]) -> Path:
    path = tmp / "estate.json"
    path.write_text(
        json.dumps(
            {
                "governance": {"groups": GROUPS},
                "credentials": [
                    {
                        "name": "api-key",
                        "owner": "team-test",
                        "policy": {"grace_period": "0s"},
                        "provider": {"type": "random", "length": 32},
                        "actions": actions,
                    },
                    {
                        "name": "billing-db",
                        "owner": "team-payments",
                        "policy": {"approval": {"approvers": ["group:platform-oncall"]}},
                        "provider": {"type": "random", "length": 40},
                        "actions": [_file_action(tmp / "billing.json")],
                    },
                ],
            }
        )
    )
    return path


def test_no_page_fragment_or_error_page_shows_a_secret_value(web: Api, tmp_path: Path) -> None:
    target = tmp_path / "app.json"
    apply_estate(web, _estate(tmp_path, [_file_action(target)]))
    operator = sign_in(web, "operator")
    delivered = set()
    for _ in range(2):
        assert settle(web, rotate_through_pages(operator, "api-key"))["state"] == "completed"
        delivered.add(json_value(target))
    script = tmp_path / "leaking_consumer.py"
    script.write_text(LEAKING_CONSUMER, encoding="utf-8")
    apply_estate(web, _estate(tmp_path, [_file_action(target), _leaking_command(script)]))
    failed = settle(web, rotate_through_pages(operator, "api-key"))
    assert failed["state"] == "rolled_back"
    supervised = rotate_through_pages(operator, "billing-db")
    assert settle(web, supervised)["state"] == "awaiting_approval"

    admin = sign_in(web, "admin")
    ids = {
        "name": ["api-key", "billing-db", "no-such-credential"],
        "rotation_id": [r.id for r in rotations_of(web.store, "api-key")] + [supervised, "0000"],
        "request_id": [a["id"] for a in web.call("GET", "/v1/approvals").json()] + ["000000"],
        "session_id": [admin.cookie.split("_")[1], "0000000000000000"],
    }
    pages: dict[str, str] = {}
    for method, path, _permission in ROUTES:
        if method != "GET":
            continue
        names = re.findall(r"\{([^}]+)\}", path)
        urls = [path] if not names else [path.replace(f"{{{names[0]}}}", v) for v in ids[names[0]]]
        for url in urls:
            for headers in ({}, {"HX-Request": "true"}):
                response = admin.get(url, headers=headers)
                assert response.status_code < 500, (url, response.text)
                pages[f"GET {url} {headers}"] = response.text
    # Forms whose answers are pages: the dry run, refusals, a self-approval refused.
    pages["dry run"] = operator.post("/credentials/api-key/dry-run").text
    pages["rollback refused"] = operator.post(
        f"/rotations/{failed['id']}/rollback", {"reason": "x"}
    ).text
    pages["unconfirmed"] = operator.post(
        "/credentials/api-key/rotate", {"reason": "x", "plan_hash": "0"}
    ).text
    request_id = ids["request_id"][0]
    pages["approve refused"] = admin.post(f"/approvals/{request_id}/approve").text
    pages["audit verified"] = admin.post("/audit/verify").text
    assert 'data-code="rollback-refused"' in pages["rollback refused"]
    assert "evidence" in "".join(pages)  # the evidence downloads were fetched

    with web.store.transaction() as s:
        stored = {
            web.store.reveal(row).reveal()
            for row in s.execute(
                select(VersionRow).where(VersionRow.ciphertext.is_not(None))
            ).scalars()
        }
    issued = stored | {v for v in delivered if v}
    # api-key's v1 (revoked, erased, seen in the file), v2 (current), v3 (rolled back,
    # kept disabled); billing-db waits for approval with none yet.
    assert len(issued) == 3
    # A token or cookie reads `<prefix>_<public id>_<secret>`: the id is shown (audit
    # subjects, the sessions page), the secret never.
    bearer = [*web.tokens.values(), admin.cookie, operator.cookie]
    values = issued | {b.split("_", 2)[2] for b in bearer}
    assert _leaked_into(pages, values) == []
