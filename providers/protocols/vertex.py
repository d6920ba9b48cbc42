"""Vertex AI `generateContent`: the Gemini API's body and answer on Google Cloud's endpoints.

    regional  https://{location}-aiplatform.googleapis.com/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent
    global    https://aiplatform.googleapis.com/v1/projects/{project}/locations/global/publishers/google/models/{model}:generateContent
    express   https://aiplatform.googleapis.com/v1/publishers/google/models/{model}:generateContent  (API key, no project)

Preview models are served from `global`. Project and location come from the options `project` and
`location` (BANANA_VERTEX_PROJECT / BANANA_VERTEX_LOCATION, or providers.json settings), else
GOOGLE_CLOUD_PROJECT / GOOGLE_CLOUD_LOCATION, else the service-account key's project_id and
"global". Refusals read exactly as on the Gemini API (gemini.parse_response).
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

from ..catalog import ProviderSpec
from ..errors import ConfigError
from ..outcome import GenerationRequest, GenerationResult
from . import gemini

GLOBAL_HOST = "aiplatform.googleapis.com"
# A location becomes part of the host name the token is sent to: a region name only (us-central1, europe-west4).
_LOCATION = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
# Project ids (and the domain-scoped form example.com:project) go into the path.
_PROJECT = re.compile(r"[a-z0-9.:-]{1,100}")


def location_of(spec: ProviderSpec) -> str:
    location = str(spec.options.get("location") or os.environ.get("GOOGLE_CLOUD_LOCATION") or "global").strip()
    if not _LOCATION.fullmatch(location):
        raise ConfigError(
            f"The Vertex AI location {location[:60]!r} for '{spec.display_name}' is not a region name.",
            provider=spec.id,
            hint="Set BANANA_VERTEX_LOCATION (or GOOGLE_CLOUD_LOCATION) to a region such as us-central1, or to global.",
        )
    return location


def prepare(spec: ProviderSpec) -> ProviderSpec:
    """The regional endpoint for a regional location (before any key is attached: auth follows this origin)."""
    location = location_of(spec)
    parts = urlsplit(spec.base_url)
    if location != "global" and parts.hostname == GLOBAL_HOST:
        return replace(spec, base_url=urlunsplit(parts._replace(netloc=f"{location}-{GLOBAL_HOST}")))
    return spec


def model_path(call, model_id: str) -> str:
    if call.flag_option("express"):
        return f"publishers/google/models/{model_id}:generateContent"
    project = str(call.option("project") or os.environ.get("GOOGLE_CLOUD_PROJECT") or "").strip()
    if not _PROJECT.fullmatch(project):
        raise ConfigError(
            f"The Google Cloud project {project[:60]!r} for '{call.provider.display_name}' is not a project id."
            if project
            else f"No Google Cloud project for '{call.provider.display_name}'.",
            provider=call.provider.id,
            hint="Set BANANA_VERTEX_PROJECT (or GOOGLE_CLOUD_PROJECT), or \"settings\": {\"vertex\": {\"options\": {\"project\": \"...\"}}} in providers.json.",
        )
    return f"projects/{project}/locations/{location_of(call.provider)}/publishers/google/models/{model_id}:generateContent"


async def generate(call, request: GenerationRequest) -> GenerationResult:
    model_id = call.model.id_for(request.resolution)
    response = await call.post_json(model_path(call, model_id), gemini.build_body(request, model_id))
    return await gemini.parse_response(call, response.json_object())
