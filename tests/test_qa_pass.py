"""Found in a user's pass over the merged pack in the real ComfyUI (developer J)."""

from banana_pack.providers.catalog import PRESETS
from banana_pack.providers.client import check_request
from banana_pack.providers.errors import InvalidRequest
from banana_pack.providers.protocols import GenerationRequest

import pytest


def test_a_check_made_before_sending_does_not_say_the_provider_rejected_it():
    google = next(spec for spec in PRESETS if spec.id == "google")
    pro = next(offer for offer in google.models if offer.name.startswith("Nano Banana Pro"))
    with pytest.raises(InvalidRequest) as caught:
        check_request(google, pro, GenerationRequest(prompt="a cat", thinking_level="HIGH"))
    first = str(caught.value).splitlines()[0]
    assert "rejected by" not in first and first.startswith("Thinking level HIGH is not available for Nano Banana Pro")
    assert caught.value.headline() == first


def test_a_provider_answer_still_says_who_rejected_it():
    exc = InvalidRequest("The provider rejected the request.", provider="google", status=400)
    assert str(exc).startswith("Request rejected by Google (HTTP 400)\n")
