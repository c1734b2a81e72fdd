//! Sender-constrained tokens, DPoP (RFC 9449), end to end over HTTP: proofs at the token
//! endpoint with the server's nonce, `cnf.jkt` in the tokens and at introspection, the
//! resource side (every `/v1` route and userinfo share one check) against replayed,
//! mismatched and stolen proofs, a client that must use DPoP, a public client's key-bound
//! refresh token, and codes bound to a key (`dpop_jkt`, a proof at PAR). The proofs are made here with `p256` and `ed25519-dalek`
//! directly (not with the server's code); `tests/dpop` runs an independent client.

use std::process::Command;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::Digest;

use crate::harness::*;
use crate::qsa::{
    claims, fixture, fixture_on, introspect, sign_in_for_code, Browser, Fixture, REDIRECT, VERIFIER,
};

/// A client's DPoP key pair.
pub enum Key {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(&serde_json::to_vec(v).unwrap())
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// base64url SHA-256 of an access token: a proof's `ath`.
pub fn ath(token: &str) -> String {
    b64(&sha2::Sha256::digest(token.as_bytes()))
}

impl Key {
    pub fn es256() -> Key {
        Key::Es256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng))
    }

    pub fn ed25519() -> Key {
        Key::Ed25519(ed25519_dalek::SigningKey::from_bytes(&rand::random()))
    }

    fn alg(&self) -> &'static str {
        match self {
            Key::Es256(_) => "ES256",
            Key::Ed25519(_) => "EdDSA",
        }
    }

    pub fn jwk(&self) -> Value {
        match self {
            Key::Es256(k) => {
                let point = k.verifying_key().to_encoded_point(false);
                json!({"kty": "EC", "crv": "P-256",
                       "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
            }
            Key::Ed25519(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.verifying_key().as_bytes())})
            }
        }
    }

    /// RFC 7638: SHA-256 of the required members, sorted, without whitespace.
    pub fn jkt(&self) -> String {
        let jwk = self.jwk();
        let canonical = match self {
            Key::Es256(_) => {
                json!({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]})
            }
            Key::Ed25519(_) => json!({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}),
        };
        // serde_json's maps are sorted (no preserve_order): the RFC's lexicographic order.
        b64(&sha2::Sha256::digest(
            serde_json::to_string(&canonical).unwrap().as_bytes(),
        ))
    }

    /// A JWS over `header` and `claims` with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64_json(header), b64_json(claims));
        let sig = match self {
            Key::Es256(k) => {
                use p256::ecdsa::signature::Signer;
                let s: p256::ecdsa::Signature = k.sign(input.as_bytes());
                s.to_bytes().to_vec()
            }
            Key::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(input.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{input}.{}", b64(&sig))
    }

    pub fn header(&self) -> Value {
        json!({"typ": "dpop+jwt", "alg": self.alg(), "jwk": self.jwk()})
    }

    /// A fresh proof for `htm` `htu`, with `ath` of `token` and the server's `nonce`.
    pub fn proof(&self, htm: &str, htu: &str, token: Option<&str>, nonce: Option<&str>) -> String {
        let mut c =
            json!({"jti": uuid::Uuid::now_v7().to_string(), "htm": htm, "htu": htu, "iat": now()});
        if let Some(t) = token {
            c["ath"] = ath(t).into();
        }
        if let Some(n) = nonce {
            c["nonce"] = n.into();
        }
        self.sign(&self.header(), &c)
    }
}

pub struct TokenReply {
    pub status: u16,
    pub body: Value,
    pub nonce: Option<String>,
}

/// A token request with a proof by `key` (when given), answering a `use_dpop_nonce`
/// challenge once, as RFC 9449 §8 describes; `basic` authenticates a confidential client.
pub async fn token_with(
    base: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
    key: Option<&Key>,
) -> TokenReply {
    post_with(&format!("{base}/oauth2/token"), basic, form, key).await
}

/// A form POST to a token-style endpoint (`url`) as [`token_with`] makes it.
pub async fn post_with(
    url: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
    key: Option<&Key>,
) -> TokenReply {
    let mut nonce: Option<String> = None;
    for attempt in 0..2 {
        let mut req = reqwest::Client::new().post(url).form(form);
        if let Some((id, secret)) = basic {
            req = req.basic_auth(id, Some(secret));
        }
        if let Some(k) = key {
            req = req.header("DPoP", k.proof("POST", url, None, nonce.as_deref()));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let fresh = res
            .headers()
            .get("dpop-nonce")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = res.json().await.unwrap();
        if attempt == 0 && key.is_some() && body["error"] == "use_dpop_nonce" {
            assert_eq!(status, 400, "{body}");
            nonce = Some(fresh.expect("a use_dpop_nonce answer names the nonce"));
            continue;
        }
        return TokenReply {
            status,
            body,
            nonce: fresh,
        };
    }
    unreachable!()
}

/// A resource request with `Authorization: <scheme> <token>` and the given proof.
async fn call(
    method: reqwest::Method,
    url: &str,
    scheme: &str,
    token: &str,
    proof: Option<&str>,
) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .header("authorization", format!("{scheme} {token}"));
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = res.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_dpop_refusal(reply: &(u16, String, Value), error: &str, what: &str) {
    assert_eq!(reply.0, 401, "{what}: {reply:?}");
    assert!(
        reply.1.starts_with("DPoP ")
            && reply.1.contains(&format!("error=\"{error}\""))
            && reply.1.contains("algs=\"ES256 EdDSA Ed25519\""),
        "{what}: {}",
        reply.1
    );
}

#[tokio::test]
async fn a_persons_dpop_bound_token_works_only_with_fresh_proofs_by_its_key() {
    let f = fixture("dpop-person").await;
    let base = f.server.url().to_owned();
    let discovery: Value = reqwest::get(format!("{base}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        discovery["dpop_signing_alg_values_supported"],
        json!(["ES256", "EdDSA", "Ed25519"])
    );

    let mut browser = Browser::new(&base);
    let code = sign_in_for_code(&f, &mut browser, "openid email organizations:read").await;
    let key = Key::es256();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];
    let basic = Some((f.client_id.as_str(), f.client_secret.as_str()));

    // The token endpoint wants its nonce: without one it says so and names one.
    let url = format!("{base}/oauth2/token");
    let res = reqwest::Client::new()
        .post(&url)
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .header("DPoP", key.proof("POST", &url, None, None))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let nonce = res.headers()["dpop-nonce"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "use_dpop_nonce", "{body}");
    // A proof for another URL, or a made-up nonce, is refused (and does not spend the code).
    let bad_htu = reqwest::Client::new()
        .post(&url)
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .header(
            "DPoP",
            key.proof("POST", &format!("{base}/oauth2/par"), None, Some(&nonce)),
        )
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_htu.status(), 400);
    let body: Value = bad_htu.json().await.unwrap();
    assert_eq!(body["error"], "invalid_dpop_proof", "{body}");
    let made_up = reqwest::Client::new()
        .post(&url)
        .basic_auth(&f.client_id, Some(&f.client_secret))
        .header("DPoP", key.proof("POST", &url, None, Some("made-up")))
        .form(&form)
        .send()
        .await
        .unwrap();
    let body: Value = made_up.json().await.unwrap();
    assert_eq!(body["error"], "use_dpop_nonce", "{body}");

    let t = token_with(&base, basic, &form, Some(&key)).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["token_type"], "DPoP");
    assert!(t.nonce.is_some(), "a fresh nonce comes with the tokens");
    let access = t.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&access)["cnf"]["jkt"], key.jkt());

    // Introspection shows the binding and the token type.
    let i = introspect(&f, &access).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["token_type"], "DPoP", "{i}");
    assert_eq!(i["cnf"]["jkt"], key.jkt(), "{i}");

    let org_url = format!("{base}/v1/organizations/{}", f.org);
    let userinfo = format!("{base}/oauth2/userinfo");
    let get = reqwest::Method::GET;

    // The happy path: a /v1 route and userinfo, each with its own fresh proof.
    let ok = call(
        get.clone(),
        &org_url,
        "DPoP",
        &access,
        Some(&key.proof("GET", &org_url, Some(&access), None)),
    )
    .await;
    assert_eq!(ok.0, 200, "{ok:?}");
    assert_eq!(ok.2["id"], f.org.as_str());
    let me = call(
        get.clone(),
        &userinfo,
        "DPoP",
        &access,
        Some(&key.proof("GET", &userinfo, Some(&access), None)),
    )
    .await;
    assert_eq!(me.0, 200, "{me:?}");
    assert_eq!(me.2["sub"], f.user_id.as_str());
    // Userinfo by POST needs a proof saying POST.
    let post = call(
        reqwest::Method::POST,
        &userinfo,
        "DPoP",
        &access,
        Some(&key.proof("POST", &userinfo, Some(&access), None)),
    )
    .await;
    assert_eq!(post.0, 200, "{post:?}");

    // Replayed: the very same proof a second time.
    let proof = key.proof("GET", &org_url, Some(&access), None);
    assert_eq!(
        call(get.clone(), &org_url, "DPoP", &access, Some(&proof))
            .await
            .0,
        200
    );
    let replay = call(get.clone(), &org_url, "DPoP", &access, Some(&proof)).await;
    assert_dpop_refusal(&replay, "invalid_dpop_proof", "a replayed proof");
    // A new proof reusing a jti is a replay too.
    let jti = uuid::Uuid::now_v7().to_string();
    let with_jti = |htu: &str| {
        key.sign(
            &key.header(),
            &json!({"jti": jti, "htm": "GET", "htu": htu, "iat": now(), "ath": ath(&access)}),
        )
    };
    assert_eq!(
        call(
            get.clone(),
            &org_url,
            "DPoP",
            &access,
            Some(&with_jti(&org_url))
        )
        .await
        .0,
        200
    );
    let again = call(
        get.clone(),
        &userinfo,
        "DPoP",
        &access,
        Some(&with_jti(&userinfo)),
    )
    .await;
    assert_dpop_refusal(&again, "invalid_dpop_proof", "a reused jti");

    // Stolen token: the thief's own key makes valid-looking proofs, for the wrong key.
    let thief = Key::ed25519();
    for url in [&org_url, &userinfo] {
        let stolen = call(
            get.clone(),
            url,
            "DPoP",
            &access,
            Some(&thief.proof("GET", url, Some(&access), None)),
        )
        .await;
        assert_dpop_refusal(&stolen, "invalid_dpop_proof", "another key's proof");
    }
    // The bound token as a plain Bearer token (a downgrade), with or without a proof.
    for proof in [None, Some(key.proof("GET", &org_url, Some(&access), None))] {
        let bearer = call(get.clone(), &org_url, "Bearer", &access, proof.as_deref()).await;
        assert_dpop_refusal(&bearer, "invalid_token", "a bound token as Bearer");
    }
    let bearer = call(get.clone(), &userinfo, "Bearer", &access, None).await;
    assert_dpop_refusal(
        &bearer,
        "invalid_token",
        "a bound token as Bearer at userinfo",
    );

    // Mismatched method, URL, token hash; missing pieces; a stale or future iat.
    let other_url = format!("{base}/v1/organizations");
    let cases: Vec<(&str, Option<String>)> = vec![
        ("htm POST for a GET", Some(key.proof("POST", &org_url, Some(&access), None))),
        ("htu of another route", Some(key.proof("GET", &other_url, Some(&access), None))),
        ("htu of another host", Some(key.proof("GET", &org_url.replace("127.0.0.1", "example.com"), Some(&access), None))),
        ("no ath", Some(key.proof("GET", &org_url, None, None))),
        ("ath of another token", Some(key.proof("GET", &org_url, Some("another token"), None))),
        ("no proof", None),
        ("stale iat", Some(key.sign(&key.header(), &json!({"jti": "stale", "htm": "GET", "htu": org_url, "iat": now() - 3600, "ath": ath(&access)})))),
        ("future iat", Some(key.sign(&key.header(), &json!({"jti": "future", "htm": "GET", "htu": org_url, "iat": now() + 3600, "ath": ath(&access)})))),
        ("no jti", Some(key.sign(&key.header(), &json!({"htm": "GET", "htu": org_url, "iat": now(), "ath": ath(&access)})))),
        ("typ JWT", Some(key.sign(&json!({"typ": "JWT", "alg": "ES256", "jwk": key.jwk()}), &json!({"jti": "t", "htm": "GET", "htu": org_url, "iat": now(), "ath": ath(&access)})))),
        ("alg none", Some(format!("{}.{}.", b64_json(&json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk()})), b64_json(&json!({"jti": "n", "htm": "GET", "htu": org_url, "iat": now(), "ath": ath(&access)}))))),
        ("no jwk", Some(key.sign(&json!({"typ": "dpop+jwt", "alg": "ES256"}), &json!({"jti": "j", "htm": "GET", "htu": org_url, "iat": now(), "ath": ath(&access)})))),
        ("a tampered claim", Some({
            let p = key.proof("GET", &org_url, Some(&access), None);
            let parts: Vec<&str> = p.split('.').collect();
            let mut c: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            c["jti"] = "tampered".into();
            format!("{}.{}.{}", parts[0], b64_json(&c), parts[2])
        })),
        ("oversized", Some(format!("{}.{}.x", "a".repeat(9000), "b"))),
    ];
    for (what, proof) in cases {
        let r = call(get.clone(), &org_url, "DPoP", &access, proof.as_deref()).await;
        assert_dpop_refusal(&r, "invalid_dpop_proof", what);
    }
    // A public key with its private half attached is refused.
    if let Key::Es256(k) = &key {
        let mut jwk = key.jwk();
        jwk["d"] = b64(&k.to_bytes()).into();
        let p = key.sign(
            &json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}),
            &json!({"jti": "private", "htm": "GET", "htu": org_url, "iat": now(), "ath": ath(&access)}),
        );
        let r = call(get.clone(), &org_url, "DPoP", &access, Some(&p)).await;
        assert_dpop_refusal(&r, "invalid_dpop_proof", "a jwk with a private member");
    }
    // After all of that, the rightful holder still gets in.
    let ok = call(
        get.clone(),
        &org_url,
        "DPoP",
        &access,
        Some(&key.proof("GET", &org_url, Some(&access), None)),
    )
    .await;
    assert_eq!(ok.0, 200, "{ok:?}");

    // An unbound token stays a Bearer token, and may not pose as DPoP.
    let admin = &f.admin.token;
    assert_eq!(
        call(get.clone(), &org_url, "Bearer", admin, None).await.0,
        200
    );
    let posing = call(
        get.clone(),
        &org_url,
        "DPoP",
        admin,
        Some(&key.proof("GET", &org_url, Some(admin), None)),
    )
    .await;
    assert_dpop_refusal(&posing, "invalid_token", "an unbound token as DPoP");
    // Without credentials both schemes are offered.
    let res = reqwest::get(&org_url).await.unwrap();
    assert_eq!(res.status(), 401);
    let challenges: Vec<&str> = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        challenges.contains(&"Bearer") && challenges.contains(&"DPoP algs=\"ES256 EdDSA Ed25519\""),
        "{challenges:?}"
    );

    // Nothing of a token or proof reached the log.
    let log = std::fs::read_to_string(f.server.data_dir.join("server.log")).unwrap_or_default();
    assert!(!log.contains("eyJ"), "a token or proof reached the log");
}

/// Postgres-backed: what these tests record (`refresh_jkt` in `TokensIssued`,
/// `dpop_bound_access_tokens` in `ClientRegistered`) is stored the same way on both stores.
async fn fixture_on_postgres(label: &str) -> Fixture {
    let url = fresh_database().await;
    fixture_on(Server::start(
        &temp_dir(label),
        &["--listen", "127.0.0.1:0", "--database-url", &url],
        &[],
    ))
    .await
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_bound_to_its_dpop_key() {
    public_refresh_binding(fixture("dpop-public").await).await;
}

#[tokio::test]
async fn a_public_clients_refresh_token_is_bound_to_its_dpop_key_on_postgres() {
    public_refresh_binding(fixture_on_postgres("dpop-public-pg").await).await;
}

async fn public_refresh_binding(mut f: Fixture) {
    let base = f.server.url().to_owned();
    let r = f
        .admin
        .post(
            "/v1/clients",
            json!({"organization_id": f.org, "name": "Acme CLI", "kind": "public",
                   "redirect_uris": [REDIRECT], "grant_types": ["authorization_code", "refresh_token"],
                   "scopes": ["openid", "offline_access", "organizations:read"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let confidential = std::mem::replace(
        &mut f.client_id,
        r.body["client_id"].as_str().unwrap().to_owned(),
    );
    let public = f.client_id.clone();
    let mut browser = Browser::new(&base);
    let code = sign_in_for_code(&f, &mut browser, "openid offline_access organizations:read").await;
    f.client_id = confidential;

    let key = Key::ed25519();
    let t = token_with(
        &base,
        None,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", &public),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ],
        Some(&key),
    )
    .await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["token_type"], "DPoP");
    assert_eq!(
        claims(t.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt()
    );
    let refresh = t.body["refresh_token"].as_str().unwrap().to_owned();
    // The refresh token's binding shows at introspection (by the organization's confidential
    // client: public clients may not introspect).
    let i = introspect(&f, &refresh).await;
    assert_eq!(i["active"], true, "{i}");
    assert_eq!(i["cnf"]["jkt"], key.jkt(), "{i}");

    let form = [
        ("grant_type", "refresh_token"),
        ("client_id", public.as_str()),
        ("refresh_token", refresh.as_str()),
    ];
    // Stolen: another key, or no proof at all, is refused, and does not spend the token.
    let thief = Key::es256();
    let stolen = token_with(&base, None, &form, Some(&thief)).await;
    assert_eq!(stolen.status, 400, "{}", stolen.body);
    assert_eq!(
        stolen.body["error"], "invalid_dpop_proof",
        "{}",
        stolen.body
    );
    let bare = token_with(&base, None, &form, None).await;
    assert_eq!(bare.status, 400, "{}", bare.body);
    assert_eq!(bare.body["error"], "invalid_dpop_proof", "{}", bare.body);
    // The holder of the key refreshes; the new tokens are bound to the same key.
    let renewed = token_with(&base, None, &form, Some(&key)).await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert_eq!(renewed.body["token_type"], "DPoP");
    let access = renewed.body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["cnf"]["jkt"], key.jkt());
    let next = renewed.body["refresh_token"].as_str().unwrap();
    assert_eq!(introspect(&f, next).await["cnf"]["jkt"], key.jkt());
    let org_url = format!("{base}/v1/organizations/{}", f.org);
    let ok = call(
        reqwest::Method::GET,
        &org_url,
        "DPoP",
        access,
        Some(&key.proof("GET", &org_url, Some(access), None)),
    )
    .await;
    assert_eq!(ok.0, 200, "{ok:?}");
    // The next refresh with the thief's key fails too.
    let stolen = token_with(
        &base,
        None,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", &public),
            ("refresh_token", next),
        ],
        Some(&thief),
    )
    .await;
    assert_eq!(
        stolen.body["error"], "invalid_dpop_proof",
        "{}",
        stolen.body
    );

    // The event says which key the grant's refresh tokens are bound to.
    let issued = f
        .admin
        .events_of("Grant")
        .await
        .into_iter()
        .filter(|e| e["envelope"]["event_type"] == "TokensIssued")
        .filter(|e| e["envelope"]["payload"]["client_id"] == public.as_str())
        .collect::<Vec<_>>();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0]["envelope"]["payload"]["refresh_jkt"], key.jkt());
}

#[tokio::test]
async fn a_client_registered_with_dpop_bound_access_tokens_must_send_proofs() {
    client_requiring_dpop(fixture("dpop-required").await).await;
}

#[tokio::test]
async fn a_client_registered_with_dpop_bound_access_tokens_must_send_proofs_on_postgres() {
    client_requiring_dpop(fixture_on_postgres("dpop-required-pg").await).await;
}

async fn client_requiring_dpop(f: Fixture) {
    let base = f.server.url().to_owned();
    let mut made = vec![];
    for required in [true, false] {
        let r = f
            .admin
            .post(
                "/v1/service-principals",
                json!({"organization_id": f.org, "name": "robot", "roles": ["member"],
                       "dpop_bound_access_tokens": required}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        made.push((
            r.body["client_id"].as_str().unwrap().to_owned(),
            r.body["client_secret"].as_str().unwrap().to_owned(),
        ));
    }
    let registered = f.admin.events_of("Client").await;
    assert!(
        registered
            .iter()
            .any(|e| e["envelope"]["payload"]["dpop_bound_access_tokens"] == true),
        "the requirement is in the client's event"
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", "organizations:read"),
    ];
    let org_url = format!("{base}/v1/organizations/{}", f.org);
    let get = reqwest::Method::GET;

    let (id, secret) = &made[0];
    let plain = token_with(&base, Some((id, secret)), &form, None).await;
    assert_eq!(plain.status, 400, "{}", plain.body);
    assert_eq!(plain.body["error"], "invalid_dpop_proof", "{}", plain.body);
    let key = Key::ed25519();
    let t = token_with(&base, Some((id, secret)), &form, Some(&key)).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["token_type"], "DPoP");
    let access = t.body["access_token"].as_str().unwrap();
    assert_eq!(claims(access)["cnf"]["jkt"], key.jkt());
    let ok = call(
        get.clone(),
        &org_url,
        "DPoP",
        access,
        Some(&key.proof("GET", &org_url, Some(access), None)),
    )
    .await;
    assert_eq!(ok.0, 200, "{ok:?}");

    // A client that does not require it may still choose either; plain gets a Bearer token.
    let (id, secret) = &made[1];
    let plain = token_with(&base, Some((id, secret)), &form, None).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.body["token_type"], "Bearer");
    assert!(claims(plain.body["access_token"].as_str().unwrap())
        .get("cnf")
        .is_none());
    let bound = token_with(&base, Some((id, secret)), &form, Some(&Key::es256())).await;
    assert_eq!(bound.body["token_type"], "DPoP", "{}", bound.body);
}

/// Signs in through the pages from `authorize` (a path with its query); answers the code.
async fn code_from(f: &Fixture, browser: &mut Browser, authorize: &str) -> String {
    let login = browser.get(authorize).await;
    assert_eq!(login.status, 200, "{}", login.body);
    let consent = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    // Consent once given is remembered: the second sign-in goes straight back to the client.
    let done = if consent.status == 303 {
        consent
    } else {
        assert_eq!(consent.status, 200, "{}", consent.body);
        browser.submit(&consent, &[("decision", "allow")]).await
    };
    assert_eq!(done.status, 303, "{}", done.body);
    crate::qsa::query_param(&done.location.unwrap(), "code").expect("a code")
}

#[tokio::test]
async fn a_code_bound_to_a_dpop_key_is_redeemed_only_with_a_proof_by_that_key() {
    let f = fixture("dpop-code").await;
    let base = f.server.url().to_owned();
    let basic = Some((f.client_id.as_str(), f.client_secret.as_str()));
    let key = Key::es256();
    let thief = Key::es256();
    let scope = "openid organizations:read";
    let redeem = |code: String| {
        vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", REDIRECT.to_owned()),
            ("code_verifier", VERIFIER.to_owned()),
        ]
    };

    // dpop_jkt at the authorization endpoint (RFC 9449 §10).
    let mut browser = Browser::new(&base);
    let path = format!(
        "{}&dpop_jkt={}",
        crate::qsa::authorize_path(&f.client_id, scope, Some(crate::qsa::CHALLENGE)),
        key.jkt()
    );
    let code = code_from(&f, &mut browser, &path).await;
    let form = redeem(code);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for (who, k) in [("another key", Some(&thief)), ("no proof", None)] {
        let t = token_with(&base, basic, &form, k).await;
        assert_eq!(t.status, 400, "{who}: {}", t.body);
        assert_eq!(t.body["error"], "invalid_dpop_proof", "{who}: {}", t.body);
    }
    let t = token_with(&base, basic, &form, Some(&key)).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(
        claims(t.body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        key.jkt()
    );
    let issued = f.admin.events_of("Grant").await;
    assert!(
        issued
            .iter()
            .any(|e| e["envelope"]["event_type"] == "AuthorizationCodeIssued"
                && e["envelope"]["payload"]["dpop_jkt"] == key.jkt()),
        "the binding is in the code's event"
    );

    // A malformed dpop_jkt is refused at the authorization endpoint.
    let page = browser
        .get(&format!(
            "{}&dpop_jkt=not-a-thumbprint",
            crate::qsa::authorize_path(&f.client_id, scope, Some(crate::qsa::CHALLENGE))
        ))
        .await;
    let location = page.location.unwrap_or_default();
    assert_eq!(
        crate::qsa::query_param(&location, "error").as_deref(),
        Some("invalid_request"),
        "{location}"
    );

    // A proof sent with a pushed authorization request binds the code to its key (§10.1).
    let pushed = [
        ("response_type", "code"),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-1"),
        ("nonce", "n-1"),
        ("code_challenge", crate::qsa::CHALLENGE),
        ("code_challenge_method", "S256"),
    ];
    let par = post_with(&format!("{base}/oauth2/par"), basic, &pushed, Some(&key)).await;
    assert_eq!(par.status, 201, "{}", par.body);
    let request_uri = par.body["request_uri"].as_str().unwrap().to_owned();
    // dpop_jkt naming another key than the proof's is refused.
    let mut mismatched = pushed.to_vec();
    let thief_jkt = thief.jkt();
    mismatched.push(("dpop_jkt", &thief_jkt));
    let refused = post_with(
        &format!("{base}/oauth2/par"),
        basic,
        &mismatched,
        Some(&key),
    )
    .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(
        refused.body["error"], "invalid_dpop_proof",
        "{}",
        refused.body
    );

    let mut browser = Browser::new(&base);
    let mut url = url::Url::parse("http://x/oauth2/authorize").unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", &f.client_id)
        .append_pair("request_uri", &request_uri);
    let code = code_from(
        &f,
        &mut browser,
        &format!("{}?{}", url.path(), url.query().unwrap()),
    )
    .await;
    let form = redeem(code);
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let stolen = token_with(&base, basic, &form, Some(&thief)).await;
    assert_eq!(
        stolen.body["error"], "invalid_dpop_proof",
        "{}",
        stolen.body
    );
    let t = token_with(&base, basic, &form, Some(&key)).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["token_type"], "DPoP");
}

/// `npm ci` of `tests/dpop` (oauth4webapi at its locked version) whenever the lockfile changed
/// since the last install (a stamp of its digest, as `scripts/browser.sh` does); fails loudly
/// without npm.
fn install_oauth4webapi() {
    let dir = repo_root().join("tests/dpop");
    let lock = std::fs::read(dir.join("package-lock.json")).expect("tests/dpop/package-lock.json");
    let want = hex::encode(sha2::Sha256::digest(&lock));
    let stamp = dir.join("node_modules/.quantus-lock-sha256");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return;
    }
    tool_output(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
        "npm is needed for the DPoP client test (Node 20)",
        "npm ci in tests/dpop failed:",
    );
    std::fs::write(stamp, want).unwrap();
}

#[tokio::test]
async fn an_independent_client_oauth4webapi_uses_dpop_end_to_end() {
    install_oauth4webapi();
    let mut f = fixture("dpop-oauth4webapi").await;
    let base = f.server.url().to_owned();
    let r = f
        .admin
        .post(
            "/v1/clients",
            json!({"organization_id": f.org, "name": "Acme SPA", "kind": "public",
                   "redirect_uris": [REDIRECT], "grant_types": ["authorization_code", "refresh_token"],
                   "scopes": ["openid", "email", "offline_access", "organizations:read"],
                   "dpop_bound_access_tokens": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let public = r.body["client_id"].as_str().unwrap().to_owned();
    f.client_id = public.clone();
    // The person signs in through QSA's pages; the client (in Node) takes it from the
    // redirect back to it, with the PKCE verifier it made the challenge from.
    let mut browser = Browser::new(&base);
    let login = browser
        .get(&crate::qsa::authorize_path(
            &public,
            "openid email offline_access organizations:read",
            Some(crate::qsa::CHALLENGE),
        ))
        .await;
    let consent = browser
        .submit(&login, &[("email", &f.email), ("password", &f.password)])
        .await;
    let done = browser.submit(&consent, &[("decision", "allow")]).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let callback = done.location.unwrap();
    let out = tokio::task::spawn_blocking({
        let (base, public, org) = (base.clone(), public.clone(), f.org.clone());
        move || {
            Command::new("node")
                .arg("client.mjs")
                .current_dir(repo_root().join("tests/dpop"))
                .env("QUANTUS_URL", base)
                .env("CLIENT_ID", public)
                .env("REDIRECT_URI", REDIRECT)
                .env("CALLBACK", callback)
                .env("CODE_VERIFIER", VERIFIER)
                .env("STATE", "st-1")
                .env("ORG", org)
                .output()
                .expect("node is needed for the DPoP client test (Node 20)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(f.server.data_dir.join("server.log")).unwrap_or_default()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["token_type"], "dpop", "{report}");
    assert_eq!(report["key"], "Ed25519", "{report}");
    assert!(
        report["nonce_challenges"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(report["userinfo_sub"], f.user_id.as_str(), "{report}");
    assert_eq!(report["organization"], f.org.as_str(), "{report}");
    assert_eq!(report["refreshed_token_type"], "dpop", "{report}");
    assert_eq!(report["bearer_refused"], 401, "{report}");
    assert_eq!(report["bearer_challenge"], "DPoP", "{report}");
    assert_eq!(report["stolen_refresh"], "invalid_dpop_proof", "{report}");
    // The thumbprint oauth4webapi computes for its key is what the server bound the tokens to.
    let jkt = report["jkt"].as_str().unwrap();
    assert_eq!(report["access_cnf_jkt"], jkt, "{report}");
    assert_eq!(report["refreshed_cnf_jkt"], jkt, "{report}");
}
