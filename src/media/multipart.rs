//! `multipart/mixed` (RFC 2046) as federation media answers use it: two parts, JSON metadata
//! then the media (or a `Location` to fetch it from). Written and read as streams, so media
//! never has to be held in memory whole.

use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use memchr::memmem;
use rand::Rng;

/// Largest header block of a part; real ones are a few lines.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The framing around a media's bytes: the `Content-Type` of the whole answer, what goes
/// before the bytes (the metadata part and the media part's headers) and what goes after.
pub struct Framing {
    pub content_type: String,
    pub head: Bytes,
    pub tail: Bytes,
}

/// Frames media of `content_type` served with `disposition`, after the (always empty)
/// metadata object.
pub fn frame(content_type: &str, disposition: &str) -> Framing {
    // 32 random letters and digits: the chance that they occur in the content is nil.
    let boundary: String =
        rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(32).map(char::from).collect();
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\n\
         Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    Framing {
        content_type: format!("multipart/mixed; boundary={boundary}"),
        head: Bytes::from(head),
        tail: Bytes::from(format!("\r\n--{boundary}--\r\n")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MultipartError {
    #[error("the answer is not multipart/mixed with a boundary")]
    NotMultipart,
    #[error("the multipart body ended early")]
    Truncated,
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("reading the answer failed: {0}")]
    Source(String),
}

/// The headers of one part, names lowercased.
#[derive(Debug, Default)]
pub struct PartHeaders(Vec<(String, String)>);

impl PartHeaders {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The boundary named by a `multipart/mixed` content type.
fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    let value = params.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim())
    })?;
    let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
    (1..=70).contains(&value.len()).then(|| value.to_owned())
}

/// Reads the parts of a multipart body one after the other.
pub struct MultipartReader<S> {
    source: S,
    buf: BytesMut,
    /// `\r\n--boundary`: what ends a part's body.
    delimiter: Vec<u8>,
    /// Whether the current part's body (at first the preamble) has been read to its end.
    body_done: bool,
    finished: bool,
}

impl<S, E> MultipartReader<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    pub fn new(content_type: &str, source: S) -> Result<Self, MultipartError> {
        let boundary = boundary(content_type).ok_or(MultipartError::NotMultipart)?;
        // The first delimiter may open the body without a line break before it: starting
        // with one lets a single pattern find every delimiter.
        let buf = BytesMut::from(&b"\r\n"[..]);
        Ok(Self { source, buf, delimiter: format!("\r\n--{boundary}").into_bytes(), body_done: false, finished: false })
    }

    /// Reads more of the source into the buffer; false at its end.
    async fn fill(&mut self) -> Result<bool, MultipartError> {
        match self.source.next().await {
            Some(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            Some(Err(e)) => Err(MultipartError::Source(e.to_string())),
            None => Ok(false),
        }
    }

    async fn fill_to(&mut self, len: usize) -> Result<(), MultipartError> {
        while self.buf.len() < len {
            if !self.fill().await? {
                return Err(MultipartError::Truncated);
            }
        }
        Ok(())
    }

    /// The next piece of the current part's body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, MultipartError> {
        loop {
            if self.body_done {
                return Ok(None);
            }
            if let Some(at) = memmem::find(&self.buf, &self.delimiter) {
                if at == 0 {
                    self.body_done = true;
                    return Ok(None);
                }
                return Ok(Some(self.buf.split_to(at).freeze()));
            }
            // Everything but a possible start of the delimiter belongs to the body.
            let keep = self.delimiter.len() - 1;
            if self.buf.len() > keep {
                let ready = self.buf.len() - keep;
                return Ok(Some(self.buf.split_to(ready).freeze()));
            }
            if !self.fill().await? {
                return Err(MultipartError::Truncated);
            }
        }
    }

    /// The rest of the current part's body, refused beyond `limit` bytes.
    pub async fn read_to_end(&mut self, limit: usize) -> Result<Vec<u8>, MultipartError> {
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > limit {
                return Err(MultipartError::Malformed("part too large"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// The current part's body as a stream (to store it as it arrives).
    pub fn body(&mut self) -> impl Stream<Item = Result<Bytes, MultipartError>> + '_ {
        futures::stream::try_unfold(self, |reader| async move { Ok(reader.chunk().await?.map(|c| (c, reader))) })
    }

    /// Moves to the next part (skipping what is left of the current one) and reads its
    /// headers; `None` after the last part.
    pub async fn next_part(&mut self) -> Result<Option<PartHeaders>, MultipartError> {
        while self.chunk().await?.is_some() {}
        if self.finished {
            return Ok(None);
        }
        self.fill_to(self.delimiter.len() + 2).await?;
        self.buf.advance(self.delimiter.len());
        if self.buf.starts_with(b"--") {
            self.finished = true;
            return Ok(None);
        }
        // Transport padding (spaces and tabs) may follow the boundary before its line break.
        loop {
            match self.buf.iter().position(|b| *b != b' ' && *b != b'\t') {
                Some(at) => {
                    self.buf.advance(at);
                    break;
                }
                None if self.buf.len() > MAX_HEADER_BYTES => return Err(MultipartError::Malformed("boundary line")),
                None => self.fill_to(self.buf.len() + 1).await?,
            }
        }
        self.fill_to(2).await?;
        if !self.buf.starts_with(b"\r\n") {
            return Err(MultipartError::Malformed("boundary line"));
        }
        // Headers end with an empty line; a part without headers starts with it.
        let end = loop {
            if let Some(at) = memmem::find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if self.buf.len() > MAX_HEADER_BYTES {
                return Err(MultipartError::Malformed("part headers too large"));
            }
            if !self.fill().await? {
                return Err(MultipartError::Truncated);
            }
        };
        let block = self.buf.split_to(end + 4);
        let text = std::str::from_utf8(&block[2..end + 2]).map_err(|_| MultipartError::Malformed("part headers"))?;
        let mut headers = Vec::new();
        for line in text.split("\r\n").filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').ok_or(MultipartError::Malformed("part header"))?;
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        // The body starts right after the empty line (an empty body with the delimiter).
        self.body_done = false;
        Ok(Some(PartHeaders(headers)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader_of(
        body: &[u8],
        piece: usize,
        content_type: &str,
    ) -> MultipartReader<impl Stream<Item = Result<Bytes, String>> + Unpin> {
        let chunks: Vec<Result<Bytes, String>> = body.chunks(piece).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        MultipartReader::new(content_type, futures::stream::iter(chunks)).unwrap()
    }

    async fn parts(body: &[u8], piece: usize, content_type: &str) -> Vec<(Option<String>, Vec<u8>)> {
        let mut reader = reader_of(body, piece, content_type);
        let mut parts = Vec::new();
        while let Some(headers) = reader.next_part().await.unwrap() {
            let body = reader.read_to_end(1 << 20).await.unwrap();
            parts.push((headers.get("Content-Type").map(str::to_owned), body));
        }
        parts
    }

    #[tokio::test]
    async fn framed_media_reads_back_in_any_chunking() {
        let media: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).chain(*b"\r\n--x").collect();
        let framing = frame("image/png", "inline; filename=\"a.png\"");
        let mut whole = framing.head.to_vec();
        whole.extend_from_slice(&media);
        whole.extend_from_slice(&framing.tail);
        for piece in [1, 2, 3, 7, 64, 1000, whole.len()] {
            let parts = parts(&whole, piece, &framing.content_type).await;
            assert_eq!(parts.len(), 2, "piece {piece}");
            assert_eq!(parts[0], (Some("application/json".into()), b"{}".to_vec()));
            assert_eq!(parts[1], (Some("image/png".into()), media.clone()), "piece {piece}");
        }
    }

    #[tokio::test]
    async fn preamble_padding_quoted_boundary_and_empty_bodies() {
        let body = b"preamble\r\n--b1  \r\nContent-Type: application/json\r\n\r\n\r\n--b1\r\nLocation: https://x/y\r\n\r\n\r\n--b1--\r\nepilogue";
        for piece in [1, 5, body.len()] {
            let parts = parts(body, piece, "Multipart/Mixed; charset=x; boundary=\"b1\"").await;
            assert_eq!(parts, vec![(Some("application/json".into()), Vec::new()), (None, Vec::new())]);
        }
        let mut reader = reader_of(body, 4, "multipart/mixed; boundary=b1");
        reader.next_part().await.unwrap();
        let second = reader.next_part().await.unwrap().unwrap();
        assert_eq!(second.get("location"), Some("https://x/y"));
    }

    #[tokio::test]
    async fn truncated_and_foreign_bodies_are_errors() {
        assert!(matches!(
            MultipartReader::new("application/json", futures::stream::empty::<Result<Bytes, String>>()),
            Err(MultipartError::NotMultipart)
        ));
        let mut reader = reader_of(b"--b\r\nContent-Type: a/b\r\n\r\nno end", 3, "multipart/mixed; boundary=b");
        reader.next_part().await.unwrap();
        assert!(matches!(reader.read_to_end(100).await, Err(MultipartError::Truncated)));
    }
}
