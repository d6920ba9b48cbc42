"""Pure-Python provider layer: no torch, no ComfyUI. See client.generate for the entry point."""

from .client import generate
from .engine import CallContext
from .errors import (
    AuthError,
    BananaError,
    Cancelled,
    ConfigError,
    InvalidRequest,
    MalformedResponse,
    MissingKey,
    NoImageReturned,
    QuotaOrRateLimited,
    SafetyRejected,
    TimedOut,
    UpstreamUnavailable,
)
from .outcome import GeneratedImage, GenerationRequest, GenerationResult, ImageInput

__all__ = [
    "AuthError", "BananaError", "CallContext", "Cancelled", "ConfigError", "GeneratedImage",
    "GenerationRequest", "GenerationResult", "ImageInput", "InvalidRequest", "MalformedResponse",
    "MissingKey", "NoImageReturned", "QuotaOrRateLimited", "SafetyRejected", "TimedOut",
    "UpstreamUnavailable", "generate",
]
