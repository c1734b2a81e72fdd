//! Merkle trees as RFC 9162 §2.1 defines them (the RFC 6962 tree): tree heads, inclusion and
//! consistency proofs, and their verification. SHA-256, leaf hash `H(0x00 || data)`, node hash
//! `H(0x01 || left || right)`, the empty tree `H("")`.
//!
//! Quantus's log is such a tree: leaf `i` is the event at position `i + 1`, and its data is the
//! 32 bytes of the event's chained `hash` (see docs/event-log.md, "Checkpoints").

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// An inclusion path as evidence bundles carry it (each hash in standard base64), or None when
/// a hash is not 32 bytes of base64.
pub fn decode_path(path: &[String]) -> Option<Vec<Hash>> {
    use base64::Engine as _;
    path.iter()
        .map(|p| {
            let bytes = base64::engine::general_purpose::STANDARD.decode(p).ok()?;
            bytes.try_into().ok()
        })
        .collect()
}

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The right edge of a growing tree: the roots of its perfect subtrees, largest first. Gives
/// the tree head at every size while leaves stream past, in O(log n) memory.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    /// (height, root) of each perfect subtree.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != node.0 {
                break;
            }
            self.stack.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// MTH of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut r)) = it.next() else {
            return Sha256::digest([]).into();
        };
        for (_, left) in it {
            r = node_hash(left, &r);
        }
        r
    }
}

/// The largest power of two smaller than `n` (n > 1): the split point `k` of RFC 9162.
fn split(n: usize) -> usize {
    debug_assert!(n > 1);
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH(D\[n\]) over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            // Recursion depth is log2(n): fine for any log size.
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(m, D\[n\]): the audit path of leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    Some(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// PROOF(m, D\[n\]): proves the tree of the first `old_size` leaves is a prefix of `leaves`.
pub fn consistency_proof(leaves: &[Hash], old_size: usize) -> Option<Vec<Hash>> {
    if old_size == 0 || old_size > leaves.len() {
        return None;
    }
    let mut out = Vec::new();
    subproof(old_size, leaves, true, &mut out);
    Some(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// RFC 9162 §2.1.3.2: whether `proof` shows leaf `index` with hash `leaf` is in the tree of
/// `size` leaves with root `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnum, mut snum) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snum == 0 {
            return false;
        }
        if fnum & 1 == 1 || fnum == snum {
            r = node_hash(p, &r);
            if fnum & 1 == 0 {
                while fnum & 1 == 0 && fnum != 0 {
                    fnum >>= 1;
                    snum >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnum >>= 1;
        snum >>= 1;
    }
    snum == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree (`old_size`, `old_root`) is a prefix of
/// the tree (`new_size`, `new_root`).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size || old_size == 0 {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old_size.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut fnum, mut snum) = (old_size - 1, new_size - 1);
    while fnum & 1 == 1 {
        fnum >>= 1;
        snum >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if snum == 0 {
            return false;
        }
        if fnum & 1 == 1 || fnum == snum {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnum & 1 == 0 {
                while fnum & 1 == 0 && fnum != 0 {
                    fnum >>= 1;
                    snum >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnum >>= 1;
        snum >>= 1;
    }
    fr == *old_root && sr == *new_root && snum == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inclusion_path_decodes_only_when_every_hash_is_32_bytes_of_base64() {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(decode_path(&[b64(&a), b64(&b)]), Some(vec![a, b]));
        assert_eq!(decode_path(&[]), Some(vec![]));
        assert_eq!(decode_path(&[b64(&a), b64(&[3u8; 31])]), None);
        assert_eq!(decode_path(&[b64(&a), "not base64!".to_owned()]), None);
    }

    /// The leaves of the Certificate Transparency reference tests (RFC 6962 implementations
    /// share them), and the roots of the trees of their first 1..=8 leaves.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(l)).collect()
    }

    #[test]
    fn tree_heads_match_the_reference_roots() {
        assert_eq!(
            hex::encode(root(&[])),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let l = leaves();
        for n in 1..=8 {
            assert_eq!(hex::encode(root(&l[..n])), ROOTS[n - 1], "size {n}");
        }
    }

    #[test]
    fn the_frontier_gives_the_same_head_at_every_size() {
        let all: Vec<Hash> = (0..300u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut f = Frontier::new();
        assert_eq!(f.root(), root(&[]));
        for (i, l) in all.iter().enumerate() {
            f.push(*l);
            assert_eq!(f.root(), root(&all[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_any_change_breaks_it() {
        let all: Vec<Hash> = (0..37u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=all.len() {
            let r = root(&all[..n]);
            for i in 0..n {
                let p = inclusion_proof(&all[..n], i).unwrap();
                assert!(
                    verify_inclusion(&all[i], i as u64, n as u64, &p, &r),
                    "{i} in {n}"
                );
                let other = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(&other, i as u64, n as u64, &p, &r));
                if !p.is_empty() {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(&all[i], i as u64, n as u64, &bad, &r));
                    assert!(!verify_inclusion(
                        &all[i],
                        i as u64,
                        n as u64,
                        &p[..p.len() - 1],
                        &r
                    ));
                }
                assert!(!verify_inclusion(&all[i], n as u64, n as u64, &p, &r));
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_rewritten_prefix_does_not() {
        let all: Vec<Hash> = (0..37u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=all.len() {
            let new_root = root(&all[..n]);
            for m in 1..=n {
                let old_root = root(&all[..m]);
                let p = consistency_proof(&all[..n], m).unwrap();
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &new_root, &p),
                    "{m} -> {n}"
                );
                // A log whose first leaf was rewritten is not consistent with the old head.
                let mut forged = all[..n].to_vec();
                forged[0] = leaf_hash(b"rewritten");
                let forged_root = root(&forged);
                let fp = consistency_proof(&forged, m).unwrap();
                assert!(!verify_consistency(
                    m as u64,
                    n as u64,
                    &old_root,
                    &forged_root,
                    &fp
                ));
            }
        }
    }
}
