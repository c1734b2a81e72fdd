//! The log's Merkle tree stored as C2SP tlog-tiles (<https://c2sp.org/tlog-tiles>): the hashes
//! of each tree level that is a multiple of 8 high, in tiles of 256. Any node of a complete
//! subtree is the root of at most 256 hashes of one tile, so a tree head, an inclusion proof or
//! a consistency proof reads O(log n) tiles whatever the log's size, and a tiles client can
//! check proofs itself from the same tiles.
//!
//! Pure: the caller reads and writes tiles. A proof is computed twice: once to learn which
//! tiles it needs ([`tiles_needed`]), then with those tiles' hashes ([`TileSet::node`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::merkle::{node_hash, Hash};

/// Tree levels per tile.
pub const HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const WIDTH: u64 = 1 << HEIGHT;

/// One tile: the hashes at tree level `HEIGHT * level`, from `index * WIDTH` on, `width` of
/// them (a partial tile at the tree's right edge has fewer than [`WIDTH`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    pub level: u32,
    pub index: u64,
    pub width: u64,
}

/// The highest tile level a 64-bit tree can have.
const MAX_LEVEL: u32 = 63 / HEIGHT;

impl Tile {
    /// Its path under the log's prefix: `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        format!("tile/{}/{}", self.level, index_path(self.index, self.width))
    }

    /// The hashes of a tree of `size` leaves at this tile's level: how many there are.
    fn level_count(level: u32, size: u64) -> u64 {
        size.checked_shr(HEIGHT * level).unwrap_or(0)
    }

    /// The tile at (`level`, `index`) as it is in a tree of `size` leaves, if it exists there.
    pub fn in_tree(level: u32, index: u64, size: u64) -> Option<Tile> {
        let count = Self::level_count(level, size);
        let start = index.checked_mul(WIDTH)?;
        (level <= MAX_LEVEL && count > start).then(|| Tile {
            level,
            index,
            width: (count - start).min(WIDTH),
        })
    }
}

/// `N[.p/W]` with N in groups of three digits, all but the last prefixed with `x`.
fn index_path(index: u64, width: u64) -> String {
    let digits = format!("{index}");
    let pad = (3 - digits.len() % 3) % 3;
    let digits = format!("{}{digits}", "0".repeat(pad));
    let groups: Vec<&str> = digits
        .as_bytes()
        .chunks(3)
        .map(|c| std::str::from_utf8(c).unwrap_or("000"))
        .collect();
    let mut out = String::new();
    for (i, g) in groups.iter().enumerate() {
        if i + 1 < groups.len() {
            out.push('x');
        }
        out.push_str(g);
        if i + 1 < groups.len() {
            out.push('/');
        }
    }
    if width < WIDTH {
        out.push_str(&format!(".p/{width}"));
    }
    out
}

/// What a path under `tile/` names: a hash tile or an entry bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TilePath {
    Hashes(Tile),
    /// Entries `index * WIDTH ..` (`width` of them).
    Entries {
        index: u64,
        width: u64,
    },
}

/// Parses what follows `tile/`: `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]`. Refuses every
/// non-canonical spelling (leading zeros beyond the groups, `.p/256`, `.p/0`), as the spec asks.
pub fn parse_path(path: &str) -> Option<TilePath> {
    let (first, rest) = path.split_once('/')?;
    let (index, width) = parse_index(rest)?;
    if first == "entries" {
        return Some(TilePath::Entries { index, width });
    }
    if first.is_empty() || first.len() > 2 || (first.len() > 1 && first.starts_with('0')) {
        return None;
    }
    let level: u32 = first.parse().ok()?;
    (level <= MAX_LEVEL).then_some(TilePath::Hashes(Tile {
        level,
        index,
        width,
    }))
}

fn parse_index(text: &str) -> Option<(u64, u64)> {
    let (text, width) = match text.split_once(".p/") {
        Some((n, w)) => {
            if w.is_empty() || w.starts_with('0') || !w.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let w: u64 = w.parse().ok()?;
            if !(1..WIDTH).contains(&w) {
                return None;
            }
            (n, w)
        }
        None => (text, WIDTH),
    };
    let groups: Vec<&str> = text.split('/').collect();
    if groups.len() > 7 {
        return None;
    }
    let mut index: u64 = 0;
    for (i, g) in groups.iter().enumerate() {
        let last = i + 1 == groups.len();
        let digits = if last { Some(*g) } else { g.strip_prefix('x') }?;
        if digits.len() != 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        index = index
            .checked_mul(1000)?
            .checked_add(digits.parse::<u64>().ok()?)?;
    }
    // The shortest spelling only: no leading all-zero group.
    if groups.len() > 1 && groups[0] == "x000" {
        return None;
    }
    Some((index, width))
}

/// The tile of a tree of `size` leaves that holds the node at `height` and `index` (the
/// complete subtree of leaves `index << height ..`), and the range of its hashes the node is
/// the root of.
pub fn tile_for(size: u64, height: u32, index: u64) -> Option<(Tile, std::ops::Range<usize>)> {
    let level = height / HEIGHT;
    let within = height % HEIGHT;
    let first = index.checked_shl(within)?;
    let tile = Tile::in_tree(level, first / WIDTH, size)?;
    let start = (first % WIDTH) as usize;
    let end = start + (1usize << within);
    (end as u64 <= tile.width).then_some((tile, start..end))
}

/// The tiles a computation over a tree of `size` leaves reads: `compute` is run with a node
/// source that records what is asked and answers zeros.
pub fn tiles_needed<T>(
    size: u64,
    compute: impl Fn(&mut dyn FnMut(u32, u64) -> Hash) -> T,
) -> BTreeSet<Tile> {
    let mut tiles = BTreeSet::new();
    compute(&mut |height, index| {
        if let Some((tile, _)) = tile_for(size, height, index) {
            tiles.insert(tile);
        }
        [0u8; 32]
    });
    tiles
}

/// Hashes of tiles read from storage, for one tree size.
#[derive(Debug, Default)]
pub struct TileSet {
    size: u64,
    /// (level, index) -> hashes (at least the tile's width in this tree).
    tiles: BTreeMap<(u32, u64), Vec<Hash>>,
}

/// A node was asked for whose tile was not given, or a tile is shorter than the tree needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the tree of {size} leaves has no stored hashes for the node at height {height}, index {index}"
)]
pub struct MissingNode {
    pub size: u64,
    pub height: u32,
    pub index: u64,
}

impl TileSet {
    pub fn new(size: u64) -> Self {
        Self {
            size,
            tiles: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, level: u32, index: u64, hashes: Vec<Hash>) {
        self.tiles.insert((level, index), hashes);
    }

    /// The node at `height` and `index`: the root of its hashes in its tile.
    pub fn node(&self, height: u32, index: u64) -> Result<Hash, MissingNode> {
        let missing = MissingNode {
            size: self.size,
            height,
            index,
        };
        let (tile, range) = tile_for(self.size, height, index).ok_or(missing.clone())?;
        let hashes = self
            .tiles
            .get(&(tile.level, tile.index))
            .and_then(|h| h.get(range))
            .ok_or(missing)?;
        Ok(perfect_root(hashes))
    }

    /// Runs `compute` with this set as its node source; the first missing node is the error.
    pub fn run<T>(
        &self,
        compute: impl Fn(&mut dyn FnMut(u32, u64) -> Hash) -> T,
    ) -> Result<T, MissingNode> {
        let mut missing = None;
        let out = compute(&mut |height, index| {
            self.node(height, index).unwrap_or_else(|e| {
                missing.get_or_insert(e);
                [0u8; 32]
            })
        });
        match missing {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// The root of a power-of-two number of hashes.
fn perfect_root(hashes: &[Hash]) -> Hash {
    debug_assert!(hashes.len().is_power_of_two());
    let mut level: Vec<Hash> = hashes.to_vec();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    level[0]
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// MTH of leaves `start..end`, where the range is one of RFC 9162's subtrees (every complete
/// subtree in it starts at a multiple of its own size).
pub fn subtree_root(start: u64, end: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Hash {
    let n = end - start;
    if n.is_power_of_two() {
        let height = n.trailing_zeros();
        return node(height, start >> height);
    }
    let k = split(n);
    let left = subtree_root(start, start + k, node);
    let right = subtree_root(start + k, end, node);
    node_hash(&left, &right)
}

/// MTH(D\[size\]).
pub fn tree_root(size: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Hash {
    if size == 0 {
        return crate::merkle::root(&[]);
    }
    subtree_root(0, size, node)
}

/// MTH(D\[size\]) where the leaf hashes `start..start + leaves.len()` are `leaves` (recomputed
/// by an auditor) and every node wholly outside them comes from `node` (the stored tree): equal
/// to a signed root only if those leaves are the ones the signed tree holds. Nodes inside the
/// range are hashed from `leaves`, never read, so a stored tree rewritten to match altered
/// leaves still fails. `start + leaves.len() <= size`.
pub fn tree_root_over(
    size: u64,
    start: u64,
    leaves: &[Hash],
    node: &mut dyn FnMut(u32, u64) -> Hash,
) -> Hash {
    let end = start + leaves.len() as u64;
    let mut over = |height: u32, index: u64| covered(height, index, start, end, leaves, node);
    tree_root(size, &mut over)
}

/// The node at `height` and `index`: from `leaves` when its span is inside `start..end`, from
/// `node` when it is outside, and from its two children when it straddles an edge.
fn covered(
    height: u32,
    index: u64,
    start: u64,
    end: u64,
    leaves: &[Hash],
    node: &mut dyn FnMut(u32, u64) -> Hash,
) -> Hash {
    let first = index << height;
    let last = first + (1u64 << height);
    if last <= start || first >= end {
        return node(height, index);
    }
    if first >= start && last <= end {
        return crate::merkle::root(&leaves[(first - start) as usize..(last - start) as usize]);
    }
    // A straddling node spans more than one leaf, so height > 0.
    let left = covered(height - 1, index * 2, start, end, leaves, node);
    let right = covered(height - 1, index * 2 + 1, start, end, leaves, node);
    node_hash(&left, &right)
}

/// PATH(index, D\[size\]) (RFC 9162 §2.1.3.1); `index < size`.
pub fn inclusion_path(index: u64, size: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Vec<Hash> {
    let mut out = Vec::new();
    path(index, 0, size, node, &mut out);
    out
}

fn path(m: u64, start: u64, end: u64, node: &mut dyn FnMut(u32, u64) -> Hash, out: &mut Vec<Hash>) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < start + k {
        path(m, start, start + k, node, out);
        out.push(subtree_root(start + k, end, node));
    } else {
        path(m, start + k, end, node, out);
        out.push(subtree_root(start, start + k, node));
    }
}

/// PROOF(old, D\[new\]) (RFC 9162 §2.1.4.1); `0 < old <= new`.
pub fn consistency_path(old: u64, new: u64, node: &mut dyn FnMut(u32, u64) -> Hash) -> Vec<Hash> {
    let mut out = Vec::new();
    subproof(old, 0, new, true, node, &mut out);
    out
}

fn subproof(
    m: u64,
    start: u64,
    end: u64,
    complete: bool,
    node: &mut dyn FnMut(u32, u64) -> Hash,
    out: &mut Vec<Hash>,
) {
    let n = end - start;
    if m == n {
        if !complete {
            out.push(subtree_root(start, end, node));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, start, start + k, complete, node, out);
        out.push(subtree_root(start + k, end, node));
    } else {
        subproof(m - k, start + k, end, false, node, out);
        out.push(subtree_root(start, start + k, node));
    }
}

/// Grows the stored tiles as leaves are appended. Holds the right edge: at each level, the
/// hashes of its last, incomplete tile.
#[derive(Debug, Clone, Default)]
pub struct TileBuilder {
    size: u64,
    edge: Vec<Vec<Hash>>,
}

impl TileBuilder {
    /// The partial tiles a tree of `size` leaves has (what [`TileBuilder::resume`] needs).
    pub fn edge_tiles(size: u64) -> Vec<Tile> {
        (0..=MAX_LEVEL)
            .map_while(|level| {
                let count = Tile::level_count(level, size);
                (count > 0).then_some((level, count))
            })
            .filter(|(_, count)| count % WIDTH != 0)
            .filter_map(|(level, count)| Tile::in_tree(level, count / WIDTH, size))
            .collect()
    }

    /// Continues a tree of `size` leaves from its partial tiles' hashes, by level (a stored
    /// tile may be longer: tiles only grow, so its first `width` hashes are the edge's).
    pub fn resume(size: u64, mut partial: BTreeMap<u32, Vec<Hash>>) -> Result<Self, String> {
        let mut edge = Vec::new();
        for level in 0..=MAX_LEVEL {
            let count = Tile::level_count(level, size);
            if count == 0 {
                break;
            }
            let width = (count % WIDTH) as usize;
            let mut hashes = partial.remove(&level).unwrap_or_default();
            if hashes.len() < width {
                return Err(format!(
                    "the partial tile at level {level} holds {} hashes, the tree of {size} needs {width}",
                    hashes.len()
                ));
            }
            hashes.truncate(width);
            edge.push(hashes);
        }
        Ok(Self { size, edge })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends leaf hashes; returns every tile they changed, with its whole content (full
    /// tiles once, when they fill; partial tiles as they now stand).
    pub fn extend(&mut self, leaves: &[Hash]) -> Vec<(Tile, Vec<Hash>)> {
        let mut out = Vec::new();
        let mut touched = BTreeSet::new();
        for leaf in leaves {
            self.add(0, *leaf, &mut out, &mut touched);
            self.size += 1;
        }
        for level in touched {
            let hashes = &self.edge[level as usize];
            if hashes.is_empty() {
                continue;
            }
            let count = Tile::level_count(level, self.size);
            out.push((
                Tile {
                    level,
                    index: count / WIDTH,
                    width: hashes.len() as u64,
                },
                hashes.clone(),
            ));
        }
        out
    }

    fn add(
        &mut self,
        level: u32,
        hash: Hash,
        out: &mut Vec<(Tile, Vec<Hash>)>,
        touched: &mut BTreeSet<u32>,
    ) {
        if self.edge.len() <= level as usize {
            self.edge.push(Vec::new());
        }
        // How many hashes this level held before this one (`size` does not count the leaf
        // being added yet, and a level above 0 gains a hash only when that leaf completes
        // its subtree).
        let before = Tile::level_count(level, self.size);
        let edge = &mut self.edge[level as usize];
        edge.push(hash);
        touched.insert(level);
        if edge.len() as u64 == WIDTH {
            let full = std::mem::take(edge);
            let root = perfect_root(&full);
            out.push((
                Tile {
                    level,
                    index: before / WIDTH,
                    width: WIDTH,
                },
                full,
            ));
            self.add(level + 1, root, out, touched);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{self, leaf_hash};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Every tile of a tree, built in uneven steps, as storage would hold them.
    fn build(leaves: &[Hash], steps: &[usize]) -> BTreeMap<(u32, u64), Vec<Hash>> {
        let mut stored: BTreeMap<(u32, u64), Vec<Hash>> = BTreeMap::new();
        let mut builder = TileBuilder::default();
        let mut at = 0;
        let mut steps = steps.iter().cycle();
        while at < leaves.len() {
            let end = (at + steps.next().copied().unwrap_or(1)).min(leaves.len());
            // Resume from storage each time, as separate processes would.
            let partial = TileBuilder::edge_tiles(builder.size())
                .into_iter()
                .map(|t| (t.level, stored[&(t.level, t.index)].clone()))
                .collect();
            builder = TileBuilder::resume(builder.size(), partial).expect("resume");
            for (tile, hashes) in builder.extend(&leaves[at..end]) {
                assert_eq!(tile.width as usize, hashes.len());
                stored.insert((tile.level, tile.index), hashes);
            }
            at = end;
        }
        stored
    }

    fn run<T>(
        stored: &BTreeMap<(u32, u64), Vec<Hash>>,
        size: u64,
        compute: impl Fn(&mut dyn FnMut(u32, u64) -> Hash) -> T,
    ) -> T {
        let mut set = TileSet::new(size);
        for t in tiles_needed(size, &compute) {
            set.insert(t.level, t.index, stored[&(t.level, t.index)].clone());
        }
        set.run(&compute).expect("every needed tile was given")
    }

    #[test]
    fn a_range_of_recomputed_leaves_hashes_to_the_root_only_when_unchanged() {
        let all = leaves(1000);
        let stored = build(&all, &[300, 1, 699]);
        for (size, start, end) in [
            (1000, 100, 300),
            (1000, 0, 1000),
            (777, 511, 777),
            (1000, 5, 6),
        ] {
            let range = all[start..end].to_vec();
            let root = run(&stored, size, |n| {
                tree_root_over(size, start as u64, &range, n)
            });
            assert_eq!(
                root,
                merkle::root(&all[..size as usize]),
                "{size} {start}..{end}"
            );
            let mut altered = range.clone();
            altered[end - start - 1][0] ^= 1;
            let root = run(&stored, size, |n| {
                tree_root_over(size, start as u64, &altered, n)
            });
            assert_ne!(
                root,
                merkle::root(&all[..size as usize]),
                "{size} {start}..{end}"
            );
        }
    }

    #[test]
    fn paths_follow_the_spec_examples() {
        let t = |level, index, width| Tile {
            level,
            index,
            width,
        };
        assert_eq!(t(0, 1_234_067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(t(1, 5, 256).path(), "tile/1/005");
        assert_eq!(t(2, 1000, 7).path(), "tile/2/x001/000.p/7");
        for tile in [
            t(0, 1_234_067, 256),
            t(1, 5, 256),
            t(2, 1000, 7),
            t(0, 0, 1),
        ] {
            let rest = tile.path().strip_prefix("tile/").map(str::to_owned);
            assert_eq!(
                parse_path(&rest.unwrap_or_default()),
                Some(TilePath::Hashes(tile))
            );
        }
        assert_eq!(
            parse_path("entries/x001/002.p/3"),
            Some(TilePath::Entries {
                index: 1002,
                width: 3
            })
        );
        for bad in [
            "0/1",
            "0/0001",
            "0/x000/001",
            "0/001.p/256",
            "0/001.p/0",
            "0/001.p/01",
            "00/001",
            "8/001",
            "0/x1/001",
            "0/001/",
            "",
            "entries/",
            "0/-01",
            "0/x001/x002/x003/x004/x005/x006/x007/008",
            "0/x999/x999/x999/x999/x999/x999/999",
        ] {
            assert_eq!(parse_path(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tiles_give_the_same_heads_and_proofs_as_the_whole_tree() {
        let all = leaves(70_000);
        let stored = build(&all, &[1, 255, 256, 3000, 17, 65_536]);
        for size in [
            1u64, 2, 3, 255, 256, 257, 511, 512, 4097, 65_535, 65_536, 65_537, 70_000,
        ] {
            let d = &all[..size as usize];
            assert_eq!(
                run(&stored, size, |n| tree_root(size, n)),
                merkle::root(d),
                "{size}"
            );
            for index in [0, size / 3, size - 1] {
                assert_eq!(
                    Some(run(&stored, size, |n| inclusion_path(index, size, n))),
                    merkle::inclusion_proof(d, index as usize),
                    "inclusion of {index} in {size}"
                );
            }
            for old in [1, size / 2 + 1, size] {
                assert_eq!(
                    Some(run(&stored, size, |n| consistency_path(old, size, n))),
                    merkle::consistency_proof(d, old as usize),
                    "consistency {old} -> {size}"
                );
            }
        }
    }

    #[test]
    fn a_proof_reads_a_few_tiles_whatever_the_size() {
        for size in [10_000u64, 1_000_000, 1 << 40] {
            let n = tiles_needed(size, |n| inclusion_path(size / 2, size, n)).len();
            assert!(
                n <= 2 * (64 / HEIGHT as usize),
                "{n} tiles for a proof in {size}"
            );
        }
    }

    #[test]
    fn a_node_without_its_tile_is_an_error_not_a_wrong_hash() {
        let set = TileSet::new(1000);
        assert!(set.run(|n| tree_root(1000, n)).is_err());
        assert!(TileSet::new(10).node(4, 0).is_err()); // a subtree the tree does not have
    }

    #[test]
    fn resuming_refuses_an_edge_shorter_than_the_tree() {
        let partial = BTreeMap::from([(0u32, leaves(3))]);
        assert!(TileBuilder::resume(5, partial).is_err());
    }
}
