//! Files on disk, named by the SHA-256 of their bytes: identical content is stored once.
//! Writes stream into a temp file (hashing as they go) that is renamed into place when complete.

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::storage::media::StoredContent;

pub struct ContentStore {
    root: PathBuf,
}

/// Why a streamed write did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("content is larger than {0} bytes")]
    TooLarge(u64),
    #[error("reading the content failed: {0}")]
    Source(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A temp file that is removed unless it was renamed into the store.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl ContentStore {
    /// A store under `root`, creating its folders.
    pub fn open(root: PathBuf) -> anyhow::Result<Self> {
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create media folder {}", tmp.display()))?;
        // Leftovers of writes interrupted by a crash.
        for entry in std::fs::read_dir(&tmp)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(Self { root })
    }

    /// The file holding content with this hash: `ab/cd/abcd...` spreads files over folders.
    pub fn path(&self, content: &StoredContent) -> PathBuf {
        let hash = &content.sha256;
        self.root.join(&hash[..2]).join(&hash[2..4]).join(hash)
    }

    /// Removes the file of content no media uses any more (already gone is fine).
    pub async fn remove(&self, sha256: &str) -> std::io::Result<()> {
        let path = self.path(&StoredContent { sha256: sha256.to_owned(), size: 0 });
        match tokio::fs::remove_file(path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Streams `source` into the store, refusing more than `limit` bytes.
    pub async fn write_stream<E: std::fmt::Display>(
        &self,
        source: impl Stream<Item = Result<Bytes, E>>,
        limit: u64,
    ) -> Result<StoredContent, WriteError> {
        let name: String =
            rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(20).map(char::from).collect();
        let tmp_path = self.root.join("tmp").join(name);
        let mut file = tokio::fs::File::create(&tmp_path).await?;
        let mut tmp = TempFile(Some(tmp_path));
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut source = std::pin::pin!(source);
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|e| WriteError::Source(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(WriteError::TooLarge(limit));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await?;
        }
        file.sync_data().await?;
        drop(file);
        let content = StoredContent { sha256: hex::encode(hasher.finalize()), size };
        let path = self.path(&content);
        if tokio::fs::try_exists(&path).await? {
            // The same bytes are already stored: the temp file goes away on drop.
            return Ok(content);
        }
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        if let Some(tmp_path) = &tmp.0 {
            tokio::fs::rename(tmp_path, &path).await?;
            tmp.0 = None;
        }
        Ok(content)
    }

    /// Stores bytes already in memory (small generated files such as thumbnails).
    pub async fn write_bytes(&self, bytes: Vec<u8>) -> Result<StoredContent, WriteError> {
        let len = bytes.len() as u64;
        self.write_stream(futures::stream::iter([Ok::<_, std::convert::Infallible>(Bytes::from(bytes))]), len).await
    }
}
