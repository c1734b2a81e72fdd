//! DPoP, sender-constrained tokens (RFC 9449): checking a client's proof JWT, the replay cache
//! of proof ids, and stateless server nonces.
//!
//! A proof is a JWT the client signs with its own key pair for each request: header `typ`
//! `dpop+jwt`, an asymmetric `alg` (ES256, or Ed25519 named `EdDSA` or, fully specified as
//! RFC 9864 has it, `Ed25519`) and the public `jwk`; claims `htm`
//! and `htu` (the request's method and URL), `iat`, a unique `jti`, `ath` (SHA-256 of the
//! access token) at resources, and the server's `nonce` at the token endpoint. Tokens bound
//! to the key carry its RFC 7638 thumbprint as `cnf.jkt`.
//!
//! Proofs and tokens are never logged: errors name what is wrong, not the values.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The proof algorithms accepted, as `algs` in challenges and in discovery (`Ed25519` is
/// RFC 9864's fully-specified name for what `EdDSA` means here; oauth4webapi signs with it).
pub const ALGS: [&str; 3] = ["ES256", "EdDSA", "Ed25519"];
/// The largest `DPoP` header accepted.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;
/// How old a proof may be (its `iat`); its `jti` is remembered this long plus the skew.
pub const MAX_AGE_SECONDS: i64 = 300;
/// How far ahead of the server's clock a proof's `iat` may be.
pub const MAX_SKEW_SECONDS: i64 = 60;
/// Proof ids remembered at once; past it new proofs are refused until old ones expire (the
/// cache fails closed: forgetting an id early would let that proof be replayed).
pub const REPLAY_CAPACITY: usize = 200_000;
/// A server nonce is good in its time slot and the next one.
pub const NONCE_SLOT_SECONDS: i64 = 300;
/// Longest `jti` accepted.
const MAX_JTI: usize = 256;

/// Why a proof is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// `invalid_dpop_proof`, with a description safe to show (it never holds the proof).
    Invalid(String),
    /// `use_dpop_nonce`: the proof lacks the server's current nonce.
    UseNonce,
}

fn invalid(why: impl Into<String>) -> ProofError {
    ProofError::Invalid(why.into())
}

/// What the request the proof comes with must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    pub method: &'a str,
    /// The request's URL without query and fragment.
    pub url: &'a str,
    /// At a resource: the access token, whose hash the proof's `ath` must be.
    pub access_token: Option<&'a str>,
    /// Whether the proof must carry a current server nonce.
    pub nonce: bool,
}

/// Proof checking with this process's replay cache; the nonce key is derived from the
/// deployment's master key, so every process accepts every other's nonces.
pub struct Dpop {
    nonce_key: [u8; 32],
    seen: Mutex<Seen>,
    capacity: usize,
}

#[derive(Default)]
struct Seen {
    until: HashMap<[u8; 32], i64>,
    /// Ids in the order they were remembered, with when they may be forgotten; expiry is
    /// insertion time plus a constant, so the front is always the next to expire.
    order: VecDeque<([u8; 32], i64)>,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpop").finish_non_exhaustive()
    }
}

/// base64url SHA-256: `ath` of an access token.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

fn b64_json(segment: &str) -> Result<Value, ProofError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| invalid("the proof is not a JWT"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("the proof is not a JWT"))
}

/// A public key coordinate: base64url of exactly `len` bytes.
fn coordinate<'a>(jwk: &'a Value, name: &str, len: usize) -> Result<&'a str, ProofError> {
    let v = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("the jwk lacks {name}")))?;
    match URL_SAFE_NO_PAD.decode(v) {
        Ok(b) if b.len() == len => Ok(v),
        _ => Err(invalid(format!("the jwk's {name} is malformed"))),
    }
}

/// A proof's public key, ready to verify its signature.
enum ProofKey {
    /// Verified by `jsonwebtoken` with the algorithm pinned to ES256.
    Es256(DecodingKey),
    /// Verified by `ed25519-dalek` (strictly: no small-order keys, no malleable signatures);
    /// `jsonwebtoken` does not know the `Ed25519` name.
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// The key of a proof's `jwk` header and its RFC 7638 thumbprint (base64url SHA-256 of the
/// required members in lexicographic order, no whitespace).
fn public_key(alg: Algorithm, jwk: &Value) -> Result<(ProofKey, String), ProofError> {
    let jwk = jwk
        .as_object()
        .ok_or_else(|| invalid("the jwk header is not an object"))?;
    // RFC 9449 §4.3: a public key; private members (EC/OKP `d`, RSA's, symmetric `k`) refuse it.
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.contains_key(*m))
    {
        return Err(invalid("the jwk holds private key material"));
    }
    let jwk = Value::Object(jwk.clone());
    let member = |k: &str| jwk.get(k).and_then(Value::as_str);
    let (key, canonical) = match alg {
        Algorithm::ES256 => {
            if member("kty") != Some("EC") || member("crv") != Some("P-256") {
                return Err(invalid("ES256 needs an EC P-256 jwk"));
            }
            let x = coordinate(&jwk, "x", 32)?;
            let y = coordinate(&jwk, "y", 32)?;
            let key = DecodingKey::from_ec_components(x, y)
                .map_err(|_| invalid("the jwk is not a P-256 key"))?;
            (
                ProofKey::Es256(key),
                format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
            )
        }
        Algorithm::EdDSA => {
            if member("kty") != Some("OKP") || member("crv") != Some("Ed25519") {
                return Err(invalid("EdDSA needs an OKP Ed25519 jwk"));
            }
            let x = coordinate(&jwk, "x", 32)?;
            let bytes: [u8; 32] = URL_SAFE_NO_PAD
                .decode(x)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| invalid("the jwk is not an Ed25519 key"))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|_| invalid("the jwk is not an Ed25519 key"))?;
            (
                ProofKey::Ed25519(key),
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
            )
        }
        _ => return Err(invalid("unsupported alg")),
    };
    Ok((key, URL_SAFE_NO_PAD.encode(Sha256::digest(canonical))))
}

/// RFC 9449 §4.3 step 9: `htu` as the URL without query and fragment, normalised (RFC 3986
/// §6.2.2–6.2.3: case of scheme and host, default port, dot segments, an empty path).
fn normalized_url(u: &str) -> Option<String> {
    let mut url = url::Url::parse(u).ok()?;
    url.set_query(None);
    url.set_fragment(None);
    Some(url.to_string())
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Dpop {
    pub fn new(nonce_key: [u8; 32]) -> Self {
        Self::with_capacity(nonce_key, REPLAY_CAPACITY)
    }

    pub fn with_capacity(nonce_key: [u8; 32], capacity: usize) -> Self {
        Self {
            nonce_key,
            seen: Mutex::new(Seen::default()),
            capacity,
        }
    }

    fn nonce_of_slot(&self, slot: i64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.nonce_key)
            .expect("HMAC takes any key length");
        mac.update(b"quantus-dpop-nonce/v1\0");
        mac.update(&slot.to_be_bytes());
        URL_SAFE_NO_PAD.encode(&mac.finalize().into_bytes()[..24])
    }

    /// The server nonce to hand out now (`DPoP-Nonce`): a MAC of the time slot, so no
    /// storage and the same in every process.
    pub fn nonce(&self, now: i64) -> String {
        self.nonce_of_slot(now.div_euclid(NONCE_SLOT_SECONDS))
    }

    fn nonce_is_current(&self, nonce: &str, now: i64) -> bool {
        let slot = now.div_euclid(NONCE_SLOT_SECONDS);
        // The current slot's, or the previous one's (a nonce fetched just before the turn).
        same(nonce, &self.nonce_of_slot(slot)) | same(nonce, &self.nonce_of_slot(slot - 1))
    }

    /// Checks a proof against the request; answers the thumbprint of its key. The proof's
    /// `jti` is remembered only once everything else checked out.
    pub fn verify(
        &self,
        proof: &str,
        expected: &Expected<'_>,
        now: i64,
    ) -> Result<String, ProofError> {
        if proof.len() > MAX_PROOF_BYTES {
            return Err(invalid("the proof is too large"));
        }
        let mut parts = proof.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("the proof is not a JWT"));
        };
        let header_len = header.len();
        let header = b64_json(header)?;
        if header.get("typ").and_then(Value::as_str) != Some("dpop+jwt") {
            return Err(invalid("the proof's typ is not dpop+jwt"));
        }
        let alg = match header.get("alg").and_then(Value::as_str) {
            Some("ES256") => Algorithm::ES256,
            Some("EdDSA" | "Ed25519") => Algorithm::EdDSA,
            _ => {
                return Err(invalid(
                    "the proof's alg is not one of ES256, EdDSA, Ed25519",
                ))
            }
        };
        let jwk = header
            .get("jwk")
            .ok_or_else(|| invalid("the proof has no jwk header"))?;
        let (key, jkt) = public_key(alg, jwk)?;
        let bad_signature = || invalid("the proof's signature does not verify");
        let claims = match key {
            ProofKey::Es256(key) => {
                let mut validation = Validation::new(Algorithm::ES256);
                validation.required_spec_claims.clear();
                validation.validate_exp = false;
                validation.validate_aud = false;
                jsonwebtoken::decode::<Value>(proof, &key, &validation)
                    .map_err(|_| bad_signature())?
                    .claims
            }
            ProofKey::Ed25519(key) => {
                let signature: [u8; 64] = URL_SAFE_NO_PAD
                    .decode(signature)
                    .ok()
                    .and_then(|s| s.try_into().ok())
                    .ok_or_else(bad_signature)?;
                let signed = &proof[..header_len + 1 + payload.len()];
                key.verify_strict(
                    signed.as_bytes(),
                    &ed25519_dalek::Signature::from_bytes(&signature),
                )
                .map_err(|_| bad_signature())?;
                b64_json(payload)?
            }
        };
        if !claims.is_object() {
            return Err(invalid("the proof's claims are not an object"));
        }
        let text = |k: &str| claims.get(k).and_then(Value::as_str);
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI)
            .ok_or_else(|| invalid("the proof needs a jti"))?;
        if text("htm") != Some(expected.method) {
            return Err(invalid("the proof's htm is not this request's method"));
        }
        let htu = text("htu")
            .and_then(normalized_url)
            .ok_or_else(|| invalid("the proof needs an htu"))?;
        if Some(htu) != normalized_url(expected.url) {
            return Err(invalid("the proof's htu is not this request's URL"));
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_i64)
            .ok_or_else(|| invalid("the proof needs an iat"))?;
        if iat < now - MAX_AGE_SECONDS || iat > now + MAX_SKEW_SECONDS {
            return Err(invalid("the proof's iat is outside the accepted window"));
        }
        if let Some(token) = expected.access_token {
            match text("ath") {
                Some(ath) if same(ath, &token_hash(token)) => {}
                Some(_) => return Err(invalid("the proof's ath is not the token's hash")),
                None => return Err(invalid("the proof needs an ath")),
            }
        }
        if expected.nonce && !text("nonce").is_some_and(|n| self.nonce_is_current(n, now)) {
            return Err(ProofError::UseNonce);
        }
        self.remember(&jkt, jti, now)?;
        Ok(jkt)
    }

    /// The replay check (RFC 9449 §11.1): a proof id (per key) is accepted once while a
    /// proof could be fresh.
    fn remember(&self, jkt: &str, jti: &str, now: i64) -> Result<(), ProofError> {
        let id: [u8; 32] = Sha256::digest([jkt.as_bytes(), b"\0", jti.as_bytes()].concat()).into();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((old, until)) = seen.order.front().copied() {
            if until > now {
                break;
            }
            seen.order.pop_front();
            if seen.until.get(&old) == Some(&until) {
                seen.until.remove(&old);
            }
        }
        if seen.until.get(&id).is_some_and(|until| *until > now) {
            return Err(invalid("the proof was used before (its jti is not unique)"));
        }
        if seen.until.len() >= self.capacity {
            return Err(invalid("too many proofs at once; try again shortly"));
        }
        let until = now + MAX_AGE_SECONDS + MAX_SKEW_SECONDS + 1;
        seen.until.insert(id, until);
        seen.order.push_back((id, until));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dpop() -> Dpop {
        Dpop::with_capacity([7; 32], 2)
    }

    #[test]
    fn nonces_live_two_slots_and_are_the_keys_own() {
        let d = dpop();
        let n = d.nonce(1_000_000);
        assert!(d.nonce_is_current(&n, 1_000_000));
        assert!(d.nonce_is_current(&n, 1_000_000 + NONCE_SLOT_SECONDS));
        assert!(!d.nonce_is_current(&n, 1_000_000 + 2 * NONCE_SLOT_SECONDS));
        assert!(!Dpop::new([8; 32]).nonce_is_current(&n, 1_000_000));
    }

    #[test]
    fn the_replay_cache_remembers_ids_forgets_them_late_and_fails_closed_when_full() {
        let d = dpop();
        d.remember("k", "a", 0).unwrap();
        assert!(d.remember("k", "a", 10).is_err(), "a replay");
        d.remember("other", "a", 10).unwrap(); // another key's id
        assert!(
            d.remember("k", "b", 10).is_err(),
            "full: refuse, never forget early"
        );
        let later = MAX_AGE_SECONDS + MAX_SKEW_SECONDS + 20;
        d.remember("k", "b", later).unwrap();
        d.remember("k", "a", later).unwrap();
    }

    #[test]
    fn private_or_mismatched_keys_are_refused_and_thumbprints_follow_rfc_7638() {
        // RFC 8037 appendix A.3: the Ed25519 example key's thumbprint.
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let (_, jkt) = public_key(Algorithm::EdDSA, &jwk).unwrap();
        assert_eq!(jkt, "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let mut private = jwk.clone();
        private["d"] = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A".into();
        assert!(public_key(Algorithm::EdDSA, &private).is_err());
        assert!(public_key(Algorithm::ES256, &jwk).is_err());
    }

    fn ed_proof(alg: &str, claims: Value) -> (String, String) {
        use ed25519_dalek::Signer;
        let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
        let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())});
        let (_, jkt) = public_key(Algorithm::EdDSA, &jwk).unwrap();
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
        let input = format!(
            "{}.{}",
            enc(&serde_json::json!({"typ": "dpop+jwt", "alg": alg, "jwk": jwk})),
            enc(&claims)
        );
        let sig = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).to_bytes());
        (format!("{input}.{sig}"), jkt)
    }

    #[test]
    fn an_ed25519_proof_verifies_under_either_name_once_and_only_for_its_request() {
        let d = Dpop::new([1; 32]);
        let now = 1_800_000_000;
        let url = "https://idp.example/v1/things";
        let expected = Expected {
            method: "GET",
            url,
            access_token: Some("tok"),
            nonce: false,
        };
        for (alg, jti) in [("EdDSA", "a"), ("Ed25519", "b")] {
            let claims = serde_json::json!({"jti": jti, "htm": "GET", "htu": format!("{url}?x=1"),
                "iat": now, "ath": token_hash("tok")});
            let (proof, jkt) = ed_proof(alg, claims);
            assert_eq!(d.verify(&proof, &expected, now), Ok(jkt), "{alg}");
            assert!(d.verify(&proof, &expected, now).is_err(), "{alg}: replayed");
        }
        let claims = serde_json::json!({"jti": "c", "htm": "GET", "htu": url, "iat": now,
            "ath": token_hash("tok")});
        let (proof, _) = ed_proof("EdDSA", claims);
        let post = Expected {
            method: "POST",
            ..expected
        };
        assert!(d.verify(&proof, &post, now).is_err(), "another method");
        let other = Expected {
            access_token: Some("other"),
            ..expected
        };
        assert!(d.verify(&proof, &other, now).is_err(), "another token");
        let nonce = Expected {
            nonce: true,
            ..expected
        };
        assert_eq!(d.verify(&proof, &nonce, now), Err(ProofError::UseNonce));
        // One signature byte changed (well inside the base64url, so it still decodes).
        let at = proof.len() - 20;
        let flip = if &proof[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{flip}{}", &proof[..at], &proof[at + 1..]);
        assert!(
            d.verify(&tampered, &expected, now).is_err(),
            "a bad signature"
        );
        // The refusals above remembered nothing: the proof is still good once.
        assert!(d.verify(&proof, &expected, now).is_ok());
    }

    #[test]
    fn htu_compares_without_query_and_fragment_after_normalisation() {
        assert_eq!(
            normalized_url("HTTPS://Example.com:443/v1/x?q=1#f"),
            normalized_url("https://example.com/v1/x")
        );
        assert_ne!(
            normalized_url("https://example.com/v1/y"),
            normalized_url("https://example.com/v1/x")
        );
    }
}
