"""Schemathesis hooks for fuzzing a running Quantus.

- An auth provider that takes an access token with the client credentials grant (RFC 6749
  §4.4) for the client in QUANTUS_FUZZ_CLIENT_ID / QUANTUS_FUZZ_CLIENT_SECRET at
  QUANTUS_FUZZ_URL, and a new one before it expires, so a run longer than a token's lifetime
  keeps testing past authentication. SCIM operations (`/scim/v2/...`) get the SCIM token of
  one organization in QUANTUS_FUZZ_SCIM_TOKEN instead, and a person's own routes (`/v1/me/...`)
  the access token of a person in QUANTUS_FUZZ_PERSON_TOKEN (when set), so they are exercised
  past their 401.
- The run may rotate its own client's secret (`POST /v1/clients/{id}/secret` answers the new
  one, as to any client): the `after_call` hook takes it, as a real client would, so the next
  token request still authenticates.
- The check `no_undocumented_server_error`: any 5xx fails, except a 503 the operation documents
  (read-your-writes waits, shed writes, an unconfigured webhook), which tells the client to
  retry and is part of the contract.

  PYTHONPATH=tests/openapi SCHEMATHESIS_HOOKS=fuzz_hooks schemathesis run URL/openapi.json \
      --checks no_undocumented_server_error ...
"""

from __future__ import annotations

import os

import requests
import schemathesis


# The fuzzing client's current secret: the run itself may rotate it.
SECRET = {"value": os.environ.get("QUANTUS_FUZZ_CLIENT_SECRET", "")}


@schemathesis.auth(refresh_interval=240)
class ClientCredentials:
    def get(self, case, context):
        base = os.environ["QUANTUS_FUZZ_URL"].rstrip("/")
        r = requests.post(
            f"{base}/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(os.environ["QUANTUS_FUZZ_CLIENT_ID"], SECRET["value"]),
            timeout=30,
        )
        r.raise_for_status()
        return r.json()["access_token"]

    def set(self, case, data, context):
        case.headers = case.headers or {}
        if case.operation.path.startswith("/scim/v2/"):
            data = os.environ["QUANTUS_FUZZ_SCIM_TOKEN"]
        elif case.operation.path.startswith("/v1/me/") and os.environ.get("QUANTUS_FUZZ_PERSON_TOKEN"):
            data = os.environ["QUANTUS_FUZZ_PERSON_TOKEN"]
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def after_call(context, case, response):
    if (
        case.method.upper() == "POST"
        and case.operation.path == "/v1/clients/{id}/secret"
        and response.status_code == 200
    ):
        body = response.json()
        if body.get("client_id") == os.environ["QUANTUS_FUZZ_CLIENT_ID"]:
            SECRET["value"] = body["client_secret"]


@schemathesis.check
def no_undocumented_server_error(ctx, response, case):
    status = response.status_code
    if status < 500:
        return None
    documented = case.operation.definition.raw.get("responses", {})
    if status == 503 and "503" in documented:
        return None
    raise AssertionError(f"undocumented {status}: {response.text[:500]}")
