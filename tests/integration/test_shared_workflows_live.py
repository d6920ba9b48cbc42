"""Every example workflow, as the template browser serves it, run by a user with a key for one provider.

One real ComfyUI; every preset (and two custom gateways from providers.json) answered by the
loopback fakes. Between users only keys.json changes (it is read per run, as the keys tab writes
it), so each user is a different person opening the same shared workflow. A run either makes every
image it promises, or fails before anything is sent with an error whose first line is one sentence
saying what is wrong and whose next line says what to do. Nothing user-specific (a key, the
gateway's address, the user's folders) is in the API prompt ComfyUI keeps in /history.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fake_gemini_batch import RUNNING, SUCCEEDED, FakeBatchMode
from fake_providers import key_for, point_presets_at, script_all
from loopback import LoopbackServer

from .comfyui_harness import PromptRejected, status_message, workflow_to_prompt

EXAMPLES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
CHAT_GATEWAY, GEMINI_GATEWAY = "my_chat_gateway", "my_gemini_gateway"
GEMINI_IDS = ["gemini-2.5-flash-image", "gemini-3-pro-image-preview", "gemini-3.1-flash-image-preview"]
# The user's one key: keys.json entry -> the key the fakes accept (custom gateways front APIYI's fakes).
USERS = {
    "google": ("google", "google"), "fal": ("fal", "fal"), "openai_hk": ("openai_hk", "openai_hk"), "apimaster": ("apimaster", "apimaster"),
    "evolink": ("evolink", "evolink"), "apiyi": ("apiyi", "apiyi"), "vydra": ("vydra", "vydra"),
    CHAT_GATEWAY: (CHAT_GATEWAY, "apiyi"), GEMINI_GATEWAY: (GEMINI_GATEWAY, "apiyi"),
}
# Images each example's Save Image nodes receive when every item succeeds.
IMAGES = {"nano_banana_batch_mode": 4, "nano_banana_batch_prompt_list": 8, "nano_banana_conversation_edits": 3,
          "nano_banana_edit_each_image": 2, "nano_banana_multi_reference_edit": 1, "nano_banana_text_to_image": 1}
NO_TURNS = {"fal", "apimaster", "evolink"}  # no multi-turn protocol behind these keys


def expected(user: str, example: str) -> str | None:
    """None: the example runs; else the start of the error's first line."""
    if user == "vydra" and example != "nano_banana_batch_prompt_list":  # Vydra offers Nano Banana only
        if example == "nano_banana_batch_mode":
            return "No API key for 'Google Gemini API', the provider this node is set to."
        return "None of the providers you have a key for offers 'Nano Banana"
    if example == "nano_banana_batch_mode" and user != "google":
        return "No API key for 'Google Gemini API', the provider this node is set to."
    if example == "nano_banana_conversation_edits" and user in NO_TURNS:
        return "A conversation (multi-turn editing) is not available for Nano Banana Pro on "
    return None


@pytest.fixture(scope="module")
def fake():
    server = LoopbackServer().start()
    script_all(server)
    FakeBatchMode(server, prefix="/google", states=[RUNNING, SUCCEEDED]).install()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def comfy(comfyui_server_factory, fake):
    env: dict[str, str] = {}
    point_presets_at(fake, env.__setitem__)
    env = {name: value for name, value in env.items() if "_API_KEY" not in name}  # keys come from keys.json, per user
    env.update(BANANA_GOOGLE_POLL_FIRST_DELAY="0.2", BANANA_GOOGLE_POLL_MAX_DELAY="0.5")
    server = comfyui_server_factory(extra_env=env)
    client = server.client()
    comfyui = Path(client.server.comfyui_path)
    shutil.copy(comfyui / "input" / "example.png", server.input_dir / "example.png")  # ships in ComfyUI's input/
    config = server.user_dir / "nano_banana_bridge"
    gateways = [
        {"id": CHAT_GATEWAY, "display_name": "My chat gateway", "protocol": "openai-chat", "base_url": f"{fake.url}/apiyi_chat", "auth": "bearer", "models": GEMINI_IDS},
        {"id": GEMINI_GATEWAY, "display_name": "My Gemini gateway", "protocol": "gemini", "base_url": f"{fake.url}/apiyi", "auth": "bearer", "models": GEMINI_IDS},
    ]
    (config / "providers.json").write_text(json.dumps({"providers": gateways}))
    yield client
    client.close()


def as_user(comfy, user: str | None) -> None:
    entry = {USERS[user][0]: key_for(USERS[user][1])} if user else {}
    (comfy.server.user_dir / "nano_banana_bridge" / "keys.json").write_text(json.dumps(entry))


def template(comfy, name: str) -> dict:
    """The example as the template browser lists and serves it, converted as the frontend queues it."""
    assert name in comfy.get_json("/workflow_templates")[comfy.server.pack_name]
    workflow = comfy.get_json(f"/api/workflow_templates/{comfy.server.pack_name}/{name}.json")
    return workflow_to_prompt(workflow, comfy.object_info())


def run_as(comfy, user: str | None, name: str, seed_offset: int) -> dict:
    as_user(comfy, user)
    prompt = template(comfy, name)
    for node in prompt.values():  # another person's run: a new seed, as `control after generate` gives it
        if node["class_type"] == "NanoBananaBridge":
            node["inputs"]["seed"] += seed_offset
    return comfy.run(prompt, timeout=120)


def saved_images(entry: dict) -> int:
    return sum(len(out.get("images", [])) for out in entry["outputs"].values() if "images" in out)


@pytest.mark.parametrize("user", list(USERS))
def test_every_example_runs_or_says_what_to_do_for_a_one_provider_user(comfy, fake, user):
    for number, name in enumerate(EXAMPLES):
        fake.requests.clear()
        entry = run_as(comfy, user, name, seed_offset=1 + list(USERS).index(user) * 10 + number)
        kept = json.dumps(entry["prompt"])
        assert "key-for-" not in kept and fake.url not in kept and str(comfy.server.base_dir) not in kept
        assert "key-for-" not in json.dumps(entry)
        error = status_message(entry, "execution_error")
        want = expected(user, name)
        if want is None:
            assert error is None, f"{user} / {name}: {error and error['exception_message']}"
            assert saved_images(entry) == IMAGES[name], f"{user} / {name}: {json.dumps(entry['outputs'])[:3000]}"  # none flagged
            continue
        assert error is not None, f"{user} / {name} ran, but should have failed with {want!r}"
        first, _, rest = error["exception_message"].partition("\n")
        assert first.startswith(want), f"{user} / {name}: {error['exception_message']}"
        assert re.fullmatch(r"[^\n]+\.", first) and first.count(". ") == 0, first  # one sentence
        assert rest.strip(), "the second line says what to do"
        if name != "nano_banana_conversation_edits":  # there, the first edit (no conversation yet) runs first
            assert fake.requests == [], "refused before anything was sent"


def test_a_shared_workflow_naming_another_provider_says_which_of_yours_to_pick(comfy):
    entry = run_as(comfy, "fal", "nano_banana_batch_mode", seed_offset=500)
    message = status_message(entry, "execution_error")["exception_message"]
    assert "You have a key for fal.ai (fal), which offers Nano Banana 2: set provider to 'auto' (or 'fal') to run it there and delivery to 'now'" in message
    assert "Nano Banana keys tab" in message


def test_the_conversation_example_runs_on_an_openai_hk_key_through_its_chat_preset(comfy, fake):
    fake.requests.clear()
    entry = run_as(comfy, "openai_hk", "nano_banana_conversation_edits", seed_offset=600)
    assert status_message(entry, "execution_error") is None and saved_images(entry) == 3
    paths = [r.path for r in fake.requests if not r.path.startswith("/files/")]
    # The first edit has no conversation yet: openai-hk's first preset takes it; the two continuations
    # need turns, which only its chat preset carries (before this, "auto" refused them).
    assert sorted(paths) == ["/openai_hk/images/edits"] + ["/openai_hk_chat/chat/completions"] * 2, paths


def test_a_new_user_without_a_key_is_sent_to_the_keys_tab(comfy, fake):
    fake.requests.clear()
    entry = run_as(comfy, None, "nano_banana_text_to_image", seed_offset=700)
    error = status_message(entry, "execution_error")
    assert error["exception_type"] == "nano_banana_bridge.errors.MissingKey"
    first, hint = error["exception_message"].split("\n", 1)
    assert first == "No API key is set for any provider."
    assert "Nano Banana keys tab (key icon in ComfyUI's sidebar)" in hint and fake.requests == []
    as_user(comfy, "google")  # the key from the tab, used by the next run without a restart
    entry = comfy.run(template(comfy, "nano_banana_text_to_image"), timeout=120)
    assert status_message(entry, "execution_error") is None and saved_images(entry) == 1


def test_a_provider_only_the_author_had_is_refused_at_queue_time_with_what_to_do(comfy, fake):
    as_user(comfy, "fal")
    prompt = template(comfy, "nano_banana_text_to_image")
    prompt["1"]["inputs"]["provider"] = "their_gateway"  # a custom gateway from the author's providers.json
    with pytest.raises(PromptRejected) as caught:
        comfy.post_prompt(prompt)
    # ComfyUI repeats a validate_inputs answer under every input it passed (the model's nested values too).
    (error,) = [e for e in caught.value.node_errors["1"]["errors"] if e["extra_info"]["input_name"] == "provider"]
    assert error["type"] == "custom_validation_failed"
    assert "The provider 'their_gateway' is not set up on this ComfyUI" in error["details"]
    assert "Set provider to 'auto' or to a provider you have a key for (fal)" in error["details"]
    prompt["1"]["inputs"]["provider"] = 7  # not even a name: refused as ComfyUI's list check did
    with pytest.raises(PromptRejected) as caught:
        comfy.post_prompt(prompt)
    assert any("provider must be a provider id" in e["details"] for e in caught.value.node_errors["1"]["errors"])
    prompt["1"]["inputs"]["provider"] = GEMINI_GATEWAY  # a gateway this install has, added after start: accepted
    as_user(comfy, GEMINI_GATEWAY)
    assert status_message(comfy.wait_for(comfy.post_prompt(prompt), timeout=120), "execution_error") is None
