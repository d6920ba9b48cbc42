"""Never pay twice, beyond the billing table: paths found in the third red-team pass where a request
that may have been billed was sent again, or a paid answer was lost, each with the loopback server
counting the paid requests it receives."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest
from banana_pack.nodes.batch import CACHED, BatchSettings, expand_items, run_batch
from banana_pack.nodes.store import ResultStore
from banana_pack.providers.client import generate
from banana_pack.providers.errors import BananaError, MalformedResponse
from banana_pack.providers.outcome import GenerationRequest
from helpers import fal_job_done, fal_submit, png_bytes, point_at, run
from loopback import Recorded, Reply, fixture

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
    server.route("POST", FAL_SUBMIT, Reply(json=fal_submit(server.url, RID, FAL_APP)))
    fal_job_done(server, RID, png_bytes(7, 5))
    return server


def once(settings, root):
    """One run of one item; root None: without a result store (save_to empty)."""
    (outcome,) = run(run_batch(expand_items(["a lighthouse"], [], seed=11), settings, store=ResultStore(root) if root is not None else None))
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


# -- a neighbour's failure while a synchronous paid call is in flight --------------------------------

GOOGLE = BatchSettings(provider="google", model="Nano Banana Pro", resolution="1K")
GENERATE = r":generateContent$"


@pytest.fixture
def slow_google(server, monkeypatch):
    """Google, answering each generation a second after it arrived (the model is drawing); `arrived`
    is set the moment the paid request reaches the server."""
    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "AIzaPaidOnce-0123456789abcdef")
    monkeypatch.setenv("BANANA_GOOGLE_BASE_URL", server.url)
    server.arrived = threading.Event()

    def handler(_req: Recorded) -> Reply:
        server.arrived.set()
        body = fixture("gemini/success_single.json")
        body["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] = base64.b64encode(png_bytes(13, 5)).decode()
        return Reply(json=body, delay=1.0)

    server.route("POST", GENERATE, handler)
    return server


def run_prompt(store: ResultStore, server, cancel_check=None) -> list:
    """Our node as ComfyUI v0.21 runs it (execution.py): a task of the executor's loop. Without a
    cancel_check, another node fails once our paid request has reached the provider, so
    execute_async() returns and asyncio.run() cancels every task still pending, ours included (the
    interrupt flag is not set). With one, the user's interrupt: the executor waits for our node."""
    holder: list = []

    async def execute_async():
        node = asyncio.create_task(run_batch(expand_items(["a kite"], [], seed=3), GOOGLE, store=store, cancel_check=cancel_check))
        node.add_done_callback(holder.append)
        if cancel_check is not None:
            await asyncio.wait({node})
        while not server.arrived.is_set():
            await asyncio.sleep(0.02)

    asyncio.run(execute_async())
    return holder


def test_a_neighbours_failure_does_not_lose_a_synchronous_paid_answer(slow_google, tmp_path):
    """The answer to a paid call in flight when ComfyUI ends the prompt is still received and saved;
    the next run of the prompt is answered from the cache. It used to be dropped with the connection:
    paid at the provider, lost here, and paid again by the re-run."""
    store = ResultStore(tmp_path)
    (task,) = run_prompt(store, slow_google)
    assert task.done()
    assert len(list(tmp_path.rglob("*.png"))) == 1  # the paid image is on disk
    (outcome,) = run(run_batch(expand_items(["a kite"], [], seed=3), GOOGLE, store=ResultStore(tmp_path)))
    assert outcome.status == CACHED
    assert len(slow_google.hits("POST", GENERATE)) == 1, "the re-run paid for the same image again"


def test_after_the_prompt_ended_the_paid_images_download_still_retries(chain, tmp_path):
    """openai-hk answers with a link; the prompt ended while the generation ran. The link's first
    download fails (503): downloads cost nothing and are still retried, so the paid image is saved."""
    arrived = threading.Event()

    def slow_generation(_req: Recorded) -> Reply:
        arrived.set()
        return Reply(json={"data": [{"url": f"{chain.url}/files/late.png"}]}, delay=1.0)

    chain.route("POST", r"^/openai_hk/images/generations$", slow_generation)
    chain.route("GET", r"^/files/late\.png$", [Reply(503, body=b"", content_type="text/plain"), Reply(body=png_bytes(9, 4), content_type="image/png")])
    settings = BatchSettings(provider="openai_hk", model="Nano Banana Pro", resolution="1K")

    async def execute_async():
        asyncio.create_task(run_batch(expand_items(["a kite"], [], seed=3), settings, store=ResultStore(tmp_path)))
        while not arrived.is_set():
            await asyncio.sleep(0.02)

    asyncio.run(execute_async())
    assert len(list(tmp_path.rglob("*.png"))) == 1 and len(chain.hits("GET", r"^/files/late")) == 2


def test_a_users_interrupt_still_stops_a_synchronous_call_at_once(slow_google, tmp_path):
    """The user's own stop is not held up by the wait above: the call ends at once and says it may have
    been billed (the provider draws and bills whether or not anyone waits)."""
    (task,) = run_prompt(ResultStore(tmp_path), slow_google, cancel_check=lambda: slow_google.arrived.is_set())
    assert not task.cancelled()
    (outcome,) = task.result()
    assert outcome.status == "cancelled" and "may have been" in outcome.message
    assert not list(tmp_path.rglob("*.png"))


def test_a_neighbours_failure_during_a_submit_journals_the_job_and_waits_no_further(fal, tmp_path):
    """The same for an asynchronous submit: its answer (the job's handle) is received and journaled,
    then the node stops (no polling after the prompt ended), and the next run attaches to the job.
    The submit used to be dropped mid-answer: a job accepted and billed, its handle lost, and the
    re-run submitted (and paid) a second time."""
    arrived = threading.Event()
    submit = fal_submit(fal.url, RID, FAL_APP)

    def slow_submit(_req: Recorded) -> Reply:
        arrived.set()
        return Reply(json=submit, delay=1.0)

    fal.route("POST", FAL_SUBMIT, slow_submit)
    holder: list = []

    async def execute_async():
        node = asyncio.create_task(run_batch(expand_items(["a lighthouse"], [], seed=11), FAL, store=ResultStore(tmp_path)))
        node.add_done_callback(holder.append)
        while not arrived.is_set():
            await asyncio.sleep(0.02)

    asyncio.run(execute_async())
    (task,) = holder
    assert task.cancelled()  # stopped after journaling, not run on
    assert len(list((tmp_path / ".journal").glob("*.json"))) == 1
    assert not fal.hits("GET", rf"/requests/{RID}")  # no polling once the prompt was over
    assert once(FAL, tmp_path).status == "ok"
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"


# -- a paid request answered 2xx, then a failure: the generation ran, so it never moves on ------------


@pytest.fixture
def chain(server, monkeypatch):
    """Every preset on the loopback fakes; a call runs on a preset, then BANANA_FALLBACK's google."""
    from banana_pack.providers.engine.transport import HttpEngine
    from banana_pack.providers.failover import KEYS
    from fake_providers import point_presets_at, script_all

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))
    point_presets_at(server, monkeypatch.setenv)
    script_all(server)
    monkeypatch.setenv("BANANA_FALLBACK", "google")
    KEYS.clear()
    yield server
    KEYS.clear()


def served_by_chain(first: str):
    from banana_pack.providers.engine import CallContext
    from banana_pack.providers.failover import generate_with_failover

    attempts: list = []
    run(generate_with_failover([first, "google"], "Nano Banana Pro", GenerationRequest(prompt="a red kite", seed=1), CallContext(), attempts=attempts))


@pytest.mark.parametrize(
    "body",
    [
        {"error": {"code": 504, "message": "Deadline expired before operation could complete.", "status": "DEADLINE_EXCEEDED"}},
        {"error": {"code": 524, "message": "upstream timeout"}},
    ],
    ids=["504", "524"],
)
def test_a_gateway_timeout_inside_a_200_is_not_failed_over(chain, body):
    """A gateway that wraps its upstream's timeout in HTTP 200 ({"error": {"code": 504}}): the
    upstream may still be generating, and billing, so the call stays where it was. It used to move
    to the fallback provider, which generated (and billed) the same image a second time."""
    chain.route("POST", r"^/apiyi/models/[^/]+:generateContent$", Reply(json=body))
    with pytest.raises(BananaError) as caught:
        served_by_chain("apiyi")
    assert caught.value.maybe_billed and "may have been" in str(caught.value)
    assert not chain.hits("POST", r"^/google/"), "the fallback provider was paid for the same image"


def test_a_result_link_that_cannot_be_downloaded_is_not_failed_over(chain):
    """openai-hk answered 200 with a link to the image: it generated (and billed) it. The download
    failing (here 503 on every try) used to move the call to the fallback provider, paying again;
    now the error says the call may have been billed and names the request id."""
    chain.route("POST", r"^/openai_hk/images/generations$", Reply(json={"data": [{"url": f"{chain.url}/files/kite.png"}]}, headers={"x-request-id": "req-hk-1"}))
    chain.route("GET", r"^/files/", Reply(503, body=b"", content_type="text/plain"))
    with pytest.raises(BananaError) as caught:
        served_by_chain("openai_hk")
    assert len(chain.hits("POST", r"^/openai_hk/images/generations$")) == 1
    assert not chain.hits("POST", r"^/google/"), "the fallback provider was paid for the same image"
    assert caught.value.maybe_billed and "may have been" in str(caught.value) and "req-hk-1" in str(caught.value)


@pytest.mark.parametrize("body", [{"candidates": "not a list"}, [1, 2]], ids=["candidates", "list"])
def test_a_200_of_an_unexpected_shape_says_it_may_have_been_billed(chain, body):
    """The provider answered 200: it ran. An answer the parser cannot read is a MalformedResponse that
    says so (it used to be a bare AttributeError, or an error without the billing hint)."""
    chain.route("POST", r"^/apiyi/models/[^/]+:generateContent$", Reply(json=body, headers={"x-request-id": "req-odd-shape"}))
    with pytest.raises(MalformedResponse) as caught:
        served_by_chain("apiyi")
    assert caught.value.maybe_billed and "req-odd-shape" in str(caught.value)
    assert not chain.hits("POST", r"^/google/")


# -- Google Batch Mode -------------------------------------------------------------------------------


def test_a_batch_create_answered_200_with_no_object_keeps_the_journal(server, tmp_path, monkeypatch):
    """Google created the batch (and will bill it) but its 200 answer is a JSON list, not the operation:
    the journal entry (by display name) used to be dropped as if the create had been refused, and the
    re-queue created, and paid for, a second batch. Now the re-queue finds the batch by its name."""
    from banana_pack.nodes.render import RenderInputs, render
    from fake_gemini_batch import RUNNING, SUCCEEDED, FakeBatchMode

    monkeypatch.setenv("BANANA_GOOGLE_API_KEY", "batch-mode-key-0123456789")
    point_at(monkeypatch, "google", server.url)
    monkeypatch.setenv("BANANA_GOOGLE_BATCH_MAX_WAIT", "20")
    fake = FakeBatchMode(server, states=[RUNNING, SUCCEEDED]).install()
    answers = iter([True])

    def create(req: Recorded) -> Reply:
        reply = fake.create(req)
        return Reply(json=[reply.json]) if next(answers, False) else reply  # the first answer is not an object

    server.route("POST", r":batchGenerateContent$", create)
    asked = RenderInputs(prompts=["cat 1\ncat 2"], prompt_per_line=True, delivery="batch", provider="google", model="Nano Banana 2", resolution="1K", on_failure="skip")
    with pytest.raises(BananaError) as caught:
        run(render(asked, store_root=tmp_path))
    assert caught.value.maybe_billed and "looks for the batch" in str(caught.value)
    assert len(fake.batches) == 1 and list((tmp_path / ".journal").glob("*.json"))
    again = run(render(asked, store_root=tmp_path))
    assert len(server.hits("POST", r":batchGenerateContent$")) == 1, "a second batch was created and billed"
    assert [row["status"] for row in again.report["items"]] == ["ok", "ok"]


def test_a_refused_submit_after_an_upload_is_not_called_maybe_billed(chain):
    """Only the answer to the request that generates counts: EvoLink's reference upload answered 200,
    then the submit was refused (400), which costs nothing and says nothing of billing."""
    from banana_pack.providers.errors import InvalidRequest
    from banana_pack.providers.outcome import ImageInput

    chain.route("POST", r"^/evolink/images/generations$", Reply(400, fixture("evolink/error_400.json")))
    reference = ImageInput(png_bytes(4, 4), "image/png", 4, 4)
    with pytest.raises(InvalidRequest) as caught:
        run(generate("evolink", "Nano Banana Pro", GenerationRequest(prompt="a red kite", images=(reference,))))
    assert not caught.value.maybe_billed and "may have been" not in str(caught.value)


# -- a journaled job the provider ended without a result ---------------------------------------------

EVOLINK = BatchSettings(provider="evolink", model="Nano Banana 2")
EVOLINK_SUBMIT = r"^/v1/images/generations$"
EVOLINK_TASK = r"^/v1/tasks/[^/]+$"


@pytest.fixture
def evolink(server, monkeypatch):
    from banana_pack.providers.engine.transport import HttpEngine

    monkeypatch.setattr(HttpEngine, "_backoff", staticmethod(lambda *_: 0.01))
    monkeypatch.setenv("BANANA_EVOLINK_API_KEY", "sk-evolink-paid-once-0123")
    monkeypatch.setenv("BANANA_EVOLINK_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("BANANA_EVOLINK_POLL_FIRST_DELAY", "0.02")
    monkeypatch.setenv("BANANA_EVOLINK_POLL_MAX_DELAY", "0.05")
    monkeypatch.setenv("BANANA_EVOLINK_UPLOAD_URL", server.url + "/upload")
    monkeypatch.setenv("BANANA_EVOLINK_FILE_DELETE_URL", server.url + "/files/{file_id}")
    server.route("POST", EVOLINK_SUBMIT, Reply(json=fixture("evolink/create.json")))
    done = fixture("evolink/completed_single.json")
    done["results"] = [f"{server.url}/generated/one.png"]
    done.pop("result_data", None)
    server.done = done
    server.route("GET", r"^/generated/", Reply(body=png_bytes(8, 4), content_type="image/png"))
    return server


@pytest.mark.parametrize(
    "ended",
    [
        {"status": "cancelled"},
        {"status": "failed", "error": {"code": "internal_error", "message": "worker crashed"}},
    ],
    ids=["cancelled", "failed"],
)
def test_a_journaled_job_the_provider_ended_without_a_result_runs_anew_on_the_next_run(evolink, tmp_path, ended):
    """Cancel, then re-run: the provider's final status says the job is over and produced nothing, so
    the re-run submits the request anew. It used to attach to the dead job on every run, so the same
    request could never be rendered again (until housekeeping dropped the journal entry)."""
    root = tmp_path / "store"
    evolink.route("GET", EVOLINK_TASK, Reply(503, body=b"busy", content_type="text/plain"))
    assert once(EVOLINK, root).status == "failed"  # journaled, its fate unknown
    task_id = fixture("evolink/create.json")["id"]
    evolink.route("GET", EVOLINK_TASK, [Reply(json={"id": task_id, "progress": 0, **ended}), Reply(json=evolink.done)])
    assert once(EVOLINK, root).status == "ok"
    assert len(evolink.hits("POST", EVOLINK_SUBMIT)) == 2
    assert not list((root / ".journal").glob("*.json"))


# -- several images in one answer, one of them not downloadable ----------------------------------------


def test_the_images_that_did_download_are_kept_when_another_link_fails(fal, tmp_path):
    """fal answered two image links for one paid call; the second one 404s. The first image, paid
    for, used to be dropped with the error (the first failure stopped the rest), and the re-run paid
    for both again. Now it is saved and cached, with a warning naming the one that failed."""
    result = fixture("fal/result_single.json")
    result["images"] = [{"url": f"{fal.url}/files/{RID}.png"}, {"url": f"{fal.url}/files/{RID}-2.png"}]
    fal.route("GET", rf"/requests/{RID}$", Reply(json=result))
    fal.route("GET", rf"^/files/{RID}-2\\.png$", Reply(404, {"detail": "Not found"}))
    items = expand_items(["a lighthouse"], [], seed=11, count=2, max_count=4)
    (outcome,) = run(run_batch(items, FAL, store=ResultStore(tmp_path)))
    assert outcome.status == "ok" and len(outcome.images) == 1 and len(outcome.files) == 1
    assert any("could not be downloaded" in warning for warning in outcome.warnings)
    (again,) = run(run_batch(items, FAL, store=ResultStore(tmp_path)))
    assert again.status == CACHED and len(fal.hits("POST", FAL_SUBMIT)) == 1


# -- a 5xx in JSON that is not the provider's own error ------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"message": "An invalid response was received from the upstream server"},  # Kong, after forwarding
        {"message": "Internal server error"},  # AWS API Gateway, when its backend failed
        {},
        [],
    ],
    ids=["kong", "aws-api-gateway", "empty-object", "list"],
)
def test_a_5xx_whose_json_is_a_gateways_not_the_providers_is_not_resent(chain, body):
    """The table resends a 500/502/503 only when it carries the provider's own error envelope (Google's,
    OpenAI's and new-api's {"error": ...}, fal's {"detail": ...}, APIMart's {"code", "msg"}). An API
    gateway's JSON page in front of a reseller is no such word: the request may have run behind it.
    Any JSON object used to count, and the paid request was sent up to four times."""
    chain.route("POST", r"^/google/models/[^/]+:generateContent$", Reply(502, json=body, headers={"x-request-id": "req-kong-1"}))
    with pytest.raises(BananaError) as caught:
        run(generate("google", "Nano Banana Pro", GenerationRequest(prompt="a red kite")))
    assert len(chain.hits("POST", r"^/google/models/")) == 1, "a request that may have run was paid for again"
    assert caught.value.maybe_billed and "req-kong-1" in str(caught.value)


# -- an asynchronous submit answered with the provider's 5xx -------------------------------------------


def test_a_submit_answered_with_a_reported_5xx_says_the_job_may_exist(evolink):
    """The table does not resend such a submit because the job may have been accepted (and billed)
    all the same; the error now says so, with the request id, and the references the job may still
    read are not deleted. It used to read like a plain failure."""
    from banana_pack.providers.errors import UpstreamUnavailable
    from banana_pack.providers.outcome import ImageInput

    unavailable = {"error": {"code": 503, "message": "Service unavailable", "type": "service_unavailable_error"}}
    evolink.route("POST", EVOLINK_SUBMIT, Reply(503, unavailable, headers={"Retry-After": "0", "x-request-id": "req-evo-503"}))
    evolink.route("POST", r"^/upload$", Reply(json={"success": True, "data": {"file_id": "file_1", "file_url": f"{evolink.url}/uploads/ref1.png"}}))
    evolink.route("DELETE", r"^/files/", Reply(json={"success": True}))
    reference = ImageInput(png_bytes(4, 4), "image/png", 4, 4)
    with pytest.raises(UpstreamUnavailable) as caught:
        run(generate("evolink", "Nano Banana Pro", GenerationRequest(prompt="a red kite", images=(reference,))))
    assert len(evolink.hits("POST", EVOLINK_SUBMIT)) == 1
    assert caught.value.maybe_billed and "may have been" in str(caught.value) and "req-evo-503" in str(caught.value)
    assert not evolink.hits("DELETE", r"^/files/")


def test_cancel_then_rerun_submits_the_fal_request_anew(fal, tmp_path):
    """The user stops a fal job (it is cancelled in the queue); the re-run attaches to the journaled job,
    whose result fal answers 'Request was cancelled' (400; client_cancelled is 499): the job is over, so
    the request is submitted anew and rendered, not reported as failed on every run from then on."""
    polled = threading.Event()

    def in_progress(_req: Recorded) -> Reply:
        polled.set()
        return Reply(202, fixture("fal/status_in_progress.json"))

    fal.route("GET", rf"/requests/{RID}/status$", in_progress)
    fal.route("PUT", rf"/requests/{RID}/cancel$", Reply(202, {"status": "CANCELLATION_REQUESTED"}))
    items = expand_items(["a lighthouse"], [], seed=11)
    (stopped,) = run(run_batch(items, FAL, store=ResultStore(tmp_path), cancel_check=polled.is_set))
    assert stopped.status == "cancelled" and fal.hits("PUT", r"/cancel$")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    done = fixture("fal/result_single.json")
    done["images"][0]["url"] = f"{fal.url}/files/{RID}.png"
    fal.route("GET", rf"/requests/{RID}$", [Reply(400, {"detail": "Request was cancelled"}), Reply(json=done)])
    assert once(FAL, tmp_path).status == "ok"
    assert len(fal.hits("POST", FAL_SUBMIT)) == 2


# -- the user's stop while an asynchronous submit is answered --------------------------------------


def test_a_stop_during_a_submit_waits_for_its_answer_and_journals_the_job(evolink, tmp_path):
    """The user presses stop while EvoLink is answering the submit (a job it accepts and bills).
    The answer is worth a moment: the job is journaled, the node stops, and the re-run collects it.
    The answer used to be dropped: the job ran and billed with no handle, and the re-run paid again."""
    arrived = threading.Event()

    def slow_submit(_req: Recorded) -> Reply:
        arrived.set()
        return Reply(json=fixture("evolink/create.json"), delay=1.0)

    evolink.route("POST", EVOLINK_SUBMIT, slow_submit)
    evolink.route("GET", EVOLINK_TASK, Reply(json=evolink.done))
    items = expand_items(["a lighthouse"], [], seed=11)
    (stopped,) = run(run_batch(items, EVOLINK, store=ResultStore(tmp_path), cancel_check=arrived.is_set))
    assert stopped.status == "cancelled" and stopped.request_id == fixture("evolink/create.json")["id"]
    assert len(list((tmp_path / ".journal").glob("*.json"))) == 1
    assert once(EVOLINK, tmp_path).status == "ok"
    assert len(evolink.hits("POST", EVOLINK_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"


def test_a_link_the_model_wrote_to_a_private_host_does_not_drop_the_paid_image(chain):
    """A chat answer carries the paid image inline, after a markdown image link to a private address
    in the model's words (which a prompt can steer), refused before any connection. One image was
    asked for, so the link took the only place and the inline image was dropped as an extra: the call
    failed and the paid image was lost. Now the next image of the answer takes the failed one's place."""
    import base64 as b64

    inline = "data:image/png;base64," + b64.b64encode(png_bytes(6, 3)).decode()
    content = f"A preview: ![copy](http://10.1.2.3/copy.png) and the image: ![result]({inline})"
    answer = {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
    chain.route("POST", r"^/openai_hk_chat/chat/completions$", Reply(json=answer))
    result = run(generate("openai_hk_chat", "Nano Banana Pro", GenerationRequest(prompt="a red kite")))
    assert [(im.width, im.height) for im in result.images] == [(6, 3)]
    assert any("10.1.2.3" in warning for warning in result.warnings)


# -- no save folder: the job journal lives in the pack's config folder ----------------------------------


def test_without_save_to_a_rerun_attaches_to_the_fal_job_instead_of_paying_again(fal, isolated_config):
    """save_to empty (no result store): the accepted job used to be journaled nowhere, so the re-run
    after a failed wait (a stop, a timeout, a crash) submitted and paid for it again."""
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    first = once(FAL, None)
    assert first.status == "failed" and first.request_id == RID
    (entry,) = (isolated_config / "jobs" / ".journal").glob("*.json")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    second = once(FAL, None)
    assert second.status == "ok" and [(im.width, im.height) for im in second.images] == [(7, 5)]
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not entry.exists(), "the collected job stays journaled"


def test_without_save_to_a_stopped_evolink_job_is_collected_by_the_next_run(evolink, isolated_config):
    evolink.route("GET", EVOLINK_TASK, Reply(503, body=b"busy", content_type="text/plain"))
    assert once(EVOLINK, None).status == "failed"
    evolink.route("GET", EVOLINK_TASK, Reply(json=evolink.done))
    assert once(EVOLINK, None).status == "ok"
    assert len(evolink.hits("POST", EVOLINK_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not list((isolated_config / "jobs" / ".journal").glob("*.json"))


def test_without_save_to_the_node_journals_the_job_outside_the_output_folder(fal, isolated_config, tmp_path):
    """Through the node's render(), as ComfyUI runs it with save_to empty: nothing is written under
    the output folder (anyone who reaches ComfyUI can write there), and the re-run attaches."""
    from banana_pack.nodes.render import RenderInputs, render

    output = tmp_path / "output"
    output.mkdir()
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    with pytest.raises(BananaError):
        run(render(inputs, store_root=None, output_root=output))
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    done = run(render(inputs, store_root=None, output_root=output))
    assert tuple(done.images.shape[:3]) == (1, 5, 7)
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not any(output.rglob("*")), "the journal was written under ComfyUI's output folder"


def test_the_jobs_tab_lists_and_cancels_a_job_journaled_without_save_to(fal, isolated_config, tmp_path):
    """A re-run's error for a journaled job says the jobs tab lists it: so it must, without save_to too."""
    from banana_pack.nodes.jobs_routes import cancel_job, jobs_summary

    output = tmp_path / "output"
    output.mkdir()
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    assert once(FAL, None).status == "failed"
    (job,) = run(jobs_summary(base=output, with_status=False))["jobs"]
    assert job["task_id"] == RID and job["provider"] == "fal" and job["id"].startswith("config:") and job["can_cancel"]
    fal.route("PUT", rf"/requests/{RID}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    status, _ = run(cancel_job({"id": job["id"]}, base=output))
    assert status == 200 and len(fal.hits("PUT", rf"/requests/{RID}/cancel$")) == 1
    assert run(cancel_job({"id": "config:" + "0" * 64}, base=output))[0] == 404


def test_without_save_to_a_job_whose_answer_was_unusable_is_not_attached_again(fal, isolated_config):
    """Its answer arrived (bytes that are no image): the job is collected, as with a save folder, so the
    re-run is a new request instead of fetching the same unusable bytes for as long as the job lives."""
    fal.route("GET", rf"^/files/{RID}\.png$", Reply(body=b"\x00 not an image" * 8, content_type="image/png"))
    assert once(FAL, None).reason == "unusable_image"
    assert not list((isolated_config / "jobs" / ".journal").glob("*.json"))


# -- a re-run with another save_to still finds the job ------------------------------------------------


def test_a_rerun_with_save_to_set_attaches_to_the_job_journaled_without_it(fal, isolated_config, tmp_path):
    """A run without save_to journals its job in the config folder; the user then sets save_to and
    queues again. The run looked only in its save folder's journal, and paid for the job again."""
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    assert once(FAL, None).status == "failed"
    (entry,) = (isolated_config / "jobs" / ".journal").glob("*.json")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    second = once(FAL, tmp_path / "saved")
    assert second.status == "ok" and second.files
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not entry.exists(), "the collected job stays journaled in the config folder"
    assert not list((tmp_path / "saved" / ".journal").glob("*.json"))


@pytest.mark.parametrize("second_save_to", ["other", None], ids=["another save_to", "save_to emptied"])
def test_a_rerun_with_another_or_no_save_to_attaches_to_the_job_of_a_save_folder(fal, isolated_config, tmp_path, second_save_to):
    """Through the node's render(): the job journaled in one save folder under ComfyUI's output folder
    is collected by a re-run that saves elsewhere, or nowhere."""
    from banana_pack.nodes.render import RenderInputs, render

    output = tmp_path / "output"
    output.mkdir()
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    with pytest.raises(BananaError):
        run(render(inputs, store_root=output / "first", output_root=output))
    (entry,) = (output / "first" / ".journal").glob("*.json")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    done = run(render(inputs, store_root=output / second_save_to if second_save_to else None, output_root=output))
    assert tuple(done.images.shape[:3]) == (1, 5, 7)
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not entry.exists(), "the collected job stays journaled in the first save folder"


def test_a_journal_entry_planted_in_another_save_folder_is_not_attached(fal, isolated_config, tmp_path):
    """Other folders' journals are read as the run's own: only entries this install signed for this request."""
    from banana_pack.nodes.render import RenderInputs, render

    output = tmp_path / "output"
    planted = output / "planted" / ".journal"
    planted.mkdir(parents=True)
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    with pytest.raises(BananaError):
        run(render(inputs, store_root=output / "first", output_root=output))
    (entry,) = (output / "first" / ".journal").glob("*.json")
    forged = entry.read_text().replace(f"/requests/{RID}", "/requests/someone-elses-job")
    (planted / entry.name).write_text(forged)
    entry.unlink()
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    run(render(inputs, store_root=output / "second", output_root=output))
    assert len(fal.hits("POST", FAL_SUBMIT)) == 2  # a fresh request: the forged entry was never used
    assert not fal.hits("GET", r"someone-elses-job")


def _fail_then_collect(fal, inputs, first_root, second_root, output):
    """A run into `first_root` whose job's status check fails (journaled), then a re-run into `second_root`."""
    from banana_pack.nodes.render import render

    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    with pytest.raises(BananaError):
        run(render(inputs, store_root=first_root, output_root=output))
    fal.route("GET", rf"/requests/{RID}/status$", Reply(json=fixture("fal/status_completed.json")))
    return run(render(inputs, store_root=second_root, output_root=output))


@pytest.mark.parametrize("second_save_to", ["projects/b", "other", None], ids=["a sibling", "another folder", "save_to emptied"])
def test_a_rerun_attaches_to_the_job_of_a_nested_save_folder(fal, isolated_config, tmp_path, second_save_to):
    """save_to `projects/a`: its journal is not directly under the output folder, so the scan of the
    output folder's subfolders missed it and the re-run paid again. The index in the config folder names it."""
    from banana_pack.nodes.render import RenderInputs

    output = tmp_path / "output"
    output.mkdir()
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    done = _fail_then_collect(fal, inputs, output / "projects" / "a", output / second_save_to if second_save_to else None, output)
    assert tuple(done.images.shape[:3]) == (1, 5, 7)
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"
    assert not list((output / "projects" / "a" / ".journal").glob("*.json")), "the collected job stays journaled"
    assert not list(output.glob("*.json")), "the index belongs in the config folder, not the output folder"


def test_folders_planted_in_the_output_folder_do_not_hide_the_users_save_folder(fal, isolated_config, tmp_path):
    """Anyone who reaches ComfyUI can create folders in the output folder. Sixty planted folders with
    journals sorted before the user's, and the lookup read only the first fifty it found."""
    from banana_pack.nodes.journals import MAX_SAVE_FOLDERS_WITH_JOURNALS
    from banana_pack.nodes.render import RenderInputs

    output = tmp_path / "output"
    for n in range(MAX_SAVE_FOLDERS_WITH_JOURNALS + 10):
        (output / f"aa{n:03d}" / ".journal").mkdir(parents=True)
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    done = _fail_then_collect(fal, inputs, output / "zz_mine", output / "other", output)
    assert tuple(done.images.shape[:3]) == (1, 5, 7)
    assert len(fal.hits("POST", FAL_SUBMIT)) == 1, "the re-run submitted (and paid for) the job again"


def test_the_index_names_only_real_folders_inside_the_output_folder(isolated_config, tmp_path):
    """The index only says where to look; what it names must still be a folder with a journal inside
    the output folder, reached through no link, and an oversized index is not read."""
    import json

    from banana_pack.nodes.journals import SAVE_FOLDER_INDEX, record_save_folder, save_folders_with_journals

    output, outside = tmp_path / "output", tmp_path / "outside"
    for folder in (output / "kept" / "deep", outside, output / "plain"):
        (folder / ".journal").mkdir(parents=True)
    (output / "link").symlink_to(outside, target_is_directory=True)
    (output / "nojournal").mkdir()
    (output / "linked_journal").mkdir()  # found by the scan, its journal a link elsewhere: not listed either
    (output / "linked_journal" / ".journal").symlink_to(outside / ".journal", target_is_directory=True)
    index = isolated_config / "jobs" / SAVE_FOLDER_INDEX
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(["../outside", str(outside), "link", "kept/../plain", "nojournal", "kept\\deep", 7, "kept/deep"]))
    assert save_folders_with_journals(output) == [output / "kept" / "deep", output / "plain"]
    record_save_folder(output, output / "plain")  # newest first; what leads nowhere goes
    assert json.loads(index.read_text()) == ["plain", "kept/deep"]
    assert save_folders_with_journals(output) == [output / "plain", output / "kept" / "deep"]
    record_save_folder(output, outside)  # not under the output folder: not recorded
    assert json.loads(index.read_text()) == ["plain", "kept/deep"]
    index.write_text(json.dumps(["kept/deep"] + ["x" * 900] * 100))  # over 64 KB
    assert save_folders_with_journals(output) == [output / "plain"]


def test_the_jobs_tab_lists_and_cancels_the_job_of_a_nested_save_folder(fal, isolated_config, tmp_path):
    """The tab lists what a re-run looks through, nested folders too, and cancels by the folder's name."""
    from banana_pack.nodes.jobs_routes import cancel_job, jobs_summary
    from banana_pack.nodes.render import RenderInputs, render

    output = tmp_path / "output"
    output.mkdir()
    inputs = RenderInputs(provider="fal", model="Nano Banana Pro", prompts=["a lighthouse"], seed=11, resolution="1K")
    fal.route("GET", rf"/requests/{RID}/status$", Reply(503, body=b"busy", content_type="text/plain"))
    with pytest.raises(BananaError):
        run(render(inputs, store_root=output / "projects" / "a", output_root=output))
    (job,) = run(jobs_summary(base=output, with_status=False))["jobs"]
    key = job["id"].rsplit("/", 1)[1]
    assert job["id"] == f"projects/a/{key}" and job["folder"] == "projects/a" and job["task_id"] == RID
    (output / "elsewhere").symlink_to(output / "projects" / "a", target_is_directory=True)
    for forged in (f"projects/../projects/a/{key}", f"elsewhere/{key}", f"/projects/a/{key}", f"projects/b/{key}"):
        assert run(cancel_job({"id": forged}, base=output))[0] == 404, forged
    fal.route("PUT", rf"/requests/{RID}/cancel$", Reply(json={"status": "CANCELLATION_REQUESTED"}))
    assert run(cancel_job({"id": job["id"]}, base=output))[0] == 200
    assert len(fal.hits("PUT", rf"/requests/{RID}/cancel$")) == 1
