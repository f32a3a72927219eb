"""An image job belongs to the API key that created it: any other key that reads or cancels it by id is
answered 404, exactly as for an id that does not exist (the attack round read and cancelled another key's
job, images included). An open server (no keys) keeps its jobs readable by anyone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from llmops.stores.keys import new_key
from tests.unit.test_images import FAKE_SD, FAST, loaded, poll_until, start

SLOW = {"size": "256x256", "num_inference_steps": 50}


def add_key(c: TestClient, name: str) -> dict[str, str]:
    key, secret = new_key(name, (), "interactive")
    c.portal.call(c.app.state.services.state.keys.add, key)  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {secret}"}


def status_of(c: TestClient, job_id: str, auth: dict[str, str]) -> Any:
    return c.get(f"/v1/images/jobs/{job_id}", headers=auth).json()["status"]


def test_another_key_cannot_read_or_cancel_a_job(tmp_path: Path) -> None:
    with start(tmp_path, [FAKE_SD]) as c:
        loaded(c)
        alice, bob = add_key(c, "alice"), add_key(c, "bob")
        created = c.post("/v1/images/jobs", json={"prompt": "alice's", **SLOW}, headers=alice)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        unknown = c.get("/v1/images/jobs/imgjob-" + "0" * 32, headers=bob)

        read = c.get(f"/v1/images/jobs/{job_id}", headers=bob)
        cancel = c.delete(f"/v1/images/jobs/{job_id}", headers=bob)
        for r in (read, cancel):  # as if it did not exist: same status and error shape as an unknown id
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
            assert "data" not in r.json()
        assert status_of(c, job_id, alice) in ("queued", "running")  # bob's DELETE did not cancel it

        assert c.delete(f"/v1/images/jobs/{job_id}", headers=alice).status_code == 200  # the owner may
        assert poll_until(lambda: status_of(c, job_id, alice) == "cancelled")


def test_the_owner_reads_its_images_and_others_do_not(tmp_path: Path) -> None:
    with start(tmp_path, [FAKE_SD]) as c:
        loaded(c)
        alice, bob = add_key(c, "alice"), add_key(c, "bob")
        job_id = c.post("/v1/images/jobs", json={"prompt": "x", **FAST}, headers=alice).json()["id"]
        done = poll_until(lambda: (j := c.get(f"/v1/images/jobs/{job_id}", headers=alice).json())
                          ["status"] == "succeeded" and j)
        assert len(done["data"]) == 1
        assert done["data"][0]["b64_json"]
        assert c.get(f"/v1/images/jobs/{job_id}", headers=bob).status_code == 404


def test_an_open_server_keeps_jobs_readable_by_anyone(tmp_path: Path) -> None:
    with start(tmp_path, [FAKE_SD]) as c:
        loaded(c)
        job_id = c.post("/v1/images/jobs", json={"prompt": "x", **SLOW}).json()["id"]
        assert c.get(f"/v1/images/jobs/{job_id}").status_code == 200
        assert c.app.state.services.image_jobs.get(job_id).owner is None  # type: ignore[attr-defined]
        assert c.delete(f"/v1/images/jobs/{job_id}").status_code == 200
