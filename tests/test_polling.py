"""Polling that follows the job: a poll soon after submit, backoff to the provider's cadence, its
Retry-After honoured, and a poll budget per job stated in the catalog and kept (polls are counted
on the loopback server). Upper bounds only: a loaded machine polls less, never more."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest
from banana_pack.providers import GenerationRequest, generate
from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.engine import BUDGET_WINDOW, PollCadence, PollClock, polling
from helpers import png_bytes, run
from loopback import Recorded, Reply, fixture

POLLING_FAMILIES = ("fal_queue", "async_tasks")
RID = "551a32da-52b2-4be8-bf2f-bfb7cce2b324"


def cadence_of(spec) -> PollCadence:
    options = spec.options
    return PollCadence(first=float(options["poll_first_delay"]), every=float(options["poll_max_delay"]), budget=int(options["poll_budget"]))


@pytest.mark.parametrize("spec", [s for s in PRESETS if s.family in POLLING_FAMILIES], ids=lambda s: s.id)
def test_every_polling_preset_states_a_cadence_and_a_budget_it_keeps(spec):
    cadence = cadence_of(spec)
    assert cadence.first < 1.0  # a job that is done at once is seen well within a second
    assert 0 < cadence.every <= 5.0
    assert cadence.polls_in_window() <= cadence.budget  # the backoff alone stays in the budget


def test_clock_backs_off_to_the_cadence_and_honours_hints():
    clock = PollClock(PollCadence(first=0.25, every=3.0, budget=100))
    now, delays = 0.0, []
    for _ in range(6):
        now += (delays[-1] if delays else clock.first_delay)
        delays.append(clock.next_delay(now))
    assert [clock.first_delay, *delays] == [0.25, 0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert clock.next_delay(now + 3.0, hint=7.5) == 7.5  # the provider's Retry-After wins


def test_clock_spends_at_most_the_budget_in_any_window():
    clock = PollClock(PollCadence(first=0.0, every=0.0, budget=5))
    now, polls = 0.0, []
    while now < 3 * BUDGET_WINDOW and len(polls) < 10_000:
        polls.append(now)
        now += clock.next_delay(now, hint=0.1 if len(polls) % 2 else None)  # hints cannot overspend it
    for start in polls:
        assert sum(start <= t < start + BUDGET_WINDOW for t in polls) <= 5


# -- on the loopback server ---------------------------------------------------------------------------


class Job:
    """One remote job that finishes `seconds` after its submit; counts the polls it gets."""

    def __init__(self, seconds: float, retry_after: str | None = None) -> None:
        self.seconds, self.retry_after = seconds, retry_after
        self.submitted: float | None = None
        self.polls: list[float] = []
        self.lock = threading.Lock()

    def submit(self) -> None:
        self.submitted = time.monotonic()

    def poll(self) -> bool:
        """Record a poll; True when the job is done by now."""
        with self.lock:
            self.polls.append(time.monotonic())
            return self.polls[-1] - self.submitted >= self.seconds

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after} if self.retry_after else {}

    def duration(self) -> float:
        return self.polls[-1] - self.submitted


def script_evolink(server, job: Job, flavor: str) -> None:
    created = fixture("evolink/create.json" if flavor == "evolink" else "apimaster/submit.json")
    running = fixture("evolink/processing.json" if flavor == "evolink" else "apimaster/in_progress.json")
    done = json.loads(json.dumps(fixture("evolink/completed_single.json" if flavor == "evolink" else "apimaster/completed_single.json")))
    done = json.loads(json.dumps(done).replace("https://files.evolink.ai", server.url).replace("https://apimaster.ai", server.url).replace("https://upload.apimart.ai", server.url))

    def submit(req: Recorded) -> Reply:
        job.submit()
        return Reply(json=created)

    def task(req: Recorded) -> Reply:
        return Reply(json=done) if job.poll() else Reply(json=running, headers=job.headers)

    server.route("POST", r"^/v1/images/generations(/async)?$", submit)
    server.route("GET", r"^/v1/tasks/[^/]+$", task)
    server.route("GET", r"^/(generated|f|imgs)/", Reply(body=png_bytes(8, 4), content_type="image/png"))


def script_fal(server, job: Job, host: str) -> None:
    app = "fal-ai/nano-banana"
    body = fixture("fal/submit.json")
    for key in ("response_url", "status_url", "cancel_url"):
        body[key] = body[key].replace("https://queue.fal.run/fal-ai/nano-banana", f"{host}/{app}")
    result = fixture("fal/result_single.json")
    result["images"][0]["url"] = f"{server.url}/files/out.png"

    def submit(req: Recorded) -> Reply:
        job.submit()
        return Reply(json=body)

    def status(req: Recorded) -> Reply:
        if job.poll():
            return Reply(json=fixture("fal/status_completed.json"))
        return Reply(status=202, json=fixture("fal/status_in_progress.json"), headers=job.headers)

    server.route("POST", rf"^/{app}$", submit)
    server.route("GET", rf"^/{app}/requests/{RID}/status$", status)
    server.route("GET", rf"^/{app}/requests/{RID}$", Reply(json=result))
    server.route("GET", r"^/files/out\.png$", Reply(body=png_bytes(8, 4), content_type="image/png"))


PRESET_SETUP = {
    "evolink": lambda server, job: script_evolink(server, job, "evolink"),
    "apimaster": lambda server, job: script_evolink(server, job, "apimaster"),
    "fal": lambda server, job: script_fal(server, job, server.url),
    "openai_hk_fal": lambda server, job: script_fal(server, job, "https://queue.fal.run"),
}


@pytest.fixture
def presets(server, monkeypatch):
    for provider in PRESET_SETUP:
        monkeypatch.setenv(f"BANANA_{provider.upper()}_BASE_URL", server.url + ("/v1" if provider in ("evolink", "apimaster") else ""))
    for owner in ("evolink", "apimaster", "openai_hk"):
        monkeypatch.setenv(f"BANANA_{owner.upper()}_API_KEY", f"polling-test-key-{owner}-0123")
    monkeypatch.setenv("FAL_KEY", "fal-key-id-0123:fal-key-secret-4567")
    return server


def generate_on(provider: str):
    return run(generate(provider, "Nano Banana", GenerationRequest(prompt="a kite over dunes")))


@pytest.mark.parametrize("provider", list(PRESET_SETUP))
def test_a_job_done_at_once_takes_one_poll_at_the_catalog_cadence(presets, provider):
    job = Job(seconds=0.0)
    PRESET_SETUP[provider](presets, job)
    result = generate_on(provider)
    assert len(result.images) == 1
    assert len(job.polls) == 1


@pytest.mark.parametrize("provider", list(PRESET_SETUP))
def test_polls_per_job_stay_within_the_budget(presets, monkeypatch, provider):
    """A budget of 2 polls per 0.5 s window against a cadence that would poll every 10 ms."""
    monkeypatch.setattr(polling, "BUDGET_WINDOW", 0.5)
    prefix = f"BANANA_{provider.upper()}_"
    monkeypatch.setenv(prefix + "POLL_FIRST_DELAY", "0.01")
    monkeypatch.setenv(prefix + "POLL_MAX_DELAY", "0.01")
    monkeypatch.setenv(prefix + "POLL_BUDGET", "2")
    job = Job(seconds=1.5)
    PRESET_SETUP[provider](presets, job)
    generate_on(provider)
    windows = math.ceil(job.duration() / 0.5) + 1
    assert 2 <= len(job.polls) <= 2 * windows  # the cadence alone makes several times more


@pytest.mark.parametrize("provider", list(PRESET_SETUP))
def test_retry_after_on_a_poll_sets_the_next_poll(presets, monkeypatch, provider):
    prefix = f"BANANA_{provider.upper()}_"
    monkeypatch.setenv(prefix + "POLL_FIRST_DELAY", "0.01")
    monkeypatch.setenv(prefix + "POLL_MAX_DELAY", "0.01")
    job = Job(seconds=1.0, retry_after="0.4")
    PRESET_SETUP[provider](presets, job)
    generate_on(provider)
    assert 2 <= len(job.polls) <= math.ceil(job.duration() / 0.4) + 1  # the cadence alone makes several times more
