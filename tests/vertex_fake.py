"""Vertex AI on loopback: a service-account key made in the test, and a token endpoint that checks
the signed JWT-bearer assertion (with the key's public half) the way Google's does."""

from __future__ import annotations

import functools
import json
import time
import uuid
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from loopback import Recorded, Reply

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GEN_PATH = r"/publishers/google/models/[^/:]+:generateContent$"


@functools.cache
def _key_pair() -> tuple[str, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def service_account(token_uri: str, project_id: str = "sa-project") -> dict:
    private, _ = _key_pair()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "k-" + uuid.uuid4().hex[:8],
        "private_key": private,
        "client_email": f"banana@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


def service_account_json(token_uri: str, project_id: str = "sa-project") -> str:
    return json.dumps(service_account(token_uri, project_id))


class TokenEndpoint:
    """POST handler for a token_uri: verifies the assertion, hands out `token` (counting the grants)."""

    def __init__(self, token: str = "ya29.loopback-access-token-0123456789", refuse: bool = False) -> None:
        self.token, self.refuse, self.grants, self.claims = token, refuse, 0, []

    def __call__(self, req: Recorded) -> Reply:
        from google.auth import jwt

        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        if self.refuse:
            return Reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        if form.get("grant_type") != GRANT_TYPE:
            return Reply(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(form.get("assertion", ""), certs=_key_pair()[1], audience=f"http://{req.headers['host']}{req.path}")
        except ValueError as exc:
            return Reply(400, {"error": "invalid_grant", "error_description": str(exc)})
        if claims.get("scope") != SCOPE or not claims["exp"] > time.time():
            return Reply(400, {"error": "invalid_scope"})
        self.claims.append(claims)
        self.grants += 1
        return Reply(json={"access_token": self.token, "expires_in": 3599, "token_type": "Bearer"})
