"""Schemathesis hooks for fuzzing a running Quantus: an auth provider that takes an access token
with the client credentials grant (RFC 6749 §4.4) for the client in QUANTUS_FUZZ_CLIENT_ID /
QUANTUS_FUZZ_CLIENT_SECRET at QUANTUS_FUZZ_URL, and takes a new one before it expires, so a
run longer than a token's lifetime keeps testing past authentication.

  SCHEMATHESIS_HOOKS=fuzz_auth schemathesis run URL/openapi.json ...  (with this folder on PYTHONPATH)
"""

from __future__ import annotations

import os

import requests
import schemathesis


@schemathesis.auth(refresh_interval=240)
class ClientCredentials:
    def get(self, case, context):
        base = os.environ["QUANTUS_FUZZ_URL"].rstrip("/")
        r = requests.post(
            f"{base}/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(os.environ["QUANTUS_FUZZ_CLIENT_ID"], os.environ["QUANTUS_FUZZ_CLIENT_SECRET"]),
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
