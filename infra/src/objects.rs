//! Artifacts and configuration snapshots in object storage (`object_store`): a local folder in
//! the embedded default, S3 (or MinIO, or any S3-protocol server) in production.
//!
//! Uploads stream: the body is hashed (SHA-256) and written in multipart chunks as it
//! arrives, so memory stays bounded whatever the size.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::{Config, InfraError};

/// Multipart chunk size: S3's minimum part is 5 MiB.
const CHUNK: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// `local <folder>` or `s3 <url>`, for logs and answers.
    pub description: String,
    /// The folder, for a local store.
    local_root: Option<std::path::PathBuf>,
}

/// `name#<digits>`: where `LocalFileSystem` stages a multipart upload of `name`.
fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(object, suffix)| {
        !object.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
    })
}

fn storage(e: object_store::Error) -> InfraError {
    match e {
        object_store::Error::NotFound { path, .. } => {
            InfraError::NotFound(format!("no object {path}"))
        }
        other => InfraError::Storage(other.to_string()),
    }
}

/// Why an upload stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error(transparent)]
    Storage(#[from] InfraError),
}

impl ObjectStorage {
    /// The configured store.
    pub fn open(config: &Config) -> Result<Self, InfraError> {
        match config.object_store_url.as_deref() {
            Some(url) if url.starts_with("s3://") => {
                let store = AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| InfraError::Config(format!("OBJECT_STORE_URL {url}: {e}")))?;
                Ok(Self {
                    store: Arc::new(store),
                    description: format!("s3 {url}"),
                    local_root: None,
                })
            }
            Some(url) if url.contains("://") && !url.starts_with("file://") => {
                Err(InfraError::Config(format!(
                    "OBJECT_STORE_URL must be s3://… or a folder, got {url}"
                )))
            }
            Some(folder) => Self::local(std::path::Path::new(folder.trim_start_matches("file://"))),
            None => Self::local(&config.data_dir.join("objects")),
        }
    }

    /// A folder on this machine.
    pub fn local(folder: &std::path::Path) -> Result<Self, InfraError> {
        std::fs::create_dir_all(folder)?;
        let store = LocalFileSystem::new_with_prefix(folder)
            .map_err(|e| InfraError::Config(format!("object folder {}: {e}", folder.display())))?;
        Ok(Self {
            store: Arc::new(store),
            description: format!("local {}", folder.display()),
            local_root: Some(folder.to_owned()),
        })
    }

    /// Removes the staging files of uploads that never finished (the process was killed
    /// mid-upload); returns how many. Call it at start, before this process uploads anything:
    /// a local folder belongs to one process. Local uploads stage in `<object>#<n>` beside
    /// their object (object_store's `LocalFileSystem`), which no object name can be (they
    /// are never listed). S3 keeps unfinished multipart uploads out of sight; a bucket
    /// lifecycle rule (`AbortIncompleteMultipartUpload`) removes them.
    pub fn sweep_staging(&self) -> Result<usize, InfraError> {
        let Some(root) = &self.local_root else {
            return Ok(0);
        };
        let mut swept = 0;
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    folders.push(entry.path());
                } else if kind.is_file() && is_staging_name(&entry.file_name().to_string_lossy()) {
                    std::fs::remove_file(entry.path())?;
                    swept += 1;
                }
            }
        }
        Ok(swept)
    }

    /// Streams `body` to `path`, at most `max` bytes; returns (SHA-256 hex, size).
    pub async fn put_stream<S, E>(
        &self,
        path: &str,
        body: S,
        max: u64,
    ) -> Result<(String, u64), UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let upload = self
            .store
            .put_multipart(&Path::from(path))
            .await
            .map_err(storage)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = body;
        let outcome: Result<(), UploadError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| UploadError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(UploadError::TooLarge(max));
                }
                hasher.update(&chunk);
                // At most two parts in flight: memory stays near 3 chunks.
                writer.wait_for_capacity(2).await.map_err(storage)?;
                writer.write(&chunk);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await.map_err(storage)?;
                Ok((hex::encode(hasher.finalize()), size))
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    pub async fn put_bytes(&self, path: &str, bytes: Vec<u8>) -> Result<(), InfraError> {
        self.store
            .put(&Path::from(path), PutPayload::from(bytes))
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// The object's bytes as a stream.
    pub async fn get_stream(
        &self,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, InfraError>>, InfraError> {
        let result = self.store.get(&Path::from(path)).await.map_err(storage)?;
        Ok(result.into_stream().map(|r| r.map_err(storage)).boxed())
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Bytes, InfraError> {
        let result = self.store.get(&Path::from(path)).await.map_err(storage)?;
        result.bytes().await.map_err(storage)
    }

    /// SHA-256 (hex) and size of what is stored, read as a stream.
    pub async fn digest(&self, path: &str) -> Result<(String, u64), InfraError> {
        let mut stream = self.get_stream(path).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((hex::encode(hasher.finalize()), size))
    }

    pub async fn delete(&self, path: &str) -> Result<(), InfraError> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_object_names_with_a_numbered_suffix() {
        assert!(is_staging_name("0190aa#1"));
        assert!(is_staging_name("counts.json#12"));
        assert!(!is_staging_name("counts.json"));
        assert!(!is_staging_name("a#b"));
        assert!(!is_staging_name("a#"));
        assert!(!is_staging_name("#1"));
    }

    #[tokio::test]
    async fn the_sweep_removes_staging_files_and_keeps_objects() {
        let dir = std::env::temp_dir().join(format!("quantus-sweep-{}", uuid::Uuid::now_v7()));
        let storage = ObjectStorage::local(&dir).unwrap();
        storage
            .put_bytes("jobs/j/artifacts/a/1", b"kept".to_vec())
            .await
            .unwrap();
        std::fs::write(dir.join("jobs/j/artifacts/a/2#1"), b"half an upload").unwrap();
        std::fs::write(dir.join("jobs/j/artifacts/a/1#3"), b"another").unwrap();
        assert_eq!(storage.sweep_staging().unwrap(), 2);
        assert_eq!(storage.sweep_staging().unwrap(), 0);
        assert_eq!(
            storage
                .get_bytes("jobs/j/artifacts/a/1")
                .await
                .unwrap()
                .as_ref(),
            b"kept"
        );
        let left: Vec<_> = std::fs::read_dir(dir.join("jobs/j/artifacts/a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("1")]);
    }
}
