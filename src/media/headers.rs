//! The headers media is served with: `Content-Disposition` (inline only for safe types, the
//! file name encoded as RFC 6266 says), and reading a file name back from one.

/// Types the spec allows to be served `inline`; anything else is an `attachment`.
const INLINE_TYPES: [&str; 26] = [
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

pub fn is_inline_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `inline` or `attachment`, with the file name as a quoted string when it is plain printable
/// ASCII, else in RFC 6266's UTF-8 form (`filename*=utf-8''...`, percent-encoded).
pub fn content_disposition(inline: bool, file_name: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    match file_name {
        None => kind.to_owned(),
        Some(name) if name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') => {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            // RFC 5987 attr-char: these go as they are, every other byte as %XX.
            let attr_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
            let encoded: String = name
                .bytes()
                .map(|b| if attr_char(b) { char::from(b).to_string() } else { format!("%{b:02X}") })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
}

/// The file name a `Content-Disposition` header gives: the RFC 5987 `filename*` form when
/// it is UTF-8, else the plain `filename` (quoted or not).
pub fn file_name_of(disposition: &str) -> Option<String> {
    let params: Vec<(String, &str)> = split_params(disposition)
        .into_iter()
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let extended = params.iter().find(|(n, _)| n == "filename*").and_then(|(_, v)| {
        let (charset, rest) = v.split_once('\'')?;
        let (_language, encoded) = rest.split_once('\'')?;
        if !charset.eq_ignore_ascii_case("utf-8") {
            return None;
        }
        percent_decode(encoded)
    });
    extended
        .or_else(|| {
            params.iter().find(|(n, _)| n == "filename").map(|(_, v)| {
                let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
                v.replace("\\\"", "\"").replace("\\\\", "\\")
            })
        })
        .filter(|n| !n.is_empty())
}

/// Splits a header value at the semicolons outside quoted strings.
fn split_params(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn percent_decode(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_follows_type_and_encodes_names() {
        assert!(is_inline_type("image/PNG"));
        assert!(is_inline_type("text/plain; charset=utf-8"));
        assert!(!is_inline_type("text/html"));
        assert!(!is_inline_type("image/svg+xml"));
        assert_eq!(content_disposition(true, None), "inline");
        assert_eq!(content_disposition(false, Some("a b.html")), "attachment; filename=\"a b.html\"");
        assert_eq!(
            content_disposition(true, Some("\u{e9}t\u{e9} \"1\".png")),
            "inline; filename*=utf-8''%C3%A9t%C3%A9%20%221%22.png"
        );
        for name in ["a b.html", "a;b=c.txt", "\u{e9}t\u{e9} \"1\".png"] {
            assert_eq!(file_name_of(&content_disposition(false, Some(name))).as_deref(), Some(name));
        }
        assert_eq!(file_name_of("attachment; filename=plain.txt").as_deref(), Some("plain.txt"));
        assert_eq!(file_name_of("inline"), None);
    }
}
