"""Never pay twice, beyond the billing table: paths found in the third red-team pass where a request
that may have been billed was sent again, or a paid answer was lost, each with the loopback server
counting the paid requests it receives."""

from __future__ import annotations

import pytest
from banana_pack.nodes.batch import BatchSettings, expand_items, run_batch
from banana_pack.nodes.store import ResultStore
from helpers import png_bytes, point_at, run
from loopback import Reply, fixture

FAL_APP = "fal-ai/nano-banana-pro"
FAL_SUBMIT = rf"^/{FAL_APP}$"
FAL = BatchSettings(provider="fal", model="Nano Banana Pro", resolution="1K")
RID = "job-paid-once"


@pytest.fixture
def fal(server, monkeypatch):
    from banana_pack.providers.engine.transport import HttpEngine

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))  # retries at once: only their count matters
    monkeypatch.setenv("FAL_KEY", "fal-paid-once-key:secret-789")
    point_at(monkeypatch, "fal", server.url)
    base = f"{server.url}/{FAL_APP}/requests/{RID}"
    submit = fixture("fal/submit.json")
    submit.update(request_id=RID, response_url=base, status_url=f"{base}/status", cancel_url=f"{base}/cancel")
    server.route("POST", FAL_SUBMIT, Reply(json=submit))
    server.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    result = fixture("fal/result_single.json")
    result["images"][0]["url"] = f"{server.url}/files/{RID}.png"
    server.route("GET", rf"/requests/{RID}$", Reply(json=result))
    server.route("GET", rf"^/files/{RID}\.png$", Reply(body=png_bytes(7, 5), content_type="image/png"))
    return server


def once(settings, root):
    (outcome,) = run(run_batch(expand_items(["a lighthouse"], [], seed=11), settings, store=ResultStore(root)))
    return outcome


# -- attaching to a journaled job ------------------------------------------------------------------


@pytest.mark.parametrize(
    "status_answer",
    [
        Reply(401, {"detail": "Invalid key"}),
        Reply(403, {"detail": "Forbidden"}),
        Reply(400, {"detail": "Something the pack does not know"}),
    ],
    ids=["401", "403", "400"],
)
def test_an_attach_that_fails_without_the_job_being_gone_never_submits_again(fal, tmp_path, status_answer):
    """A re-run attaches to the journaled job. A status endpoint that refuses the key (rotated since),
    or answers a 400 the pack does not understand, says nothing about the job: it may have finished
    and been billed. Submitting anew used to pay for the same request a second time."""
    root = tmp_path / "store"
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    assert once(FAL, root).status == "failed"
    (journal,) = (root / ".journal").glob("*.json")
    fal.route("GET", rf"/requests/{RID}/status$", status_answer)
    second = once(FAL, root)
    assert second.status == "failed"
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the journaled job was paid for again"
    assert journal.exists() and second.request_id == RID
    assert "NOT submitted again" in second.message and RID in second.message


@pytest.mark.parametrize("gone", [Reply(404, {"detail": "Request not found"}), Reply(422, {"detail": [{"msg": "invalid prompt", "type": "value_error"}]})], ids=["404", "422"])
def test_an_attach_to_a_job_the_provider_says_is_gone_runs_it_anew(fal, tmp_path, gone):
    root = tmp_path / "store"
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    assert once(FAL, root).status == "failed"
    fal.route("GET", rf"/requests/{RID}/status$", [gone, Reply(json=fixture("fal/status_completed.json"))])
    if gone.status == 404:  # no status endpoint: the result URL is asked too, and answers the same
        fal.route("GET", rf"/requests/{RID}$", [gone, Reply(json={"images": [{"url": f"{fal.url}/files/{RID}.png"}]})])
    assert once(FAL, root).status == "ok"
    assert len(fal.hits("POST", FAL_SUBMIT)) == 2
