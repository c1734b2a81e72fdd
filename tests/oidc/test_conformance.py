"""Independent OIDC / OAuth 2 conformance suite for the Quantus QSA identity provider.

Flows are driven with Authlib's OAuth 2 client, and every JWT the provider
hands out is checked with PyJWT against the keys published at ``jwks_uri``.
The browser side (login, consent, device approval) is played with a
``requests.Session`` and the standard library's ``html.parser``.

Environment:
    QUANTUS_URL            base URL of a running server; also the OIDC issuer
    QUANTUS_CLIENT_ID      a platform-admin service principal
    QUANTUS_CLIENT_SECRET  its secret

Every test creates its own organization, users and clients under unique names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import time
import uuid
from html.parser import HTMLParser
from urllib.parse import parse_qs, parse_qsl, urlencode, urljoin, urlparse

import jwt as pyjwt
import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc.jwk import OKPKey

TIMEOUT = 10  # seconds, for every HTTP call
REDIRECT_URI = "http://127.0.0.1:8765/callback"  # never contacted: redirects are not followed
POST_LOGOUT_URI = "http://127.0.0.1:8765/signed-out"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PASSWORD = "correct horse battery staple"
MEMBER_API_SCOPES = {"organizations:read", "licenses:read", "licenses:activate", "signatures:verify"}


# joserfc (under Authlib) flags the JOSE name "EdDSA" as superseded by RFC 9864's "Ed25519";
# the provider advertises "EdDSA", which is what this suite must speak.
pytestmark = pytest.mark.filterwarnings("ignore:EdDSA is deprecated")

# --------------------------------------------------------------------------------------
# configuration


def _require_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        pytest.fail(
            f"{name} is not set: this conformance suite needs a running Quantus server "
            "(QUANTUS_URL, QUANTUS_CLIENT_ID, QUANTUS_CLIENT_SECRET). Refusing to skip.",
            pytrace=False,
        )
    return value


def test_environment_is_configured():
    """Fails (rather than skipping) when the suite is run without a server to test."""
    for name in ("QUANTUS_URL", "QUANTUS_CLIENT_ID", "QUANTUS_CLIENT_SECRET"):
        _require_env(name)


@pytest.fixture(scope="session")
def issuer() -> str:
    return _require_env("QUANTUS_URL").rstrip("/")


@pytest.fixture(scope="session")
def admin_credentials() -> tuple[str, str]:
    return _require_env("QUANTUS_CLIENT_ID"), _require_env("QUANTUS_CLIENT_SECRET")


class TimeoutSession(requests.Session):
    """A requests session whose every call has a timeout."""

    def request(self, method, url, **kwargs):  # noqa: D401
        kwargs.setdefault("timeout", TIMEOUT)
        return super().request(method, url, **kwargs)


@pytest.fixture(scope="session")
def http() -> TimeoutSession:
    return TimeoutSession()


@pytest.fixture(scope="session")
def discovery(issuer, http) -> dict:
    r = http.get(f"{issuer}/.well-known/openid-configuration")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="session")
def jwks_client(discovery) -> pyjwt.PyJWKClient:
    return pyjwt.PyJWKClient(discovery["jwks_uri"], cache_keys=True, timeout=TIMEOUT)


# --------------------------------------------------------------------------------------
# token validation (PyJWT, independent of the provider)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def at_hash(access_token: str) -> str:
    """OIDC Core 3.1.3.6 for EdDSA over Ed25519: left half of SHA-512, base64url."""
    digest = hashlib.sha512(access_token.encode("ascii")).digest()
    return _b64url(digest[: len(digest) // 2])


def validate_access_token(token: str, jwks_client, issuer: str) -> dict:
    header = pyjwt.get_unverified_header(token)
    assert header.get("alg") == "EdDSA", header
    assert header.get("typ", "").lower() in ("at+jwt", "application/at+jwt"), header
    assert header.get("kid"), header
    key = jwks_client.get_signing_key_from_jwt(token)
    claims = pyjwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience=f"{issuer}/v1",
        issuer=issuer,
        leeway=5,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
    )
    for name in ("client_id", "scope", "org", "roles", "gid"):
        assert name in claims, f"access token lacks {name}: {claims}"
    assert isinstance(claims["roles"], list)
    assert claims["exp"] > claims["iat"]
    return claims


def validate_id_token(
    token: str,
    jwks_client,
    issuer: str,
    client_id: str,
    nonce: str | None,
    access_token: str | None,
    require_sid: bool = True,
) -> dict:
    header = pyjwt.get_unverified_header(token)
    assert header.get("alg") == "EdDSA", header
    assert header.get("typ") == "JWT", header
    key = jwks_client.get_signing_key_from_jwt(token)
    claims = pyjwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        audience=client_id,
        issuer=issuer,
        leeway=5,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    if nonce is not None:
        assert claims.get("nonce") == nonce
    if access_token is not None:
        assert claims.get("at_hash") == at_hash(access_token), "at_hash is not SHA-512 left half"
    assert isinstance(claims.get("auth_time"), int)
    assert claims["auth_time"] <= time.time() + 5
    assert claims.get("amr") == ["pwd"]
    if require_sid:
        assert claims.get("sid"), f"no sid in ID token: {claims}"
    # aud may be an array; when it has several values azp must be present (OIDC Core 2).
    if isinstance(claims["aud"], list) and len(claims["aud"]) > 1:
        assert claims.get("azp") == client_id
    return claims


# --------------------------------------------------------------------------------------
# admin REST API


class Admin:
    """Provisions organizations, users and clients through /v1 with the bootstrap admin."""

    def __init__(self, issuer: str, client_id: str, client_secret: str):
        self.issuer = issuer
        self.oauth = OAuth2Session(
            client_id,
            client_secret,
            token_endpoint_auth_method="client_secret_basic",
            default_timeout=TIMEOUT,
        )
        self._token: dict | None = None

    def _headers(self) -> dict:
        if not self._token or self._token["expires_at"] - time.time() < 60:
            self._token = self.oauth.fetch_token(
                f"{self.issuer}/oauth2/token", grant_type="client_credentials"
            )
        return {"Authorization": f"Bearer {self._token['access_token']}"}

    def post(self, path: str, body: dict) -> dict:
        r = requests.post(f"{self.issuer}{path}", json=body, headers=self._headers(), timeout=TIMEOUT)
        assert r.status_code == 201, f"POST {path} -> {r.status_code} {r.text}"
        return r.json()

    def org(self) -> str:
        return self.post("/v1/organizations", {"name": f"oidc-conf-{uuid.uuid4().hex}"})["id"]

    def user(self, org: str, roles=("member",), password: str = PASSWORD) -> dict:
        email = f"u-{uuid.uuid4().hex}@example.com"
        name = f"User {uuid.uuid4().hex[:8]}"
        uid = self.post(
            "/v1/users",
            {
                "organization_id": org,
                "email": email,
                "name": name,
                "password": password,
                "roles": list(roles),
            },
        )["id"]
        return {"id": uid, "email": email, "name": name, "password": password}

    def client(self, org: str, **overrides) -> dict:
        body = {
            "organization_id": org,
            "name": f"client-{uuid.uuid4().hex[:12]}",
            "kind": "confidential",
            "redirect_uris": [REDIRECT_URI],
            "post_logout_redirect_uris": [POST_LOGOUT_URI],
            "grant_types": ["authorization_code", "refresh_token"],
            "scopes": ["openid", "profile", "email", "offline_access", "licenses:read"],
            "token_endpoint_auth_method": "client_secret_basic",
            "require_pushed_authorization_requests": False,
        }
        body.update(overrides)
        out = self.post("/v1/clients", body)
        assert out.get("client_id")
        if body["kind"] == "confidential" and body["token_endpoint_auth_method"] != "private_key_jwt":
            assert out.get("client_secret"), out
        return {**body, **out}

    def service_principal(self, org: str, roles=("admin",)) -> dict:
        out = self.post(
            "/v1/service-principals",
            {"organization_id": org, "name": f"sp-{uuid.uuid4().hex[:12]}", "roles": list(roles)},
        )
        assert out.get("client_id") and out.get("client_secret"), out
        return out


@pytest.fixture(scope="session")
def admin(issuer, admin_credentials) -> Admin:
    return Admin(issuer, *admin_credentials)


# --------------------------------------------------------------------------------------
# authlib helpers


def oauth_session(client: dict, discovery: dict, scope: str | None = None, **kwargs) -> OAuth2Session:
    """An Authlib client for a registered client; records the last HTTP response."""
    method = client.get("token_endpoint_auth_method", "client_secret_basic")
    sess = OAuth2Session(
        client["client_id"],
        client.get("client_secret"),
        token_endpoint_auth_method=method,
        revocation_endpoint_auth_method=method,
        scope=scope,
        redirect_uri=client["redirect_uris"][0] if client.get("redirect_uris") else None,
        code_challenge_method="S256",
        default_timeout=TIMEOUT,
        **kwargs,
    )
    sess.last_response = None

    def remember(resp, *args, **kw):
        sess.last_response = resp

    sess.hooks["response"].append(remember)
    return sess


def expect_oauth_error(fn, error: str, status: int | None = None, sess=None) -> OAuthError:
    with pytest.raises(OAuthError) as exc:
        fn()
    assert exc.value.error == error, f"expected {error}, got {exc.value.error}: {exc.value.description}"
    if status is not None and sess is not None:
        assert sess.last_response.status_code == status, sess.last_response.text
        assert sess.last_response.headers.get("content-type", "").startswith("application/json")
    return exc.value


def introspect(sess: OAuth2Session, discovery: dict, token: str, hint: str | None = None) -> dict:
    r = sess.introspect_token(discovery["introspection_endpoint"], token=token, token_type_hint=hint)
    assert r.status_code == 200, r.text
    assert r.headers.get("content-type", "").startswith("application/json")
    return r.json()


def api_status(issuer: str, token: str) -> int:
    r = requests.get(
        f"{issuer}/v1/organizations", headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
    )
    return r.status_code


# --------------------------------------------------------------------------------------
# "browser": HTML forms with html.parser, cookies with requests.Session


class FormParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._form: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {
                "action": a.get("action", ""),
                "method": (a.get("method") or "get").lower(),
                "inputs": {},
                "buttons": [],
            }
            self.forms.append(self._form)
        elif self._form is not None and tag == "input":
            kind = a.get("type", "text").lower()
            if not a.get("name"):
                return
            if kind == "submit":
                self._form["buttons"].append((a["name"], a.get("value", "")))
            else:
                self._form["inputs"][a["name"]] = a.get("value", "")
        elif self._form is not None and tag == "button" and a.get("name"):
            self._form["buttons"].append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def forms_of(html: str) -> list[dict]:
    p = FormParser()
    p.feed(html)
    return p.forms


def find_form(resp: requests.Response, action_suffix: str) -> dict | None:
    for f in forms_of(resp.text):
        if urlparse(f["action"]).path.endswith(action_suffix):
            return f
    return None


class Browser:
    """A user agent: cookies, no automatic redirects, HTML forms filled by hand."""

    def __init__(self):
        self.s = TimeoutSession()
        self.pages: list[str] = []  # kinds of page seen: login, consent, device, ...

    def get(self, url: str) -> requests.Response:
        return self.s.get(url, allow_redirects=False)

    def submit(self, page: requests.Response, form: dict, extra: dict) -> requests.Response:
        assert form["method"] == "post", form
        data = dict(form["inputs"])
        data.update(extra)
        return self.s.post(urljoin(page.url, form["action"]), data=data, allow_redirects=False)

    def login(self, page: requests.Response, email: str, password: str) -> requests.Response:
        form = find_form(page, "/oauth2/login")
        assert form, f"no login form in page ({page.status_code}): {page.text[:500]}"
        assert "csrf" in form["inputs"] and "continue" in form["inputs"], form
        assert "email" in form["inputs"] and "password" in form["inputs"], form
        assert self.s.cookies.get("qsa_csrf"), "the login page did not set the qsa_csrf cookie"
        return self.submit(page, form, {"email": email, "password": password})

    def drive(
        self, url: str, user: dict | None, stop_prefix: str, decision: str = "allow", max_steps: int = 12
    ) -> requests.Response:
        """Follows the authorization UI until a redirect whose target starts with stop_prefix."""
        resp = self.get(url)
        for _ in range(max_steps):
            if resp.is_redirect:
                location = urljoin(resp.url, resp.headers["Location"])
                if location.startswith(stop_prefix):
                    return resp
                resp = self.get(location)
                continue
            assert resp.status_code == 200, f"{resp.status_code} at {resp.url}: {resp.text[:500]}"
            if find_form(resp, "/oauth2/login"):
                assert user is not None, "unexpected login page"
                self.pages.append("login")
                resp = self.login(resp, user["email"], user["password"])
                if not resp.is_redirect:
                    assert resp.status_code == 200, f"login failed: {resp.status_code} {resp.text[:300]}"
                assert self.s.cookies.get("qsa_session"), "no qsa_session cookie after sign-in"
            elif find_form(resp, "/oauth2/consent"):
                self.pages.append("consent")
                form = find_form(resp, "/oauth2/consent")
                assert "csrf" in form["inputs"] and "continue" in form["inputs"], form
                assert ("decision", decision) in form["buttons"], form
                resp = self.submit(resp, form, {"decision": decision})
            else:
                pytest.fail(f"unexpected page at {resp.url}: {resp.text[:800]}")
        pytest.fail("authorization did not finish")


def callback_params(resp: requests.Response) -> dict:
    location = resp.headers["Location"]
    qs = parse_qs(urlparse(location).query)
    return {k: v[0] for k, v in qs.items()}


def authorize_code(
    browser: Browser,
    sess: OAuth2Session,
    discovery: dict,
    user: dict,
    nonce: str | None = None,
    code_verifier: str | None = None,
    **params,
):
    """Runs the front channel; returns (redirect Location, state, verifier, nonce)."""
    nonce = nonce or generate_token(24)
    code_verifier = code_verifier or generate_token(64)
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=code_verifier, nonce=nonce, **params
    )
    query = dict(parse_qsl(urlparse(url).query))
    assert query["code_challenge_method"] == "S256"
    resp = browser.drive(url, user, sess.redirect_uri)
    assert resp.status_code in (302, 303), resp.status_code
    return resp.headers["Location"], state, code_verifier, nonce


def code_flow(admin, discovery, issuer, jwks_client, client, user, scope, browser=None):
    """A full authorization-code + PKCE flow; returns (session, token, id_claims, nonce)."""
    browser = browser or Browser()
    sess = oauth_session(client, discovery, scope=scope)
    location, state, verifier, nonce = authorize_code(browser, sess, discovery, user)
    params = dict(parse_qsl(urlparse(location).query))
    assert "error" not in params, params
    assert params.get("state") == state
    assert params.get("iss") == issuer, "RFC 9207 iss parameter missing or wrong"
    token = sess.fetch_token(
        discovery["token_endpoint"], authorization_response=location, code_verifier=verifier, state=state
    )
    assert token["token_type"].lower() == "bearer"
    assert sess.last_response.headers.get("cache-control", "").lower().find("no-store") >= 0
    validate_access_token(token["access_token"], jwks_client, issuer)
    id_claims = None
    if "openid" in scope.split():
        assert "id_token" in token
        id_claims = validate_id_token(
            token["id_token"], jwks_client, issuer, client["client_id"], nonce, token["access_token"]
        )
    return sess, token, id_claims, browser


# ======================================================================================
# discovery and keys


def test_discovery_document(issuer, discovery):
    assert discovery["issuer"] == issuer
    for name in (
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "userinfo_endpoint",
        "introspection_endpoint",
        "revocation_endpoint",
        "end_session_endpoint",
        "pushed_authorization_request_endpoint",
        "device_authorization_endpoint",
    ):
        assert discovery.get(name, "").startswith(issuer + "/"), f"{name}: {discovery.get(name)}"
    assert discovery["id_token_signing_alg_values_supported"] == ["EdDSA"]
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert "code" in discovery["response_types_supported"]
    assert "openid" in discovery["scopes_supported"]
    assert "public" in discovery["subject_types_supported"]
    for grant in ("authorization_code", "refresh_token", "client_credentials", DEVICE_GRANT):
        assert grant in discovery["grant_types_supported"]
    for method in ("client_secret_basic", "client_secret_post", "private_key_jwt"):
        assert method in discovery["token_endpoint_auth_methods_supported"]


def test_oauth_authorization_server_metadata_matches(issuer, http, discovery):
    r = http.get(f"{issuer}/.well-known/oauth-authorization-server")
    if r.status_code == 404:
        pytest.skip("RFC 8414 metadata not served")
    assert r.status_code == 200
    assert r.json()["issuer"] == issuer


def test_jwks(http, discovery):
    r = http.get(discovery["jwks_uri"])
    assert r.status_code == 200
    keys = r.json()["keys"]
    assert keys
    kids = [k["kid"] for k in keys]
    assert len(set(kids)) == len(kids)
    for k in keys:
        assert k["kty"] == "OKP" and k["crv"] == "Ed25519" and k.get("alg", "EdDSA") == "EdDSA", k
        assert "d" not in k, "private key material published in JWKS"
        assert len(_b64url_decode(k["x"])) == 32
        pyjwt.PyJWK(k)  # PyJWT can load it


# ======================================================================================
# client credentials


def test_client_credentials(admin, issuer, discovery, jwks_client):
    """client_credentials for a service principal (registered for client_secret_basic)."""
    org = admin.org()
    sp = admin.service_principal(org)
    sess = OAuth2Session(
        sp["client_id"], sp["client_secret"], token_endpoint_auth_method="client_secret_basic",
        default_timeout=TIMEOUT,
    )
    seen = []
    sess.hooks["response"].append(lambda r, *a, **k: seen.append(r))
    token = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    assert seen[-1].request.headers["Authorization"].startswith("Basic ")
    assert "no-store" in seen[-1].headers.get("cache-control", "").lower()
    assert token["token_type"].lower() == "bearer"
    assert token["expires_in"] > 0
    assert "refresh_token" not in token, "client_credentials must not issue a refresh token (RFC 6749 4.4.3)"
    assert "id_token" not in token
    claims = validate_access_token(token["access_token"], jwks_client, issuer)
    assert claims["client_id"] == sp["client_id"]
    assert claims["sub"] == sp["client_id"]
    assert claims["org"] == org
    assert "admin" in claims["roles"]
    assert api_status(issuer, token["access_token"]) == 200

    # a narrower scope may be asked for
    narrow = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", scope="organizations:read")
    assert validate_access_token(narrow["access_token"], jwks_client, issuer)["scope"] == "organizations:read"
    # an unknown scope is refused
    expect_oauth_error(
        lambda: sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials", scope="no-such-scope"),
        "invalid_scope",
    )


def test_client_secret_post(admin, issuer, discovery, jwks_client):
    """A confidential client registered for client_secret_post (Authlib puts the secret in the body)."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, token_endpoint_auth_method="client_secret_post")
    sess, token, _, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid offline_access"
    )
    request = sess.last_response.request
    assert "Authorization" not in request.headers
    body = dict(parse_qsl(request.body))
    assert body["client_id"] == client["client_id"] and body["client_secret"] == client["client_secret"]
    new = sess.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"])
    validate_access_token(new["access_token"], jwks_client, issuer)
    assert introspect(sess, discovery, new["access_token"])["active"] is True


def test_client_credentials_wrong_secret(admin, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    r = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "client_credentials"},
        auth=(sp["client_id"], "not-the-secret"),
        timeout=TIMEOUT,
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert r.headers.get("www-authenticate", "").lower().startswith("basic"), (
        "RFC 6749 5.2: 401 invalid_client after Basic auth must carry WWW-Authenticate"
    )
    r = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "client_credentials", "client_id": sp["client_id"], "client_secret": "nope"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_unsupported_grant_type(admin, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    r = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "password", "username": "a", "password": "b"},
        auth=(sp["client_id"], sp["client_secret"]),
        timeout=TIMEOUT,
    )
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"
    assert "error_description" in r.json()


# ======================================================================================
# authorization code + PKCE


def test_authorization_code_confidential_client(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    scope = "openid profile email licenses:read"
    sess, token, id_claims, browser = code_flow(admin, discovery, issuer, jwks_client, client, user, scope)
    assert browser.pages == ["login", "consent"]
    assert id_claims["sub"] == user["id"]
    at = validate_access_token(token["access_token"], jwks_client, issuer)
    assert at["sub"] == id_claims["sub"]
    assert at["client_id"] == client["client_id"]
    assert at["org"] == org
    assert "member" in at["roles"]
    assert set(at["scope"].split()) == set(scope.split())

    r = sess.get(discovery["userinfo_endpoint"])
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["sub"] == id_claims["sub"], "OIDC Core 5.3.2: userinfo sub must equal ID token sub"
    assert info["email"] == user["email"]
    assert info["email_verified"] in (True, False)
    assert info["name"] == user["name"]
    assert info["org"] == org

    # second authorization in the same browser: no login page, no consent page
    sess2, token2, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, scope, browser=browser)
    assert browser.pages == ["login", "consent"]
    assert token2["access_token"] != token["access_token"]


def test_userinfo_respects_scopes(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    browser = Browser()
    expected = {
        "openid": (set(), {"email", "email_verified", "name"}),
        "openid email": ({"email", "email_verified"}, {"name"}),
        "openid profile": ({"name"}, {"email", "email_verified"}),
    }
    for scope, (present, absent) in expected.items():
        sess, _, id_claims, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, scope, browser)
        r = sess.get(discovery["userinfo_endpoint"])
        assert r.status_code == 200
        info = r.json()
        assert info["sub"] == id_claims["sub"]
        assert present <= info.keys(), f"{scope}: {info}"
        assert not absent & info.keys(), f"{scope}: claims leaked: {info}"


def test_userinfo_rejects_missing_or_bad_token(discovery):
    r = requests.get(discovery["userinfo_endpoint"], timeout=TIMEOUT)
    assert r.status_code == 401
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")
    r = requests.get(discovery["userinfo_endpoint"], headers={"Authorization": "Bearer garbage"}, timeout=TIMEOUT)
    assert r.status_code == 401
    assert "invalid_token" in r.headers.get("www-authenticate", "")


def test_member_cannot_get_api_scopes_beyond_role(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org, roles=("member",))
    client = admin.client(org, scopes=["openid", "licenses:read", "licenses:write", "keys:manage"])
    _, token, _, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid licenses:read licenses:write keys:manage"
    )
    granted = set(validate_access_token(token["access_token"], jwks_client, issuer)["scope"].split())
    assert "licenses:read" in granted and "openid" in granted
    assert not granted & {"licenses:write", "keys:manage"}, f"member got {granted}"
    assert granted - {"openid", "profile", "email", "offline_access"} <= MEMBER_API_SCOPES
    # RFC 6749 5.1: scope is REQUIRED in the response when it differs from the request
    assert "scope" in token, token
    assert set(token["scope"].split()) == granted


def test_authorization_code_public_client(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(
        org, kind="public", token_endpoint_auth_method="none", scopes=["openid", "email", "offline_access"]
    )
    assert not client.get("client_secret")
    sess, token, id_claims, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid email offline_access"
    )
    req = sess.last_response.request
    assert "Authorization" not in req.headers and f"client_id={client['client_id']}" in req.body
    assert id_claims["aud"] == client["client_id"] or client["client_id"] in id_claims["aud"]
    r = sess.get(discovery["userinfo_endpoint"])
    assert r.status_code == 200 and r.json()["email"] == user["email"]
    # a public client may refresh (rotation), authenticating with client_id only
    assert token.get("refresh_token")
    new = sess.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"])
    assert new["refresh_token"] != token["refresh_token"]
    validate_access_token(new["access_token"], jwks_client, issuer)


def test_public_client_requires_s256_pkce(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, kind="public", token_endpoint_auth_method="none", scopes=["openid"])
    browser = Browser()
    base = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": REDIRECT_URI,
        "scope": "openid",
        "state": "s-" + generate_token(8),
    }
    # no code_challenge at all
    resp = browser.drive(f"{discovery['authorization_endpoint']}?{urlencode(base)}", user, REDIRECT_URI)
    p = callback_params(resp)
    assert p.get("error") == "invalid_request", p
    assert p.get("state") == base["state"] and "code" not in p
    # "plain" is refused
    verifier = generate_token(64)
    plain = {**base, "code_challenge": verifier, "code_challenge_method": "plain"}
    resp = browser.drive(f"{discovery['authorization_endpoint']}?{urlencode(plain)}", user, REDIRECT_URI)
    p = callback_params(resp)
    assert p.get("error") == "invalid_request", p
    assert "code" not in p


def test_unregistered_scope_is_refused(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, scopes=["openid", "email"])
    sess = oauth_session(client, discovery, scope="openid licenses:write")
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), nonce="n"
    )
    resp = Browser().drive(url, user, REDIRECT_URI)
    p = callback_params(resp)
    assert p.get("error") == "invalid_scope", p
    assert p.get("state") == state and "code" not in p


def test_consent_denied(admin, issuer, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), nonce="n"
    )
    browser = Browser()
    resp = browser.drive(url, user, REDIRECT_URI, decision="deny")
    assert browser.pages == ["login", "consent"]
    p = callback_params(resp)
    assert p.get("error") == "access_denied", p
    assert p.get("state") == state and p.get("iss") == issuer and "code" not in p


# ======================================================================================
# refresh token rotation


def test_refresh_token_rotation_and_reuse_detection(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, first_id, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid email offline_access"
    )
    rt1 = token["refresh_token"]
    assert rt1

    t2 = dict(sess.refresh_token(discovery["token_endpoint"], refresh_token=rt1))
    rt2 = t2["refresh_token"]
    assert rt2 and rt2 != rt1, "refresh token was not rotated"
    at2 = validate_access_token(t2["access_token"], jwks_client, issuer)
    assert at2["gid"] == validate_access_token(token["access_token"], jwks_client, issuer)["gid"]
    if "id_token" in t2:
        # OIDC Core 12.2: same iss/sub/aud/auth_time; nonce absent or unchanged
        new_id = validate_id_token(t2["id_token"], jwks_client, issuer, client["client_id"], None, t2["access_token"])
        assert new_id["sub"] == first_id["sub"] and new_id["auth_time"] == first_id["auth_time"]
        assert new_id.get("nonce") in (None, first_id["nonce"])
    assert introspect(sess, discovery, t2["access_token"])["active"] is True
    assert introspect(sess, discovery, rt2, "refresh_token")["active"] is True

    # reuse of the superseded token: invalid_grant, and the grant is revoked
    expect_oauth_error(
        lambda: sess.refresh_token(discovery["token_endpoint"], refresh_token=rt1), "invalid_grant", 400, sess
    )
    expect_oauth_error(
        lambda: sess.refresh_token(discovery["token_endpoint"], refresh_token=rt2), "invalid_grant", 400, sess
    )
    assert introspect(sess, discovery, t2["access_token"])["active"] is False
    assert introspect(sess, discovery, token["access_token"])["active"] is False
    assert introspect(sess, discovery, rt2)["active"] is False
    r = requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {t2['access_token']}"}, timeout=TIMEOUT
    )
    assert r.status_code == 401


def test_refresh_token_bound_to_client(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    other = admin.client(org)
    _, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid offline_access")
    thief = oauth_session(other, discovery)
    expect_oauth_error(
        lambda: thief.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"]),
        "invalid_grant",
        400,
        thief,
    )


# ======================================================================================
# private_key_jwt (RFC 7523)


class FreshPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT with a short-lived assertion (the provider allows at most 10 min)."""

    def __init__(self, *args, lifetime: int = 300, **kwargs):
        super().__init__(*args, **kwargs)
        self.lifetime = lifetime

    def sign(self, auth, token_endpoint):
        # a new dict each time: Authlib stores the generated jti in it
        self.claims = {"exp": int(time.time()) + self.lifetime}
        return super().sign(auth, token_endpoint)


def ed25519_client_key():
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = OKPKey.import_key(pem)
    kid = generate_token(16)
    public = key.as_dict(private=False)
    public.update({"kid": kid, "alg": "EdDSA", "use": "sig"})
    return key, public, kid


def test_private_key_jwt_client(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    key, public_jwk, kid = ed25519_client_key()
    client = admin.client(
        org,
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [public_jwk]},
        grant_types=["authorization_code", "refresh_token"],
    )
    token_endpoint = discovery["token_endpoint"]

    def session_with(auth: PrivateKeyJWT, scope="openid email offline_access"):
        sess = oauth_session({**client, "client_secret": key}, discovery, scope=scope)
        sess.register_client_auth_method(auth)
        return sess

    sess = session_with(FreshPrivateKeyJWT(token_endpoint, alg="EdDSA", headers={"kid": kid}))
    location, state, verifier, nonce = authorize_code(Browser(), sess, discovery, user)
    token = sess.fetch_token(token_endpoint, authorization_response=location, code_verifier=verifier, state=state)
    body = dict(parse_qsl(sess.last_response.request.body))
    assert body["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assertion = pyjwt.decode(body["client_assertion"], options={"verify_signature": False})
    assert assertion["iss"] == assertion["sub"] == client["client_id"] and assertion["aud"] == token_endpoint
    validate_access_token(token["access_token"], jwks_client, issuer)
    validate_id_token(token["id_token"], jwks_client, issuer, client["client_id"], nonce, token["access_token"])

    # aud = issuer is also accepted; refresh authenticates with a new assertion
    by_issuer = session_with(FreshPrivateKeyJWT(issuer, alg="EdDSA", headers={"kid": kid}))
    new = by_issuer.refresh_token(token_endpoint, refresh_token=token["refresh_token"])
    validate_access_token(new["access_token"], jwks_client, issuer)

    # introspection also authenticates by assertion
    assert introspect(by_issuer, discovery, new["access_token"])["active"] is True

    # an assertion that lives an hour (Authlib's default) is refused
    long_lived = session_with(PrivateKeyJWT(token_endpoint, alg="EdDSA", headers={"kid": kid}))
    expect_oauth_error(
        lambda: long_lived.refresh_token(token_endpoint, refresh_token=new["refresh_token"]),
        "invalid_client",
        401,
        long_lived,
    )

    # an assertion for another audience is refused
    wrong_aud = session_with(FreshPrivateKeyJWT("https://example.com/token", alg="EdDSA", headers={"kid": kid}))
    expect_oauth_error(
        lambda: wrong_aud.refresh_token(token_endpoint, refresh_token=new["refresh_token"]),
        "invalid_client",
        401,
        wrong_aud,
    )

    # an assertion signed by a key the client did not register is refused
    stranger, _, _ = ed25519_client_key()
    forged = oauth_session({**client, "client_secret": stranger}, discovery)
    forged.register_client_auth_method(FreshPrivateKeyJWT(token_endpoint, alg="EdDSA", headers={"kid": kid}))
    expect_oauth_error(
        lambda: forged.refresh_token(token_endpoint, refresh_token=new["refresh_token"]),
        "invalid_client",
        401,
        forged,
    )

    # a client secret is not accepted from a private_key_jwt client
    r = requests.post(
        token_endpoint,
        data={"grant_type": "refresh_token", "refresh_token": new["refresh_token"]},
        auth=(client["client_id"], "whatever"),
        timeout=TIMEOUT,
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


@pytest.fixture()
def pkjwt_client(admin, discovery):
    """A private_key_jwt client and a maker of hand-built assertions."""
    from joserfc import jwt as jose_jwt

    org = admin.org()
    key, public_jwk, kid = ed25519_client_key()
    client = admin.client(
        org,
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [public_jwk]},
        grant_types=["authorization_code", "refresh_token", DEVICE_GRANT],
    )

    def make(aud, **overrides):
        now = int(time.time())
        claims = {"iss": client["client_id"], "sub": client["client_id"], "aud": aud,
                  "iat": now, "exp": now + 120, "jti": generate_token(20)}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jose_jwt.encode({"alg": "EdDSA", "kid": kid}, claims, key, algorithms=["EdDSA"])

    return client, key, make


def _assert_at(url: str, assertion: str, extra: dict | None = None) -> requests.Response:
    data = {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "scope": "openid",
    }
    data.update(extra or {})
    return requests.post(url, data=data, timeout=TIMEOUT)


def test_private_key_jwt_assertion_claims(pkjwt_client, issuer, discovery):
    """RFC 7523 3: iss = sub = client_id, aud identifies the server, exp required and not passed."""
    client, _, make = pkjwt_client
    url = discovery["device_authorization_endpoint"]
    assert _assert_at(url, make(issuer)).status_code == 200
    refused = {
        "sub differs": make(issuer, sub="someone-else"),
        "iss differs": make(issuer, iss="someone-else"),
        "no exp": make(issuer, exp=None),
        "expired": make(issuer, iat=int(time.time()) - 300, exp=int(time.time()) - 60),
        "exp too far": make(issuer, exp=int(time.time()) + 3600),
        "foreign aud": make("https://example.com/"),
    }
    for what, assertion in refused.items():
        r = _assert_at(url, assertion)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", f"{what}: {r.status_code} {r.text}"


def test_private_key_jwt_rejects_future_nbf(pkjwt_client, issuer, discovery):
    """RFC 7523 3 item 5, RFC 7519 4.1.5: not accepted before nbf."""
    _, _, make = pkjwt_client
    r = _assert_at(discovery["device_authorization_endpoint"], make(issuer, nbf=int(time.time()) + 300))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text


def test_private_key_jwt_jti_required_and_single_use(pkjwt_client, issuer, discovery):
    """OIDC Core 9: jti is REQUIRED and the assertion is used only once."""
    _, _, make = pkjwt_client
    url = discovery["device_authorization_endpoint"]
    r = _assert_at(url, make(issuer, jti=None))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assertion = make(issuer)
    assert _assert_at(url, assertion).status_code == 200
    r = _assert_at(url, assertion)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", "a replayed assertion was accepted"


def test_private_key_jwt_audience_at_par(pkjwt_client, issuer, discovery):
    """RFC 9126 2: the PAR endpoint MUST accept its issuer, token endpoint URL or its own URL as aud."""
    client, _, make = pkjwt_client
    sess = oauth_session(client, discovery, scope="openid")
    par = discovery["pushed_authorization_request_endpoint"]
    for aud in (issuer, discovery["token_endpoint"], par):
        url, _ = sess.create_authorization_url(
            discovery["authorization_endpoint"], code_verifier=generate_token(64)
        )
        r = _assert_at(par, make(aud), dict(parse_qsl(urlparse(url).query)))
        assert r.status_code == 201, f"aud={aud}: {r.status_code} {r.text}"


@pytest.mark.parametrize(
    "endpoint", ["introspection_endpoint", "revocation_endpoint", "device_authorization_endpoint"]
)
def test_private_key_jwt_token_endpoint_audience_elsewhere(pkjwt_client, issuer, discovery, endpoint):
    """OIDC Core 9: aud SHOULD be the token endpoint URL; the issuer and the endpoint's own URL also do."""
    client, _, make = pkjwt_client
    for aud in (discovery["token_endpoint"], issuer, discovery[endpoint]):
        r = _assert_at(discovery[endpoint], make(aud), {"token": "unknown"})
        assert r.status_code == 200, f"aud={aud}: {r.status_code} {r.text}"


# ======================================================================================
# PAR (RFC 9126)


def push(sess: OAuth2Session, discovery: dict, params: dict) -> requests.Response:
    return sess.post(
        discovery["pushed_authorization_request_endpoint"],
        data=params,
        auth=sess.client_auth(sess.token_endpoint_auth_method),
        withhold_token=True,
    )


def test_pushed_authorization_request(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, require_pushed_authorization_requests=True)
    sess = oauth_session(client, discovery, scope="openid email")
    verifier, nonce = generate_token(64), generate_token(20)
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    params = dict(parse_qsl(urlparse(url).query))

    r = push(sess, discovery, params)
    assert r.status_code == 201, r.text
    pushed = r.json()
    assert pushed["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    assert 0 < pushed["expires_in"] <= 600
    assert "no-store" in r.headers.get("cache-control", "").lower()

    authz = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"client_id": client["client_id"], "request_uri": pushed["request_uri"]}
    )
    resp = Browser().drive(authz, user, REDIRECT_URI)
    location = resp.headers["Location"]
    p = callback_params(resp)
    assert "code" in p and p["state"] == state and p["iss"] == issuer, p
    token = sess.fetch_token(
        discovery["token_endpoint"], authorization_response=location, code_verifier=verifier, state=state
    )
    validate_id_token(token["id_token"], jwks_client, issuer, client["client_id"], nonce, token["access_token"])

    # the client requires PAR: a plain authorization request is answered with an error redirect
    url2, state2 = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), nonce="x"
    )
    resp = Browser().drive(url2, user, REDIRECT_URI)
    p = callback_params(resp)
    assert p.get("error") == "invalid_request", p
    assert p.get("state") == state2 and "code" not in p

    # a pushed request works once (RFC 9126 section 4): its PKCE challenge belongs to one flow
    again = Browser().get(authz)
    assert again.status_code == 400 and not again.is_redirect, again.status_code

    # PAR requires client authentication
    r = requests.post(discovery["pushed_authorization_request_endpoint"], data=params, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"

    # a pushed request with an unregistered redirect_uri is refused at the PAR endpoint
    r = push(sess, discovery, {**params, "redirect_uri": "http://127.0.0.1:8765/evil"})
    assert r.status_code == 400 and r.json()["error"] in ("invalid_request", "invalid_redirect_uri"), r.text


def test_par_request_uri_bound_to_client(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    a = admin.client(org)
    b = admin.client(org)
    sess = oauth_session(a, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    r = push(sess, discovery, dict(parse_qsl(urlparse(url).query)))
    assert r.status_code == 201
    authz = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"client_id": b["client_id"], "request_uri": r.json()["request_uri"]}
    )
    # a signed-in user who already consented to b: still no code for a's pushed request
    browser = Browser()
    authorize_code(browser, oauth_session(b, discovery, scope="openid"), discovery, user)
    resp = browser.get(authz)
    if resp.is_redirect:
        p = callback_params(resp)
        assert "code" not in p and p.get("error"), p
    else:
        assert resp.status_code == 400, resp.status_code


# ======================================================================================
# device authorization grant (RFC 8628)


def device_client(admin, org):
    return admin.client(
        org,
        grant_types=[DEVICE_GRANT, "refresh_token"],
        scopes=["openid", "email", "offline_access", "licenses:read"],
        redirect_uris=[REDIRECT_URI],
    )


def start_device(sess, discovery, scope) -> dict:
    r = sess.post(
        discovery["device_authorization_endpoint"],
        data={"scope": scope},
        auth=sess.client_auth(sess.token_endpoint_auth_method),
        withhold_token=True,
    )
    assert r.status_code == 200, r.text
    d = r.json()
    for name in ("device_code", "user_code", "verification_uri", "expires_in"):
        assert name in d, d
    return d


def poll(sess, discovery, device_code):
    return sess.fetch_token(discovery["token_endpoint"], grant_type=DEVICE_GRANT, device_code=device_code)


def approve_device(browser: Browser, user: dict, url: str, decision: str) -> requests.Response:
    resp = browser.get(url)
    for _ in range(8):
        if resp.is_redirect:
            resp = browser.get(urljoin(resp.url, resp.headers["Location"]))
            continue
        assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
        if find_form(resp, "/oauth2/login"):
            browser.pages.append("login")
            resp = browser.login(resp, user["email"], user["password"])
            continue
        form = next(
            (f for f in forms_of(resp.text) if f["method"] == "post" and urlparse(f["action"]).path == "/device"),
            None,
        )
        assert form, f"no device approval form: {resp.text[:800]}"
        browser.pages.append("device")
        assert "csrf" in form["inputs"] and "user_code" in form["inputs"], form
        assert ("decision", decision) in form["buttons"], form
        return browser.submit(resp, form, {"decision": decision})
    pytest.fail("device approval did not reach the approval form")


def test_device_flow_approve(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = device_client(admin, org)
    sess = oauth_session(client, discovery)
    d = start_device(sess, discovery, "openid email offline_access")
    assert re.fullmatch(r"[A-Z0-9]{4}-[A-Z0-9]{4}", d["user_code"]), d["user_code"]
    assert d["verification_uri"] == f"{issuer}/device"
    vuc = d["verification_uri_complete"]
    assert vuc.startswith(d["verification_uri"]) and parse_qs(urlparse(vuc).query)["user_code"] == [d["user_code"]]
    interval = d.get("interval", 5)
    assert interval >= 1 and d["expires_in"] > interval

    expect_oauth_error(lambda: poll(sess, discovery, d["device_code"]), "authorization_pending", 400, sess)

    browser = Browser()
    resp = approve_device(browser, user, vuc, "allow")
    assert browser.pages == ["login", "device"]
    assert resp.status_code in (200, 303), resp.status_code

    time.sleep(interval)
    token = poll(sess, discovery, d["device_code"])
    at = validate_access_token(token["access_token"], jwks_client, issuer)
    assert at["client_id"] == client["client_id"]
    assert set(at["scope"].split()) >= {"openid", "email"}
    assert token.get("refresh_token")
    # the device is not part of the browser session, so sid is optional here
    id_claims = validate_id_token(
        token["id_token"], jwks_client, issuer, client["client_id"], None, token["access_token"],
        require_sid=False,
    )
    assert "nonce" not in id_claims
    assert at["sub"] == id_claims["sub"]
    r = sess.get(discovery["userinfo_endpoint"])
    assert r.status_code == 200 and r.json()["email"] == user["email"]

    # the device code is single use
    time.sleep(interval)
    with pytest.raises(OAuthError) as exc:
        poll(sess, discovery, d["device_code"])
    assert exc.value.error in ("invalid_grant", "expired_token"), exc.value.error


def test_device_flow_slow_down_and_deny(admin, issuer, discovery):
    org = admin.org()
    user = admin.user(org)
    client = device_client(admin, org)
    sess = oauth_session(client, discovery)
    d = start_device(sess, discovery, "openid")
    interval = d.get("interval", 5)

    expect_oauth_error(lambda: poll(sess, discovery, d["device_code"]), "authorization_pending", 400, sess)
    expect_oauth_error(lambda: poll(sess, discovery, d["device_code"]), "slow_down", 400, sess)

    browser = Browser()
    approve_device(browser, user, d["verification_uri_complete"], "deny")

    # RFC 8628 3.5: after slow_down the interval grows by 5 seconds
    time.sleep(interval + 5)
    expect_oauth_error(lambda: poll(sess, discovery, d["device_code"]), "access_denied", 400, sess)


def test_device_flow_login_continues_to_device_page(admin, issuer, discovery):
    """The sign-in page reached from /device leads back to /device (no authorization code)."""
    org = admin.org()
    user = admin.user(org)
    client = device_client(admin, org)
    sess = oauth_session(client, discovery)
    d = start_device(sess, discovery, "openid")
    browser = Browser()
    resp = browser.get(f"{issuer}/device?user_code={d['user_code']}")
    assert resp.status_code == 200 and find_form(resp, "/oauth2/login")
    resp = browser.login(resp, user["email"], user["password"])
    assert resp.is_redirect
    target = urlparse(urljoin(resp.url, resp.headers["Location"]))
    assert target.path == "/device", target
    assert parse_qs(target.query).get("user_code") == [d["user_code"]]


def test_device_code_unknown(admin, discovery):
    org = admin.org()
    client = device_client(admin, org)
    sess = oauth_session(client, discovery)
    expect_oauth_error(lambda: poll(sess, discovery, "not-a-device-code"), "invalid_grant", 400, sess)


# ======================================================================================
# introspection (RFC 7662) and revocation (RFC 7009)


def test_introspection_and_revocation(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid email offline_access")

    info = introspect(sess, discovery, token["access_token"])
    assert info["active"] is True
    assert info["client_id"] == client["client_id"]
    assert set(info["scope"].split()) == {"openid", "email", "offline_access"}
    assert info["iss"] == issuer
    assert info["exp"] > time.time()
    assert info.get("token_type", "Bearer").lower() in ("bearer", "access_token")

    rt_info = introspect(sess, discovery, token["refresh_token"], "refresh_token")
    assert rt_info["active"] is True

    # introspection requires client authentication
    r = requests.post(discovery["introspection_endpoint"], data={"token": token["access_token"]}, timeout=TIMEOUT)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"

    # a wrong token_type_hint does not stop the lookup (RFC 7662 2.1, RFC 7009 2.1)
    assert introspect(sess, discovery, token["access_token"], "refresh_token")["active"] is True
    assert introspect(sess, discovery, token["refresh_token"], "access_token")["active"] is True

    # revoking the access token revokes the whole grant (refresh token too);
    # the hint is deliberately wrong
    r = sess.revoke_token(discovery["revocation_endpoint"], token=token["access_token"], token_type_hint="refresh_token")
    assert r.status_code == 200 and r.json() == {}
    assert introspect(sess, discovery, token["access_token"]) == {"active": False}
    assert introspect(sess, discovery, token["refresh_token"]) == {"active": False}
    assert api_status(issuer, token["access_token"]) == 401
    expect_oauth_error(
        lambda: sess.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"]),
        "invalid_grant",
        400,
        sess,
    )

    # revoking again, or an unknown token, is still 200 (RFC 7009 2.2)
    r = sess.revoke_token(discovery["revocation_endpoint"], token=token["access_token"])
    assert r.status_code == 200
    r = sess.revoke_token(discovery["revocation_endpoint"], token="no-such-token")
    assert r.status_code == 200
    # a garbage token introspects as inactive, without other fields
    assert introspect(sess, discovery, "no-such-token") == {"active": False}


def test_revoke_refresh_token_revokes_grant(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid offline_access")
    r = sess.revoke_token(discovery["revocation_endpoint"], token=token["refresh_token"], token_type_hint="refresh_token")
    assert r.status_code == 200 and r.json() == {}
    assert introspect(sess, discovery, token["access_token"])["active"] is False
    r = requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=TIMEOUT
    )
    assert r.status_code == 401


def test_client_credentials_token_introspect_and_revoke(admin, issuer, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    sess = OAuth2Session(sp["client_id"], sp["client_secret"], default_timeout=TIMEOUT)
    token = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")
    info = introspect(sess, discovery, token["access_token"])
    assert info["active"] is True and info["client_id"] == sp["client_id"]
    r = sess.revoke_token(discovery["revocation_endpoint"], token=token["access_token"])
    assert r.status_code == 200
    assert introspect(sess, discovery, token["access_token"])["active"] is False
    assert api_status(issuer, token["access_token"]) == 401


def test_public_client_cannot_introspect(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, kind="public", token_endpoint_auth_method="none", scopes=["openid"])
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid")
    r = requests.post(
        discovery["introspection_endpoint"],
        data={"token": token["access_token"], "client_id": client["client_id"]},
        timeout=TIMEOUT,
    )
    assert r.status_code in (400, 401, 403), r.text
    assert r.json().get("error") in ("invalid_client", "unauthorized_client", "invalid_request")
    assert "active" not in r.json()


def test_other_client_cannot_revoke(admin, issuer, discovery, jwks_client):
    """RFC 7009 2.1: the server verifies the token was issued to the requesting client."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    other = admin.client(org)
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid offline_access")
    intruder = oauth_session(other, discovery)
    r = intruder.revoke_token(discovery["revocation_endpoint"], token=token["refresh_token"])
    assert r.status_code in (200, 400)
    assert introspect(sess, discovery, token["access_token"])["active"] is True


# ======================================================================================
# negatives: front channel


def test_redirect_uri_mismatch_is_not_redirected(admin, discovery):
    org = admin.org()
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    for bad in (
        "http://127.0.0.1:8765/evil",
        REDIRECT_URI + "/",
        REDIRECT_URI + "?x=1",
        REDIRECT_URI.upper(),
        "http://localhost:8765/callback",
        "http://127.0.0.1:8765/callback/../evil",
        "https://attacker.example/cb",
    ):
        url, _ = sess.create_authorization_url(
            discovery["authorization_endpoint"], code_verifier=generate_token(64), redirect_uri=bad
        )
        r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code == 400, f"{bad}: {r.status_code}"
        assert "Location" not in r.headers


def test_unknown_client_is_not_redirected(discovery):
    url = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"response_type": "code", "client_id": "nope", "redirect_uri": REDIRECT_URI, "scope": "openid"}
    )
    r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 400 and "Location" not in r.headers


def test_login_csrf_is_enforced(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    browser = Browser()
    page = browser.get(url)
    form = find_form(page, "/oauth2/login")
    data = {**form["inputs"], "email": user["email"], "password": user["password"], "csrf": "forged"}
    r = browser.s.post(urljoin(page.url, form["action"]), data=data, allow_redirects=False)
    assert r.status_code in (400, 403), r.status_code
    assert not browser.s.cookies.get("qsa_session")


def test_wrong_password(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    browser = Browser()
    page = browser.get(url)
    r = browser.login(page, user["email"], "definitely the wrong password")
    assert r.status_code == 401
    assert "Wrong email or password." in r.text
    assert find_form(r, "/oauth2/login"), "the login form should be shown again"
    assert not browser.s.cookies.get("qsa_session")
    # an unknown email gets the very same answer
    r = browser.login(r, f"nobody-{uuid.uuid4().hex}@example.com", "definitely the wrong password")
    assert r.status_code == 401 and "Wrong email or password." in r.text


def test_brute_force_lockout(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    browser = Browser()
    page = browser.get(url)
    for i in range(4):
        page = browser.login(page, user["email"], f"wrong password number {i}")
        assert page.status_code == 401, f"attempt {i + 1}: {page.status_code}"
    # the fifth failure may already answer 429 (it is the one that sets the lock)
    page = browser.login(page, user["email"], "wrong password number 5")
    assert page.status_code in (401, 429), page.status_code
    page = browser.login(page, user["email"], "yet another wrong password")
    assert page.status_code == 429
    assert "Wrong email or password." not in page.text or "Too many" in page.text
    # locked even with the right password
    if find_form(page, "/oauth2/login"):
        r = browser.login(page, user["email"], user["password"])
    else:
        fresh = browser.get(url)
        r = browser.login(fresh, user["email"], user["password"])
    assert r.status_code == 429
    assert not browser.s.cookies.get("qsa_session")
    # the lock is on the login name, whatever its case and surrounding blanks
    fresh = browser.get(url)
    r = browser.login(fresh, f"  {user['email'].upper()} ", user["password"])
    assert r.status_code == 429
    assert not browser.s.cookies.get("qsa_session")


# ======================================================================================
# negatives: token endpoint


def _fresh_code(browser, sess, discovery, user):
    location, state, verifier, nonce = authorize_code(browser, sess, discovery, user)
    params = dict(parse_qsl(urlparse(location).query))
    assert params.get("code"), params
    return location, state, verifier


def test_pkce_verifier_missing_or_wrong(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    browser = Browser()
    token_endpoint = discovery["token_endpoint"]

    location, state, _ = _fresh_code(browser, sess, discovery, user)
    expect_oauth_error(
        lambda: sess.fetch_token(token_endpoint, authorization_response=location, state=state),
        "invalid_grant", 400, sess,
    )
    location, state, _ = _fresh_code(browser, sess, discovery, user)
    expect_oauth_error(
        lambda: sess.fetch_token(
            token_endpoint, authorization_response=location, state=state, code_verifier=generate_token(64)
        ),
        "invalid_grant", 400, sess,
    )


def test_code_redirect_uri_and_client_binding(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, redirect_uris=[REDIRECT_URI, "http://127.0.0.1:8765/other"])
    other = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    browser = Browser()
    token_endpoint = discovery["token_endpoint"]

    # redirect_uri at the token endpoint must match the one used at /authorize
    location, state, verifier = _fresh_code(browser, sess, discovery, user)
    expect_oauth_error(
        lambda: sess.fetch_token(
            token_endpoint, authorization_response=location, state=state, code_verifier=verifier,
            redirect_uri="http://127.0.0.1:8765/other",
        ),
        "invalid_grant", 400, sess,
    )
    # a code issued to one client cannot be redeemed by another
    location, state, verifier = _fresh_code(browser, sess, discovery, user)
    thief = oauth_session(other, discovery)
    expect_oauth_error(
        lambda: thief.fetch_token(
            token_endpoint, authorization_response=location, state=state, code_verifier=verifier
        ),
        "invalid_grant", 400, thief,
    )


def test_authorization_code_reuse_revokes_tokens(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid offline_access")
    location, state, verifier = _fresh_code(Browser(), sess, discovery, user)
    token_endpoint = discovery["token_endpoint"]
    first = dict(
        sess.fetch_token(token_endpoint, authorization_response=location, code_verifier=verifier, state=state)
    )
    assert introspect(sess, discovery, first["access_token"])["active"] is True

    expect_oauth_error(
        lambda: sess.fetch_token(token_endpoint, authorization_response=location, code_verifier=verifier, state=state),
        "invalid_grant", 400, sess,
    )
    # RFC 6749 4.1.2 / OAuth 2.0 Security BCP: tokens from the first exchange are revoked
    assert introspect(sess, discovery, first["access_token"])["active"] is False
    assert introspect(sess, discovery, first["refresh_token"])["active"] is False
    assert api_status(issuer, first["access_token"]) == 401


# ======================================================================================
# negatives: resource server token validation


def _forge(header: dict, claims: dict, signing_input_key: bytes | None) -> str:
    h = _b64url(json.dumps(header, separators=(",", ":")).encode())
    c = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{h}.{c}".encode()
    if signing_input_key is None:
        return f"{h}.{c}."
    sig = hmac.new(signing_input_key, signing_input, hashlib.sha256).digest()
    return f"{h}.{c}.{_b64url(sig)}"


def test_forged_tokens_are_rejected(admin, issuer, discovery, http):
    org = admin.org()
    sp = admin.service_principal(org)
    sess = OAuth2Session(sp["client_id"], sp["client_secret"], default_timeout=TIMEOUT)
    real = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")["access_token"]
    assert api_status(issuer, real) == 200
    claims = pyjwt.decode(real, options={"verify_signature": False})
    header = pyjwt.get_unverified_header(real)
    claims["jti"] = str(uuid.uuid4())

    # alg none
    for alg in ("none", "None", "NONE"):
        forged = _forge({"alg": alg, "typ": "at+jwt", "kid": header["kid"]}, claims, None)
        assert api_status(issuer, forged) == 401, f"alg {alg} accepted"

    # HS256 keyed with the public key (algorithm confusion), in several encodings
    jwk = next(k for k in http.get(discovery["jwks_uri"]).json()["keys"] if k["kid"] == header["kid"])
    raw = _b64url_decode(jwk["x"])
    public_pem = pyjwt.PyJWK(jwk).key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (raw, jwk["x"].encode(), public_pem, json.dumps(jwk).encode()):
        forged = _forge({"alg": "HS256", "typ": "at+jwt", "kid": header["kid"]}, claims, secret)
        assert api_status(issuer, forged) == 401

    # the real signature over altered claims
    h, c, s = real.split(".")
    tampered = {**claims, "roles": ["owner"], "org": str(uuid.uuid4())}
    assert api_status(issuer, f"{h}.{_b64url(json.dumps(tampered).encode())}.{s}") == 401


def test_id_token_is_not_an_access_token(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org, roles=("admin",))
    client = admin.client(org, scopes=["openid", "email", "organizations:read"])
    _, token, _, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid email organizations:read"
    )
    assert api_status(issuer, token["access_token"]) == 200
    assert api_status(issuer, token["id_token"]) == 401
    r = requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['id_token']}"}, timeout=TIMEOUT
    )
    assert r.status_code == 401


# ======================================================================================
# logout


def test_logout_ends_session_and_revokes_grants(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, browser = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid offline_access"
    )
    state = generate_token(12)
    r = browser.get(
        f"{discovery['end_session_endpoint']}?"
        + urlencode(
            {
                "post_logout_redirect_uri": POST_LOGOUT_URI,
                "client_id": client["client_id"],
                "state": state,
                "id_token_hint": token["id_token"],
            }
        )
    )
    assert r.is_redirect, r.status_code
    target = urlparse(r.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == POST_LOGOUT_URI
    assert parse_qs(target.query).get("state") == [state]

    assert introspect(sess, discovery, token["access_token"])["active"] is False
    assert introspect(sess, discovery, token["refresh_token"])["active"] is False

    # the session is gone: a new authorization asks for the password again
    browser.pages.clear()
    sess2 = oauth_session(client, discovery, scope="openid")
    authorize_code(browser, sess2, discovery, user)
    assert browser.pages and browser.pages[0] == "login"


def test_logout_rejects_unregistered_post_logout_uri(admin, discovery):
    org = admin.org()
    client = admin.client(org)
    r = requests.get(
        f"{discovery['end_session_endpoint']}?"
        + urlencode({"post_logout_redirect_uri": "https://attacker.example/", "client_id": client["client_id"]}),
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    if r.is_redirect:
        assert not r.headers["Location"].startswith("https://attacker.example"), "open redirect at logout"


# ======================================================================================
# further RFC checks


def test_pkce_downgrade_is_refused(admin, discovery):
    """RFC 9700 2.1.1: a code_verifier for a code issued without code_challenge is rejected."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    state = generate_token(12)
    url = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"response_type": "code", "client_id": client["client_id"], "redirect_uri": REDIRECT_URI,
         "scope": "openid", "state": state}
    )
    resp = Browser().drive(url, user, REDIRECT_URI)
    p = callback_params(resp)
    if "error" in p:
        assert p["error"] == "invalid_request"  # PKCE required for every client: fine too
        return
    expect_oauth_error(
        lambda: sess.fetch_token(
            discovery["token_endpoint"], authorization_response=resp.headers["Location"], state=state,
            code_verifier=generate_token(64),
        ),
        "invalid_grant", 400, sess,
    )


def test_redirect_uri_required_at_token_endpoint(admin, discovery):
    """RFC 6749 4.1.3: redirect_uri is required when it was in the authorization request."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    location, state, verifier = _fresh_code(Browser(), sess, discovery, user)
    code = dict(parse_qsl(urlparse(location).query))["code"]
    r = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "authorization_code", "code": code, "code_verifier": verifier},
        auth=(client["client_id"], client["client_secret"]),
        timeout=TIMEOUT,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] in ("invalid_grant", "invalid_request")


def test_refresh_scope_narrowing_and_widening(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, _ = code_flow(
        admin, discovery, issuer, jwks_client, client, user, "openid email offline_access"
    )
    wider = lambda: sess.refresh_token(  # noqa: E731
        discovery["token_endpoint"], refresh_token=token["refresh_token"], scope="openid email offline_access profile"
    )
    expect_oauth_error(wider, "invalid_scope", 400, sess)
    narrow = sess.refresh_token(
        discovery["token_endpoint"], refresh_token=token["refresh_token"], scope="openid offline_access"
    )
    claims = validate_access_token(narrow["access_token"], jwks_client, issuer)
    assert set(claims["scope"].split()) == {"openid", "offline_access"}


def test_unsupported_response_type(admin, issuer, discovery):
    org = admin.org()
    client = admin.client(org)
    state = generate_token(10)
    url = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"response_type": "token", "client_id": client["client_id"], "redirect_uri": REDIRECT_URI,
         "scope": "openid", "state": state}
    )
    r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    assert r.is_redirect, r.status_code
    p = callback_params(r)
    assert p.get("error") == "unsupported_response_type", p
    assert p.get("state") == state and p.get("iss") == issuer
    assert "access_token" not in r.headers["Location"]


def test_prompt_none(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    browser = Browser()
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), prompt="none"
    )
    r = browser.get(url)
    assert r.is_redirect, f"prompt=none must not show a page ({r.status_code})"
    p = callback_params(r)
    assert p.get("error") == "login_required" and p.get("state") == state, p

    # signed in but no consent yet: consent_required
    authorize_code(browser, oauth_session(admin.client(org), discovery, scope="openid"), discovery, user)
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), prompt="none"
    )
    r = browser.get(url)
    assert r.is_redirect
    p = callback_params(r)
    assert p.get("error") in ("consent_required", "interaction_required") and p.get("state") == state, p

    # after consent, prompt=none returns a code silently
    authorize_code(browser, sess, discovery, user)
    url, state = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), prompt="none"
    )
    r = browser.get(url)
    assert r.is_redirect
    p = callback_params(r)
    assert "code" in p and p.get("state") == state, p

    # prompt=login forces a new sign-in
    browser.pages.clear()
    url, _ = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), prompt="login"
    )
    browser.drive(url, user, REDIRECT_URI)
    assert browser.pages[:1] == ["login"]


def test_session_cookie_attributes(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    browser = Browser()
    page = browser.get(url)
    assert "qsa_csrf" in page.headers.get("set-cookie", "")
    r = browser.login(page, user["email"], user["password"])
    raw = r.headers.get("set-cookie", "")
    assert "qsa_session=" in raw
    session_cookie = next(c for c in browser.s.cookies if c.name == "qsa_session")
    assert session_cookie.has_nonstandard_attr("HttpOnly") or "httponly" in raw.lower()
    assert "samesite=lax" in raw.lower() or "samesite=strict" in raw.lower()


def test_consent_csrf_is_enforced(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    browser = Browser()
    page = browser.login(browser.get(url), user["email"], user["password"])
    while page.is_redirect:
        page = browser.get(urljoin(page.url, page.headers["Location"]))
    form = find_form(page, "/oauth2/consent")
    assert form, page.text[:500]
    r = browser.s.post(
        urljoin(page.url, form["action"]),
        data={**form["inputs"], "csrf": "forged", "decision": "allow"},
        allow_redirects=False,
    )
    assert r.status_code in (400, 403), r.status_code
    assert not (r.is_redirect and "code=" in r.headers.get("Location", ""))


def test_userinfo_needs_openid_scope(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "licenses:read")
    assert "id_token" not in token
    r = sess.get(discovery["userinfo_endpoint"])
    assert r.status_code == 403, r.status_code
    assert "insufficient_scope" in r.headers.get("www-authenticate", "")


def test_token_signed_by_foreign_key_with_real_kid(admin, issuer, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    sess = OAuth2Session(sp["client_id"], sp["client_secret"], default_timeout=TIMEOUT)
    real = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")["access_token"]
    header = pyjwt.get_unverified_header(real)
    claims = pyjwt.decode(real, options={"verify_signature": False})
    attacker = Ed25519PrivateKey.generate()
    forged = pyjwt.encode(claims, attacker, algorithm="EdDSA", headers={"kid": header["kid"], "typ": "at+jwt"})
    assert api_status(issuer, forged) == 401
    # embedded key (jwk header) must not be trusted either
    jwk = json.loads(pyjwt.algorithms.OKPAlgorithm.to_jwk(attacker.public_key()))
    forged = pyjwt.encode(claims, attacker, algorithm="EdDSA", headers={"jwk": jwk, "typ": "at+jwt"})
    assert api_status(issuer, forged) == 401
    r = requests.get(discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT)
    assert r.status_code == 401


def test_par_rejects_request_uri_parameter(admin, discovery):
    """RFC 9126 2.1: request_uri must not be pushed."""
    org = admin.org()
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
    params = dict(parse_qsl(urlparse(url).query))
    params["request_uri"] = "urn:ietf:params:oauth:request_uri:abc"
    r = push(sess, discovery, params)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


def test_device_authorization_requires_the_grant(admin, discovery):
    org = admin.org()
    client = admin.client(org)  # authorization_code + refresh_token only
    sess = oauth_session(client, discovery)
    r = sess.post(
        discovery["device_authorization_endpoint"], data={"scope": "openid"},
        auth=sess.client_auth(sess.token_endpoint_auth_method), withhold_token=True,
    )
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] == "unauthorized_client"


def test_device_code_bound_to_client(admin, discovery):
    org = admin.org()
    a = device_client(admin, org)
    b = device_client(admin, org)
    d = start_device(oauth_session(a, discovery), discovery, "openid")
    thief = oauth_session(b, discovery)
    expect_oauth_error(lambda: poll(thief, discovery, d["device_code"]), "invalid_grant", 400, thief)


def test_public_client_revokes_own_token(admin, issuer, discovery, jwks_client):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, kind="public", token_endpoint_auth_method="none", scopes=["openid", "offline_access"])
    sess, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid offline_access")
    r = sess.revoke_token(discovery["revocation_endpoint"], token=token["refresh_token"])
    assert r.status_code == 200
    expect_oauth_error(
        lambda: sess.refresh_token(discovery["token_endpoint"], refresh_token=token["refresh_token"]),
        "invalid_grant", 400, sess,
    )
    assert requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=TIMEOUT
    ).status_code == 401


def test_logout_without_client_does_not_redirect(admin, discovery):
    """RP-Initiated Logout 1.0 section 3: no redirect to a URI that cannot be tied to a client."""
    r = requests.get(
        f"{discovery['end_session_endpoint']}?" + urlencode({"post_logout_redirect_uri": POST_LOGOUT_URI}),
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert not r.is_redirect or not r.headers["Location"].startswith(POST_LOGOUT_URI)


def test_token_endpoint_request_format(admin, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    auth = (sp["client_id"], sp["client_secret"])
    r = requests.post(discovery["token_endpoint"], json={"grant_type": "client_credentials"}, auth=auth, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = requests.post(
        discovery["token_endpoint"], data="grant_type=client_credentials&grant_type=client_credentials",
        headers={"Content-Type": "application/x-www-form-urlencoded"}, auth=auth, timeout=TIMEOUT,
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = requests.post(discovery["token_endpoint"], data={}, auth=auth, timeout=TIMEOUT)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = requests.get(discovery["token_endpoint"] + "?grant_type=client_credentials", auth=auth, timeout=TIMEOUT)
    assert r.status_code in (400, 405)


def test_par_ignores_query_parameters_outside_the_pushed_request(admin, issuer, discovery):
    """RFC 9126 4: only the pushed parameters count; a redirect_uri added to the query is ignored."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, redirect_uris=[REDIRECT_URI, "http://127.0.0.1:8765/other"])
    sess = oauth_session(client, discovery, scope="openid")
    verifier = generate_token(64)
    url, state = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=verifier)
    r = push(sess, discovery, dict(parse_qsl(urlparse(url).query)))
    assert r.status_code == 201
    authz = f"{discovery['authorization_endpoint']}?" + urlencode(
        {"client_id": client["client_id"], "request_uri": r.json()["request_uri"],
         "redirect_uri": "http://127.0.0.1:8765/other", "state": "injected"}
    )
    resp = Browser().drive(authz, user, "http://127.0.0.1:8765/")
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?"), location
    p = callback_params(resp)
    assert p.get("state") == state, p
    token = sess.fetch_token(
        discovery["token_endpoint"], authorization_response=location, code_verifier=verifier, state=state
    )
    assert token["access_token"]


def test_a_client_serves_its_own_organizations_people_only(admin, discovery):
    # Accounts belong to an organization and a client signs in its own organization's people:
    # a person of another organization is unknown there, told exactly what a wrong password is
    # told, and the client gets no code.
    org, other = admin.org(), admin.org()
    stranger = admin.user(other)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    url, _ = sess.create_authorization_url(
        discovery["authorization_endpoint"], code_verifier=generate_token(64), nonce="n"
    )
    browser = Browser()
    page = browser.get(url)
    while page.is_redirect:
        page = browser.get(urljoin(page.url, page.headers["Location"]))
    assert find_form(page, "/oauth2/login"), page.text[:300]
    resp = browser.login(page, stranger["email"], stranger["password"])
    assert resp.status_code == 401, resp.status_code
    assert "Wrong email or password." in resp.text
    assert "code=" not in resp.headers.get("Location", "")


def test_request_objects_and_other_response_modes_are_refused_not_ignored(admin, discovery):
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess = oauth_session(client, discovery, scope="openid")
    for extra, error in (({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
                         ({"response_mode": "fragment"}, "invalid_request")):
        url, state = sess.create_authorization_url(
            discovery["authorization_endpoint"], code_verifier=generate_token(64), nonce="n", **extra
        )
        resp = Browser().drive(url, user, REDIRECT_URI)
        p = callback_params(resp)
        assert p.get("error") == error and "code" not in p, p


def test_token_responses_are_never_cached(admin, discovery):
    org = admin.org()
    sp = admin.service_principal(org)
    r = requests.post(
        discovery["token_endpoint"],
        data={"grant_type": "client_credentials"},
        auth=(sp["client_id"], sp["client_secret"]),
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    assert r.headers.get("cache-control") == "no-store" and r.headers.get("pragma") == "no-cache"


# ======================================================================================
# hardening findings (issue 14 item 5)


def test_loopback_redirect_uris_accept_any_port(admin, issuer, discovery, jwks_client):
    """RFC 8252 7.3: a native app listens on whatever port it gets; nothing else loosens."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org, redirect_uris=["http://127.0.0.1/callback"])
    sess = oauth_session(client, discovery, scope="openid")
    sess.redirect_uri = "http://127.0.0.1:49152/callback"
    location, state, verifier, _ = authorize_code(Browser(), sess, discovery, user)
    assert location.startswith("http://127.0.0.1:49152/callback?"), location
    token = sess.fetch_token(
        discovery["token_endpoint"], authorization_response=location, code_verifier=verifier, state=state
    )
    validate_access_token(token["access_token"], jwks_client, issuer)
    for other in ("http://127.0.0.1:49152/elsewhere", "http://localhost:49152/callback"):
        sess.redirect_uri = other
        url, _ = sess.create_authorization_url(discovery["authorization_endpoint"], code_verifier=generate_token(64))
        r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
        assert not r.is_redirect, f"{other} was accepted: {r.headers.get('Location')}"
        assert r.status_code == 400, r.status_code


def test_client_credentials_client_cannot_register_scopes_it_can_never_receive(admin, issuer):
    """A client that only uses client_credentials gets its roles' scopes: more must be refused
    at registration, not accepted and then refused at every token request."""
    org = admin.org()
    r = requests.post(
        f"{issuer}/v1/clients",
        json={
            "organization_id": org,
            "name": "batch job",
            "kind": "confidential",
            "redirect_uris": [],
            "grant_types": ["client_credentials"],
            "scopes": ["licenses:read"],
            "token_endpoint_auth_method": "client_secret_basic",
        },
        headers=admin._headers(),
        timeout=TIMEOUT,
    )
    assert r.status_code == 422, r.text
    assert "can never be granted" in r.json()["detail"]
    # A client that also signs people in keeps the scope for them; its own
    # client_credentials token without `scope` gets what it may have instead of an error.
    both = admin.client(org, grant_types=["authorization_code", "client_credentials"])
    sess = OAuth2Session(both["client_id"], both["client_secret"], default_timeout=TIMEOUT)
    token = sess.fetch_token(f"{issuer}/oauth2/token", grant_type="client_credentials")
    assert "licenses:read" not in token.get("scope", "").split()


def test_errors_do_not_expose_library_internals(admin, issuer, discovery):
    """error_description speaks the protocol, not the JWT library's enum names."""
    org = admin.org()
    sp = admin.service_principal(org)
    sess = OAuth2Session(sp["client_id"], sp["client_secret"], default_timeout=TIMEOUT)
    real = sess.fetch_token(discovery["token_endpoint"], grant_type="client_credentials")["access_token"]
    claims = pyjwt.decode(real, options={"verify_signature": False})
    header = pyjwt.get_unverified_header(real)
    forged = _forge({"alg": "none", "typ": "at+jwt", "kid": header["kid"]}, claims, None)
    for r in (
        requests.get(discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT),
        requests.get(f"{issuer}/v1/organizations", headers={"Authorization": f"Bearer {forged}"}, timeout=TIMEOUT),
        requests.post(
            discovery["introspection_endpoint"], data={"token": forged}, auth=(sp["client_id"], sp["client_secret"]),
            timeout=TIMEOUT,
        ),
    ):
        text = r.text + r.headers.get("WWW-Authenticate", "")
        for internal in ("variant", "HS256", "expected one of", "ErrorKind"):
            assert internal not in text, f"{r.url}: {text}"


def test_discovery_advertises_only_what_userinfo_does(discovery, admin, issuer, jwks_client):
    """userinfo answers plain JSON; discovery must not promise unsigned JWT responses."""
    assert "none" not in discovery.get("userinfo_signing_alg_values_supported", [])
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    _, token, _, _ = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid email")
    r = requests.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {token['access_token']}"}, timeout=TIMEOUT
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")


def test_logout_without_a_valid_hint_asks_first(admin, issuer, discovery, jwks_client):
    """RP-Initiated Logout 1.0 section 2: without an id_token_hint for the signed-in person the
    OP asks; a forged hint is refused; the person's confirmation (with CSRF) ends the session."""
    org = admin.org()
    user = admin.user(org)
    client = admin.client(org)
    sess, token, _, browser = code_flow(admin, discovery, issuer, jwks_client, client, user, "openid")
    page = browser.get(discovery["end_session_endpoint"])
    assert page.status_code == 200
    form = find_form(page, "/oauth2/logout")
    assert form and "csrf" in form["inputs"], page.text[:500]
    # Still signed in: a new authorization needs no password.
    browser.pages.clear()
    authorize_code(browser, oauth_session(client, discovery, scope="openid"), discovery, None)
    assert "login" not in browser.pages
    # A hint this server never issued.
    bad = browser.get(f"{discovery['end_session_endpoint']}?" + urlencode({"id_token_hint": token["access_token"]}))
    assert bad.status_code == 400
    # The form without its CSRF token asks again; with it, the session ends.
    no_csrf = {k: v for k, v in form["inputs"].items() if k != "csrf"}
    again = browser.s.post(urljoin(page.url, form["action"]), data=no_csrf, allow_redirects=False)
    assert find_form(again, "/oauth2/logout"), "signed out without the CSRF token"
    page = browser.get(discovery["end_session_endpoint"])
    done = browser.submit(page, find_form(page, "/oauth2/logout"), {})
    assert "You are signed out." in done.text
    assert introspect(sess, discovery, token["access_token"])["active"] is False
