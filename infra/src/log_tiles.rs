//! The log's Merkle tree, stored as C2SP tlog-tiles beside the events (`log_tiles`, and the
//! size they cover in `log_tree`). Derived data: the tiles are a function of the events'
//! hashes, grown on demand, so a lost or stale table costs a rebuild, never a wrong answer
//! (a proof from tiles is checked against a signed root by whoever uses it).

use std::collections::{BTreeMap, BTreeSet};

use quantus_crypto::merkle::{leaf_hash, Hash};
use quantus_crypto::tiles::{Tile, TileBuilder, TileSet};
use sqlx::Row;

use crate::db::get_u64;
use crate::{Database, InfraError, SqlEventRepository};

/// Leaves added per transaction when growing: bounds how long one write holds the database.
const GROW_STEP: u64 = 65_536;

#[derive(Clone)]
pub struct LogTiles {
    db: Database,
}

fn decode(text: &str) -> Result<Vec<Hash>, InfraError> {
    let bytes = hex::decode(text).map_err(|e| InfraError::Corrupt(format!("log tile: {e}")))?;
    if bytes.len() % 32 != 0 {
        return Err(InfraError::Corrupt(
            "log tile: not a whole number of hashes".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

impl LogTiles {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// How many leaves the stored tiles cover.
    pub async fn size(&self) -> Result<u64, InfraError> {
        let row = sqlx::query("SELECT size FROM log_tree WHERE id = 1")
            .fetch_optional(&self.db.pool)
            .await?;
        row.map_or(Ok(0), |r| get_u64(&r, "size"))
    }

    /// One stored tile's hashes (at least as many as any tree up to [`LogTiles::size`] has).
    pub async fn tile(&self, level: u32, index: u64) -> Result<Option<Vec<Hash>>, InfraError> {
        let Ok(index) = i64::try_from(index) else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT hashes FROM log_tiles WHERE level = $1 AND idx = $2")
            .bind(i64::from(level))
            .bind(index)
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| decode(&r.try_get::<String, _>("hashes")?))
            .transpose()
    }

    /// The given tiles of the tree of `size` leaves, ready to answer its nodes.
    pub async fn load(&self, size: u64, tiles: &BTreeSet<Tile>) -> Result<TileSet, InfraError> {
        let mut set = TileSet::new(size);
        for t in tiles {
            let hashes = self
                .tile(t.level, t.index)
                .await?
                .ok_or_else(|| InfraError::Corrupt(format!("log tile {} is missing", t.path())))?;
            set.insert(t.level, t.index, hashes);
        }
        Ok(set)
    }

    /// Grows the stored tree to at least `size` leaves from the events' hashes. Several
    /// processes may grow it at once: each step commits only if the stored size is still the
    /// one it started from, and a process that loses the race re-reads and goes on.
    pub async fn grow_to(&self, size: u64) -> Result<u64, InfraError> {
        let events = SqlEventRepository::new(self.db.clone());
        loop {
            let stored = self.size().await?;
            if stored >= size {
                return Ok(stored);
            }
            let target = size.min(stored + GROW_STEP);
            let mut partial = BTreeMap::new();
            for t in TileBuilder::edge_tiles(stored) {
                let hashes = self.tile(t.level, t.index).await?.ok_or_else(|| {
                    InfraError::Corrupt(format!("log tile {} is missing", t.path()))
                })?;
                partial.insert(t.level, hashes);
            }
            let mut builder = TileBuilder::resume(stored, partial).map_err(InfraError::Corrupt)?;
            let hashes = events.event_hashes_between(stored, target).await?;
            if (hashes.len() as u64) < target - stored {
                return Err(InfraError::NotFound(format!(
                    "the log has only {} events, not {size}",
                    stored + hashes.len() as u64
                )));
            }
            let leaves: Vec<Hash> = hashes.iter().map(|h| leaf_hash(h)).collect();
            let changed = builder.extend(&leaves);
            let mut tx = self.db.pool.begin().await?;
            let claimed = sqlx::query("UPDATE log_tree SET size = $1 WHERE id = 1 AND size = $2")
                .bind(target as i64)
                .bind(stored as i64)
                .execute(&mut *tx)
                .await?;
            if claimed.rows_affected() != 1 {
                tx.rollback().await?;
                continue;
            }
            for (tile, hashes) in changed {
                sqlx::query(
                    "INSERT INTO log_tiles (level, idx, width, hashes) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (level, idx) DO UPDATE SET width = excluded.width, hashes = excluded.hashes",
                )
                .bind(i64::from(tile.level))
                .bind(tile.index as i64)
                .bind(tile.width as i64)
                .bind(hex::encode(hashes.concat()))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
}
