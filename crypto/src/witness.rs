//! The C2SP `tlog-witness` protocol's one request, `add-checkpoint`, and the witness's rule.
//!
//! ```text
//! old <size the submitter believes the witness last saw>\n
//! <consistency proof from that size: one base64 hash per line>\n
//! \n
//! <the signed checkpoint note>
//! ```
//!
//! A witness cosigns a checkpoint only if the log's key signed it and it is consistent with the
//! last checkpoint of that log the witness cosigned; so two different histories can never both
//! carry its cosignature, and a log cut short or rewritten is refused. Pure: the caller keeps
//! the state and the clock.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chrono::{DateTime, Utc};

use crate::checkpoint::{open, Checkpoint};
use crate::keys::TrustedKeys;
use crate::merkle::{verify_consistency, Hash};

/// At most this many proof lines: a consistency proof of a tree of 2^63 leaves is shorter.
pub const MAX_PROOF_LINES: usize = 63;

/// One `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old_size: u64,
    pub proof: Vec<Hash>,
    pub note: String,
}

/// Why a witness refuses, with the protocol's status for each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 404: not a log this witness follows.
    #[error("unknown log origin")]
    UnknownLog,
    /// 403
    #[error("the checkpoint is not signed by the log's key: {0}")]
    BadSignature(String),
    /// 409: the submitter's `old` is not what the witness last cosigned; the body is that size.
    #[error("the witness last cosigned a tree of {0} entries")]
    Conflict(u64),
    /// 422
    #[error("the checkpoint is not consistent with the one the witness last cosigned")]
    Inconsistent,
}

impl Refusal {
    /// The HTTP status `tlog-witness` gives this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => 400,
            Refusal::BadSignature(_) => 403,
            Refusal::UnknownLog => 404,
            Refusal::Conflict(_) => 409,
            Refusal::Inconsistent => 422,
        }
    }
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut out = format!("old {}\n", self.old_size);
        for h in &self.proof {
            out.push_str(&STANDARD.encode(h));
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&self.note);
        out
    }

    pub fn parse(text: &str) -> Result<Self, Refusal> {
        let bad = |w: &str| Refusal::Malformed(w.to_owned());
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old_size = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|s| !s.is_empty() && (s == &"0" || !s.starts_with('0')))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| bad("the first line is not 'old <size>'"))?;
        let proof = lines
            .map(|l| {
                STANDARD
                    .decode(l)
                    .ok()
                    .and_then(|h| Hash::try_from(h).ok())
                    .ok_or_else(|| bad("a proof line is not a base64 hash"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(bad("the proof is too long"));
        }
        Ok(Self {
            old_size,
            proof,
            note: note.to_owned(),
        })
    }

    /// The origin line of the note (which log it claims to be from).
    pub fn origin(&self) -> &str {
        self.note.split('\n').next().unwrap_or_default()
    }
}

/// The witness's rule. `known` is the last tree of this log it cosigned (`None`: never);
/// `log_keys` the log's published key set. On success, the checkpoint to cosign (and remember
/// as the new `known`).
pub fn check(
    request: &AddCheckpoint,
    known: Option<(u64, Hash)>,
    log_keys: &TrustedKeys,
    now: DateTime<Utc>,
) -> Result<Checkpoint, Refusal> {
    let checkpoint =
        open(&request.note, log_keys, now).map_err(|e| Refusal::BadSignature(e.to_string()))?;
    if request.old_size > checkpoint.size {
        return Err(Refusal::Malformed(
            "old is larger than the checkpoint's size".into(),
        ));
    }
    let known_size = known.map_or(0, |(size, _)| size);
    if request.old_size != known_size {
        return Err(Refusal::Conflict(known_size));
    }
    if let Some((size, root)) = known {
        if !verify_consistency(
            size,
            checkpoint.size,
            &root,
            &checkpoint.root,
            &request.proof,
        ) {
            return Err(Refusal::Inconsistent);
        }
    }
    Ok(checkpoint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::{note, CHECKPOINT_CONTEXT};
    use crate::merkle::{consistency_proof, leaf_hash, root};
    use crate::{Algorithm, SecretKey};

    /// A log of `n` leaves with its key, and the signed checkpoint of its first `size`.
    struct Log {
        key: SecretKey,
        keys: TrustedKeys,
        leaves: Vec<Hash>,
    }

    impl Log {
        fn new(n: u8) -> Self {
            let key = SecretKey::from_seed(Algorithm::Ed25519, &[5u8; 32]).unwrap();
            let keys = crate::checkpoint::tests::trusting(&key);
            let leaves = (0..n).map(|i| leaf_hash(&[i])).collect();
            Self { key, keys, leaves }
        }

        fn head(&self, size: usize) -> (Hash, String) {
            let cp = Checkpoint {
                origin: "quantus.example/log".into(),
                size: size as u64,
                root: root(&self.leaves[..size]),
            };
            let sig = self
                .key
                .sign(cp.body().as_bytes(), CHECKPOINT_CONTEXT, &[0; 32])
                .unwrap();
            (
                cp.root,
                note(&cp, "quantus.example/log", &self.key.public_key(), &sig),
            )
        }

        fn request(&self, old: usize, size: usize) -> AddCheckpoint {
            let proof = if old == 0 || old >= size {
                vec![]
            } else {
                consistency_proof(&self.leaves[..size], old).unwrap()
            };
            AddCheckpoint {
                old_size: old as u64,
                proof,
                note: self.head(size).1,
            }
        }
    }

    #[test]
    fn a_witness_cosigns_only_what_extends_what_it_cosigned() {
        let log = Log::new(10);
        let now = Utc::now();
        // Given nothing seen, the first checkpoint is taken on the log's signature alone.
        let first = check(&log.request(0, 4), None, &log.keys, now).unwrap();
        assert_eq!(first.size, 4);
        let known = Some((4, log.head(4).0));
        // An extension with its proof is cosigned; the same checkpoint again too (a refresh).
        assert_eq!(
            check(&log.request(4, 9), known, &log.keys, now)
                .unwrap()
                .size,
            9
        );
        assert_eq!(
            check(&log.request(4, 4), known, &log.keys, now)
                .unwrap()
                .size,
            4
        );
        // A submitter that believes another size is told the one the witness has.
        assert_eq!(
            check(&log.request(0, 9), known, &log.keys, now),
            Err(Refusal::Conflict(4))
        );
        // A shorter tree than the witness saw cannot be cosigned: old would exceed its size.
        assert!(matches!(
            check(&log.request(4, 3), known, &log.keys, now),
            Err(Refusal::Malformed(_))
        ));
        // A different history of the same length, signed by the same key, is inconsistent.
        let mut forked = Log::new(10);
        forked.leaves[1] = leaf_hash(b"rewritten");
        assert_eq!(
            check(&forked.request(4, 9), known, &log.keys, now),
            Err(Refusal::Inconsistent)
        );
        // A note the log's key did not sign is refused before anything else.
        let mut stranger = log.request(4, 9);
        stranger.note = stranger.note.replace("\n9\n", "\n8\n");
        assert!(matches!(
            check(&stranger, known, &log.keys, now),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn a_request_round_trips_and_bad_ones_are_refused() {
        let r = AddCheckpoint {
            old_size: 5,
            proof: vec![[1u8; 32], [2u8; 32]],
            note: "example/log\n9\nAAAA\n\n— example/log AAAA\n".into(),
        };
        assert_eq!(AddCheckpoint::parse(&r.encode()).unwrap(), r);
        assert_eq!(r.origin(), "example/log");
        let first = AddCheckpoint {
            old_size: 0,
            proof: vec![],
            note: r.note.clone(),
        };
        assert_eq!(first.encode(), format!("old 0\n\n{}", r.note));
        assert_eq!(AddCheckpoint::parse(&first.encode()).unwrap(), first);
        for bad in [
            "",
            "old 5\n",
            "old x\n\nnote",
            "old 05\n\nnote",
            "new 5\n\nnote",
            "old 5\nnot base64!\n\nnote",
            "old 5\nAAAA\n\nnote",
        ] {
            assert!(
                matches!(AddCheckpoint::parse(bad), Err(Refusal::Malformed(_))),
                "{bad:?}"
            );
        }
        let long = format!(
            "old 1\n{}\nnote",
            "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n".repeat(64)
        );
        assert!(matches!(
            AddCheckpoint::parse(&long),
            Err(Refusal::Malformed(_))
        ));
    }
}
