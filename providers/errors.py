"""One error taxonomy for every provider.

Each protocol module turns its provider's failure shapes into these types, so the node (and a
user reading the message) sees the same kinds of failure whichever provider they use. Every
message names the provider and model, the HTTP status where there is one, the provider's own
words, and what the user can do. Messages are redacted: a key never appears in one.
"""

from __future__ import annotations

from .redaction import redact

# ComfyUI names a failed node's exception `type(ex).__module__` + name. For a custom node that
# module is its folder path (`/home/.../custom_nodes/<folder>.providers.errors`), which the error
# popup shows before the message and cuts off. Every pack error reports this short name instead.
PUBLIC_MODULE = "nano_banana_bridge.errors"

# What each refusal stage means, in words, for the first line of the message.
STAGE_WORDS = {
    "prompt_blocked": "the prompt or a reference image was blocked before generation",
    "output_blocked": "the generated image was blocked",
    "soft_refusal": "the model answered in words instead of an image",
    "no_image": "the model finished without an image",
}


def provider_label(provider_id: str | None) -> str:
    """The provider's brand, short enough for the first line of an error popup ("Google", "openai-hk"), or its id."""
    if not provider_id:
        return "the provider"
    try:
        from .catalog import PRESETS

        for spec in PRESETS:
            if spec.id == provider_id:
                return spec.display_name.split(" (")[0].split(" ")[0]  # every preset's name starts with its brand
    except Exception:  # noqa: BLE001 - a label must never turn one error into another
        pass
    return provider_id


class BananaError(Exception):
    """Base of every error the pack raises on purpose.

    `sent` is False only when the engine knows the request never left this machine (the
    connection was never opened); otherwise it may have reached the provider. `maybe_billed` is
    True when a paid request ended in a way that may hide a processed (billed) generation, so it
    was not sent again (README, "Billing and retries").
    """

    __module__ = PUBLIC_MODULE
    kind = "error"
    default_hint = ""
    sent = True
    maybe_billed = False
    in_answer = False  # the provider's own error, read from inside a 2xx answer (engine.error_in_answer)
    job_over = False  # the provider's final status of an asynchronous job: it ended (failed, cancelled) without a result
    # The first sentence of the message, "{provider}" filled in; empty: the message itself leads.
    headline_template = ""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = PUBLIC_MODULE

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        model: str | None = None,
        status: int | None = None,
        provider_message: str | None = None,
        hint: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.message = message
        self.provider = provider
        self.model = model
        self.status = status
        self.provider_message = provider_message
        self.hint = self.default_hint if hint is None else hint
        self.request_id = request_id
        super().__init__(self.__str__())

    @property
    def unanswered(self) -> bool:
        """Sent, but no answer arrived: the provider may have acted on it (and billed it)."""
        return self.sent and self.status is None

    def headline(self) -> str:
        """One sentence a person can act on: what happened, where, and why (stage and reason)."""
        if not self.headline_template:
            return redact(self.message)
        text = self.headline_template.format(provider=provider_label(self.provider))
        return redact(f"{text} (HTTP {self.status})" if self.status else text)

    def __str__(self) -> str:
        where = "/".join(p for p in (self.provider, self.model) if p)
        head = f"[{where}] " if where else ""
        status = f"HTTP {self.status}: " if self.status else ""
        first = self.headline()
        if first != redact(self.message):
            text = f"{first}\n{head}{status}{self.message}"
        else:  # the message is the headline: it leads, unprefixed
            text = f"{self.message} (HTTP {self.status})" if self.status else self.message
        details = self._detail_lines()
        said = (self.provider_message or "").strip()
        if said and said not in self.message and not any(said in line for line in details):
            text += f" Provider said: {said}"
        if self.request_id:
            text += f" (request id {self.request_id})"
        for line in details:
            text += f"\n{line}"
        if self.hint:
            text += f"\n{self.hint}"
        return redact(text)

    def _detail_lines(self) -> list[str]:
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.__str__()!r})"

    def with_context(self, *, provider: str | None = None, model: str | None = None) -> "BananaError":
        self.provider = self.provider or provider
        self.model = self.model or model
        self.args = (self.__str__(),)
        return self


class ConfigError(BananaError):
    """The pack is not set up for this call: unknown provider, bad config file, bad option."""

    kind = "config"


class MissingKey(ConfigError):
    kind = "missing_key"


class AuthError(BananaError):
    kind = "auth"
    headline_template = "Key rejected by {provider}"
    default_hint = "Check the API key for this provider (see the README, section 'API keys'); it may be wrong, revoked, or lack access to this model."


class QuotaOrRateLimited(BananaError):
    kind = "quota_or_rate"
    default_hint = "The provider is limiting requests or the account is out of quota/credits. Wait and retry, lower the concurrency, or top up the account."

    def __init__(self, message: str, *, retry_after: float | None = None, exhausted: bool = False, **kwargs) -> None:
        self.retry_after = retry_after
        self.exhausted = exhausted  # an empty balance or a used-up daily quota: waiting will not help
        super().__init__(message, **kwargs)

    @property
    def headline_template(self) -> str:  # type: ignore[override]
        return "Out of credits or quota at {provider}" if self.exhausted else "Rate-limited by {provider}"


class InvalidRequest(BananaError):
    kind = "invalid_request"

    @property
    def headline_template(self) -> str:  # type: ignore[override]
        # Most are checks made here before anything is sent: "rejected by Google" would say Google saw (and may bill) it.
        return "Request rejected by {provider}" if self.status is not None else ""

    default_hint = "The provider rejected the request's parameters; check the model, aspect ratio, resolution and number of reference images."


class UpstreamUnavailable(BananaError):
    kind = "upstream"
    headline_template = "{provider} is failing or overloaded"
    default_hint = "The provider or its upstream is failing or overloaded; this is usually temporary. Retry later or pick another provider."


class TimedOut(UpstreamUnavailable):
    kind = "timeout"
    headline_template = "No answer from {provider} in time"
    default_hint = "Large (4K, Pro) generations can take minutes; raise the timeout with BANANA_<PROVIDER>_TIMEOUT or try again."


class MalformedResponse(UpstreamUnavailable):
    kind = "malformed"
    headline_template = "Unexpected answer from {provider}"
    default_hint = "The provider answered with something that is not the expected API response (often a gateway error page). Check the base URL, or retry later."


class UnusableImage(MalformedResponse):
    """The provider delivered bytes that are not a usable image (AVIF, HEIC, TIFF, HTML, a bomb, ...).

    They were paid for: `payloads` holds everything that answer delivered, in order (usable images
    and the unusable bytes, the latter with MIME application/octet-stream), for the caller to save.
    """

    kind = "unusable_image"
    default_hint = "The provider's original bytes are kept in the output folder as a .bin file; open them with a tool that reads that format."

    def __init__(self, message: str, *, payloads: list | None = None, **kwargs) -> None:
        self.payloads = list(payloads or [])
        super().__init__(message, **kwargs)


class Cancelled(BananaError):
    kind = "cancelled"


class SafetyStage:
    PROMPT_BLOCKED = "prompt_blocked"  # input rejected before generation (promptFeedback.blockReason)
    OUTPUT_BLOCKED = "output_blocked"  # generated, then withheld by a filter (finishReason)
    SOFT_REFUSAL = "soft_refusal"  # the model answered in words instead of an image


class Refusal(BananaError):
    """A call that succeeded but carried no image. Keeps the provider's reason verbatim."""

    def __init__(
        self,
        message: str,
        *,
        stage: str,
        reason: str | None = None,
        finish_message: str | None = None,
        model_text: str | None = None,
        candidates_token_count: int | None = None,
        usage: dict | None = None,
        **kwargs,
    ) -> None:
        self.usage = usage if isinstance(usage, dict) else None  # usageMetadata: a refusal may still be billed by tokens
        self.stage = stage
        self.reason = reason
        self.finish_message = finish_message
        self.model_text = model_text
        self.candidates_token_count = candidates_token_count
        super().__init__(message, **kwargs)

    verb = "Refused by"

    def headline(self) -> str:
        words = STAGE_WORDS.get(self.stage, self.stage)
        why = f"{self.reason} ({words})" if self.reason else words
        return redact(f"{self.verb} {provider_label(self.provider)}: {why}")

    def _detail_lines(self) -> list[str]:
        details = [f"stage: {self.stage}"]
        if self.reason:
            details.append(f"reason: {self.reason}")
        if self.candidates_token_count is not None:
            details.append(f"candidatesTokenCount: {self.candidates_token_count}")
        lines = [", ".join(details)]
        for label, value in (("Provider message", self.finish_message), ("Model said", self.model_text)):
            if value and value.strip():
                lines.append(f"{label}: {value.strip()}")
        return lines


class SafetyRejected(Refusal):
    """A content-policy outcome. Never retried; never replaced by a placeholder image."""

    kind = "refused"
    default_hint = "The provider's safety system refused this request. Rephrase the prompt or change the reference images; retrying the same request will not help."

    @classmethod
    def soft_refusal(cls, reason: str | None, **details) -> "SafetyRejected":
        """The model answered in words instead of an image (its words go in model_text)."""
        return cls("The model answered in words instead of an image (a soft refusal).", stage=SafetyStage.SOFT_REFUSAL, reason=reason, **details)


class NoImageReturned(Refusal):
    """No image and no policy label (NO_IMAGE, IMAGE_OTHER, MAX_TOKENS, an empty data list, ...)."""

    kind = "no_image"
    verb = "No image from"
    default_hint = "The model finished without an image. Retrying once, or rephrasing the prompt to ask explicitly for an image, usually helps."

    def __init__(self, message: str, *, stage: str = "no_image", **kwargs) -> None:
        super().__init__(message, stage=stage, **kwargs)
