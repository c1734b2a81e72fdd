//! Signature algorithms.
//!
//! Every signature is made over a message *and* a context string (domain separation: a licence
//! signature can never be replayed as a CRL or evidence signature). Secret keys are 32-byte seeds
//! (64 for the composite: ML-DSA seed then Ed25519 seed), as FIPS 204 and RFC 8032 allow.

use ed25519_dalek::Signer as _;
use ml_dsa::{EncodedVerifyingKey, ExpandedSigningKey, MlDsa44, MlDsa65, MlDsa87, MlDsaParams};
use sha2::{Digest, Sha512};

/// Prefix of every composite message representative (draft-ietf-lamps-pq-composite-sigs-19 §2.2).
pub const COMPOSITE_PREFIX: &[u8] = b"CompositeAlgorithmSignatures2025";
/// Label of ML-DSA-65 + Ed25519 with SHA-512 pre-hash (same draft, §7).
pub const COMPOSITE_LABEL: &[u8] = b"COMPSIG-MLDSA65-Ed25519-SHA512";

/// A signature algorithm Quantus can sign or verify with.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
pub enum Algorithm {
    #[serde(rename = "Ed25519")]
    Ed25519,
    #[serde(rename = "ML-DSA-44")]
    MlDsa44,
    #[serde(rename = "ML-DSA-65")]
    MlDsa65,
    #[serde(rename = "ML-DSA-87")]
    MlDsa87,
    /// Composite: both halves must verify.
    #[serde(rename = "ML-DSA-65-Ed25519")]
    MlDsa65Ed25519,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Self::Ed25519,
        Self::MlDsa44,
        Self::MlDsa65,
        Self::MlDsa87,
        Self::MlDsa65Ed25519,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "Ed25519",
            Self::MlDsa44 => "ML-DSA-44",
            Self::MlDsa65 => "ML-DSA-65",
            Self::MlDsa87 => "ML-DSA-87",
            Self::MlDsa65Ed25519 => "ML-DSA-65-Ed25519",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Length of the secret seed.
    pub fn seed_len(self) -> usize {
        match self {
            Self::MlDsa65Ed25519 => 64,
            _ => 32,
        }
    }

    pub fn public_key_len(self) -> usize {
        match self {
            Self::Ed25519 => 32,
            Self::MlDsa44 => 1312,
            Self::MlDsa65 => 1952,
            Self::MlDsa87 => 2592,
            Self::MlDsa65Ed25519 => 1952 + 32,
        }
    }

    pub fn signature_len(self) -> usize {
        match self {
            Self::Ed25519 => 64,
            Self::MlDsa44 => 2420,
            Self::MlDsa65 => 3309,
            Self::MlDsa87 => 4627,
            Self::MlDsa65Ed25519 => 3309 + 64,
        }
    }

    /// Whether the algorithm resists a quantum adversary (fully or through one half).
    pub fn is_post_quantum(self) -> bool {
        !matches!(self, Self::Ed25519)
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{alg} expects a {expected}-byte {what}, got {got}")]
    WrongLength {
        alg: Algorithm,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("context strings are at most 255 bytes")]
    ContextTooLong,
    #[error("the {alg} public key is malformed")]
    MalformedKey { alg: Algorithm },
    #[error("the {alg} signature does not verify")]
    Invalid { alg: Algorithm },
    #[error("the ML-DSA-65 half of the composite signature does not verify")]
    CompositeMlDsaHalf,
    #[error("the Ed25519 half of the composite signature does not verify")]
    CompositeEd25519Half,
    #[error("{alg} has no JOSE algorithm: only Ed25519 keys sign JWS (EdDSA, RFC 8037)")]
    NotJose { alg: Algorithm },
}

/// A secret signing key. Holds only the seed; zeroed on drop; never printed.
pub struct SecretKey {
    alg: Algorithm,
    seed: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}, <redacted>)", self.alg)
    }
}

/// A public verification key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub alg: Algorithm,
    pub bytes: Vec<u8>,
}

fn check_len(
    alg: Algorithm,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), SignatureError> {
    if expected == got {
        Ok(())
    } else {
        Err(SignatureError::WrongLength {
            alg,
            what,
            expected,
            got,
        })
    }
}

fn seed32(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&bytes[..32]);
    out
}

/// FIPS 204 ML-DSA.Sign (hedged): `M' = 0 || len(ctx) || ctx || M`, then Sign_internal with
/// the caller's 32 random bytes.
fn mldsa_sign<P: MlDsaParams>(seed: &[u8], message: &[u8], ctx: &[u8], rnd: &[u8; 32]) -> Vec<u8> {
    let key = ExpandedSigningKey::<P>::from_seed(&seed32(seed).into());
    let prefix = [0u8, ctx.len() as u8];
    let sig = key.sign_internal(&[&prefix, ctx, message], &(*rnd).into());
    sig.encode().to_vec()
}

fn mldsa_public<P: MlDsaParams>(seed: &[u8]) -> Vec<u8> {
    ExpandedSigningKey::<P>::from_seed(&seed32(seed).into())
        .verifying_key()
        .encode()
        .to_vec()
}

fn mldsa_verify<P: MlDsaParams>(
    alg: Algorithm,
    pk: &[u8],
    message: &[u8],
    ctx: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let encoded =
        EncodedVerifyingKey::<P>::try_from(pk).map_err(|_| SignatureError::MalformedKey { alg })?;
    let key = ml_dsa::VerifyingKey::<P>::decode(&encoded);
    let sig = ml_dsa::Signature::<P>::try_from(sig).map_err(|_| SignatureError::Invalid { alg })?;
    if key.verify_with_context(message, ctx, &sig) {
        Ok(())
    } else {
        Err(SignatureError::Invalid { alg })
    }
}

fn ed25519_verify(pk: &[u8], message: &[u8], sig: &[u8]) -> Result<(), SignatureError> {
    let alg = Algorithm::Ed25519;
    let pk: [u8; 32] = pk
        .try_into()
        .map_err(|_| SignatureError::MalformedKey { alg })?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&pk)
        .map_err(|_| SignatureError::MalformedKey { alg })?;
    let sig: [u8; 64] = sig
        .try_into()
        .map_err(|_| SignatureError::Invalid { alg })?;
    // Strict verification: refuses small-order keys and non-canonical signatures.
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&sig))
        .map_err(|_| SignatureError::Invalid { alg })
}

/// Ed25519 has no context input: the context is bound by signing `len(ctx) || ctx || M`.
fn ed25519_message(ctx: &[u8], message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(1 + ctx.len() + message.len());
    m.push(ctx.len() as u8);
    m.extend_from_slice(ctx);
    m.extend_from_slice(message);
    m
}

/// The composite message representative `M' = Prefix || Label || len(ctx) || ctx || SHA-512(M)`.
pub fn composite_representative(message: &[u8], ctx: &[u8]) -> Vec<u8> {
    let mut m =
        Vec::with_capacity(COMPOSITE_PREFIX.len() + COMPOSITE_LABEL.len() + 1 + ctx.len() + 64);
    m.extend_from_slice(COMPOSITE_PREFIX);
    m.extend_from_slice(COMPOSITE_LABEL);
    m.push(ctx.len() as u8);
    m.extend_from_slice(ctx);
    m.extend_from_slice(&Sha512::digest(message));
    m
}

impl SecretKey {
    /// A key from its seed (`alg.seed_len()` bytes from a CSPRNG, or a stored seed).
    pub fn from_seed(alg: Algorithm, seed: &[u8]) -> Result<Self, SignatureError> {
        check_len(alg, "seed", alg.seed_len(), seed.len())?;
        Ok(Self {
            alg,
            seed: zeroize::Zeroizing::new(seed.to_vec()),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The seed, for sealing into a keystore. Handle with care.
    pub fn seed(&self) -> &[u8] {
        &self.seed
    }

    pub fn public_key(&self) -> PublicKey {
        let s = &self.seed[..];
        let bytes = match self.alg {
            Algorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(&seed32(s))
                .verifying_key()
                .to_bytes()
                .to_vec(),
            Algorithm::MlDsa44 => mldsa_public::<MlDsa44>(s),
            Algorithm::MlDsa65 => mldsa_public::<MlDsa65>(s),
            Algorithm::MlDsa87 => mldsa_public::<MlDsa87>(s),
            Algorithm::MlDsa65Ed25519 => {
                let mut pk = mldsa_public::<MlDsa65>(&s[..32]);
                pk.extend_from_slice(
                    &ed25519_dalek::SigningKey::from_bytes(&seed32(&s[32..]))
                        .verifying_key()
                        .to_bytes(),
                );
                pk
            }
        };
        PublicKey {
            alg: self.alg,
            bytes,
        }
    }

    /// Signs `message` under `ctx`. `rnd` (32 bytes from a CSPRNG) hedges ML-DSA against fault
    /// and side-channel attacks; Ed25519 is deterministic and ignores it.
    pub fn sign(
        &self,
        message: &[u8],
        ctx: &[u8],
        rnd: &[u8; 32],
    ) -> Result<Vec<u8>, SignatureError> {
        if ctx.len() > 255 {
            return Err(SignatureError::ContextTooLong);
        }
        let s = &self.seed[..];
        Ok(match self.alg {
            Algorithm::Ed25519 => ed25519_dalek::SigningKey::from_bytes(&seed32(s))
                .sign(&ed25519_message(ctx, message))
                .to_bytes()
                .to_vec(),
            Algorithm::MlDsa44 => mldsa_sign::<MlDsa44>(s, message, ctx, rnd),
            Algorithm::MlDsa65 => mldsa_sign::<MlDsa65>(s, message, ctx, rnd),
            Algorithm::MlDsa87 => mldsa_sign::<MlDsa87>(s, message, ctx, rnd),
            Algorithm::MlDsa65Ed25519 => {
                let m = composite_representative(message, ctx);
                let mut sig = mldsa_sign::<MlDsa65>(&s[..32], &m, COMPOSITE_LABEL, rnd);
                sig.extend_from_slice(
                    &ed25519_dalek::SigningKey::from_bytes(&seed32(&s[32..]))
                        .sign(&m)
                        .to_bytes(),
                );
                sig
            }
        })
    }
}

impl SecretKey {
    /// Pure Ed25519 (RFC 8032) over a JWS signing input, as JOSE's `EdDSA` (RFC 8037) defines
    /// it: no context prefix, so any JOSE library verifies it. Only Ed25519 keys can do this.
    pub fn sign_jose(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignatureError> {
        if self.alg != Algorithm::Ed25519 {
            return Err(SignatureError::NotJose { alg: self.alg });
        }
        Ok(ed25519_dalek::SigningKey::from_bytes(&seed32(&self.seed))
            .sign(signing_input)
            .to_bytes()
            .to_vec())
    }
}

impl PublicKey {
    pub fn new(alg: Algorithm, bytes: Vec<u8>) -> Result<Self, SignatureError> {
        check_len(alg, "public key", alg.public_key_len(), bytes.len())?;
        Ok(Self { alg, bytes })
    }

    /// Key id: the first 16 bytes of SHA-256(`alg name` || 0x00 || public key), lower-case hex.
    pub fn kid(&self) -> String {
        let mut h = sha2::Sha256::new();
        h.update(self.alg.name().as_bytes());
        h.update([0u8]);
        h.update(&self.bytes);
        hex::encode(&h.finalize()[..16])
    }

    /// Verifies `signature` over `message` under `ctx`.
    pub fn verify(
        &self,
        message: &[u8],
        ctx: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let alg = self.alg;
        if ctx.len() > 255 {
            return Err(SignatureError::ContextTooLong);
        }
        check_len(alg, "public key", alg.public_key_len(), self.bytes.len())?;
        check_len(alg, "signature", alg.signature_len(), signature.len())?;
        match alg {
            Algorithm::Ed25519 => {
                ed25519_verify(&self.bytes, &ed25519_message(ctx, message), signature)
            }
            Algorithm::MlDsa44 => {
                mldsa_verify::<MlDsa44>(alg, &self.bytes, message, ctx, signature)
            }
            Algorithm::MlDsa65 => {
                mldsa_verify::<MlDsa65>(alg, &self.bytes, message, ctx, signature)
            }
            Algorithm::MlDsa87 => {
                mldsa_verify::<MlDsa87>(alg, &self.bytes, message, ctx, signature)
            }
            Algorithm::MlDsa65Ed25519 => {
                let m = composite_representative(message, ctx);
                let (pq_pk, ed_pk) = self.bytes.split_at(1952);
                let (pq_sig, ed_sig) = signature.split_at(3309);
                // Both halves are always checked, so timing does not tell which one failed.
                let pq =
                    mldsa_verify::<MlDsa65>(Algorithm::MlDsa65, pq_pk, &m, COMPOSITE_LABEL, pq_sig);
                let ed = ed25519_verify(ed_pk, &m, ed_sig);
                match (pq, ed) {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(SignatureError::MalformedKey { .. }), _)
                    | (_, Err(SignatureError::MalformedKey { .. })) => {
                        Err(SignatureError::MalformedKey { alg })
                    }
                    (Err(_), _) => Err(SignatureError::CompositeMlDsaHalf),
                    (_, Err(_)) => Err(SignatureError::CompositeEd25519Half),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(alg: Algorithm) -> SecretKey {
        let seed: Vec<u8> = (0..alg.seed_len() as u8).collect();
        SecretKey::from_seed(alg, &seed).unwrap()
    }

    #[test]
    fn every_algorithm_signs_and_verifies_with_the_fips_sizes() {
        for alg in Algorithm::ALL {
            let sk = key(alg);
            let pk = sk.public_key();
            assert_eq!(pk.bytes.len(), alg.public_key_len(), "{alg}");
            let sig = sk.sign(b"message", b"ctx", &[7; 32]).unwrap();
            assert_eq!(sig.len(), alg.signature_len(), "{alg}");
            pk.verify(b"message", b"ctx", &sig).unwrap();
            assert!(
                pk.verify(b"messagE", b"ctx", &sig).is_err(),
                "{alg} accepted another message"
            );
            assert!(
                pk.verify(b"message", b"other", &sig).is_err(),
                "{alg} ignored the context"
            );
        }
    }

    #[test]
    fn the_composite_refuses_either_half_alone() {
        let sk = key(Algorithm::MlDsa65Ed25519);
        let pk = sk.public_key();
        let sig = sk.sign(b"licence", b"quantus", &[1; 32]).unwrap();
        let mut bad_pq = sig.clone();
        bad_pq[10] ^= 1;
        assert_eq!(
            pk.verify(b"licence", b"quantus", &bad_pq),
            Err(SignatureError::CompositeMlDsaHalf)
        );
        let mut bad_ed = sig.clone();
        bad_ed[3309 + 5] ^= 1;
        assert_eq!(
            pk.verify(b"licence", b"quantus", &bad_ed),
            Err(SignatureError::CompositeEd25519Half)
        );
        // Downgrade: presenting only the ML-DSA half, under the ML-DSA-65 name, with the
        // composite key's ML-DSA half, fails because that half signed M' under the composite
        // label, not the message.
        let pq_only = PublicKey::new(Algorithm::MlDsa65, pk.bytes[..1952].to_vec()).unwrap();
        assert!(pq_only
            .verify(b"licence", b"quantus", &sig[..3309])
            .is_err());
        let ed_only = PublicKey::new(Algorithm::Ed25519, pk.bytes[1952..].to_vec()).unwrap();
        assert!(ed_only
            .verify(b"licence", b"quantus", &sig[3309..])
            .is_err());
        // Truncation is a length error, before any maths.
        assert!(matches!(
            pk.verify(b"licence", b"quantus", &sig[..3309]),
            Err(SignatureError::WrongLength { .. })
        ));
    }

    #[test]
    fn key_ids_depend_on_algorithm_and_key() {
        let a = key(Algorithm::Ed25519).public_key();
        let b = key(Algorithm::MlDsa65).public_key();
        assert_ne!(a.kid(), b.kid());
        assert_eq!(a.kid().len(), 32);
        assert_eq!(a.kid(), key(Algorithm::Ed25519).public_key().kid());
    }

    #[test]
    fn ml_dsa_signing_is_hedged_by_the_given_randomness() {
        let sk = key(Algorithm::MlDsa65);
        let s1 = sk.sign(b"m", b"", &[1; 32]).unwrap();
        let s2 = sk.sign(b"m", b"", &[2; 32]).unwrap();
        assert_ne!(s1, s2);
        sk.public_key().verify(b"m", b"", &s1).unwrap();
        sk.public_key().verify(b"m", b"", &s2).unwrap();
        // The same randomness gives the same signature: nothing else is random.
        assert_eq!(s1, sk.sign(b"m", b"", &[1; 32]).unwrap());
    }

    /// Project Wycheproof's ML-DSA verification vectors (boundary values, infinity-norm
    /// violations, malformed hints, wrong lengths, contexts): every verdict must match.
    #[test]
    fn ml_dsa_agrees_with_wycheproof() {
        use wycheproof::mldsa_verify::{TestName, TestSet};
        let sets = [
            (TestName::MlDsa44Verify, Algorithm::MlDsa44),
            (TestName::MlDsa65Verify, Algorithm::MlDsa65),
            (TestName::MlDsa87Verify, Algorithm::MlDsa87),
        ];
        let mut checked = 0;
        for (name, alg) in sets {
            let set = TestSet::load(name).unwrap();
            for group in &set.test_groups {
                for test in &group.tests {
                    let ctx: &[u8] = test.ctx.as_ref().map_or(&[], |c| c.as_slice());
                    let verdict = PublicKey::new(alg, group.pubkey.to_vec())
                        .and_then(|pk| pk.verify(&test.msg, ctx, &test.sig))
                        .is_ok();
                    assert_eq!(
                        verdict,
                        !test.result.must_fail(),
                        "{alg} tcId {} ({}) {:?}",
                        test.tc_id,
                        test.comment,
                        test.flags
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "only {checked} vectors");
    }

    #[test]
    fn secret_keys_never_print_their_seed() {
        let sk = key(Algorithm::Ed25519);
        assert_eq!(format!("{sk:?}"), "SecretKey(Ed25519, <redacted>)");
    }
}
