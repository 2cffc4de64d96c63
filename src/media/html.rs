//! A small HTML scanner for link previews: the `<title>` and the `<meta>` tags of a page.
//! It skips comments, scripts and styles, and reads attributes quoted or not; it does not
//! build a document tree (previews need nothing more).

/// What a preview reads from a page.
#[derive(Debug, Default, PartialEq)]
pub struct PageMeta {
    pub title: Option<String>,
    /// `(property or name, content)` of each `<meta>` tag, names lowercased, in page order.
    pub metas: Vec<(String, String)>,
}

impl PageMeta {
    /// The content of the first `<meta>` with this property or name.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.metas.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

pub fn scan(html: &str) -> PageMeta {
    // ASCII lowercasing keeps byte offsets, so positions found in `lower` slice `html`.
    let lower = html.to_ascii_lowercase();
    let mut meta = PageMeta::default();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find('<') {
        let start = pos + found;
        let rest = &lower[start..];
        if rest.starts_with("<!--") {
            pos = lower[start..].find("-->").map_or(lower.len(), |end| start + end + 3);
            continue;
        }
        let name_len = rest[1..].find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(rest.len() - 1);
        if name_len == 0 {
            // Not an opening tag (`</x>`, `<!DOCTYPE>`, a stray `<` in text): nothing to read.
            pos = start + 1;
            continue;
        }
        let name = &rest[1..1 + name_len];
        let (attrs, after_tag) = parse_attributes(html, &lower, start + 1 + name_len);
        pos = after_tag;
        match name {
            "meta" => {
                let get = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                if let (Some(key), Some(content)) = (get("property").or_else(|| get("name")), get("content")) {
                    meta.metas.push((key.to_ascii_lowercase(), content));
                }
            }
            "title" | "script" | "style" => {
                let close = format!("</{name}");
                let end = lower[pos..].find(&close).map_or(lower.len(), |e| pos + e);
                if name == "title" && meta.title.is_none() {
                    meta.title = Some(collapse_whitespace(&decode_entities(&html[pos..end])));
                }
                pos = end;
            }
            _ => {}
        }
    }
    meta
}

/// Reads `name=value` pairs from `from` to the end of the tag; returns them and the position
/// after the tag's `>`.
fn parse_attributes(html: &str, lower: &str, from: usize) -> (Vec<(String, String)>, usize) {
    let bytes = lower.as_bytes();
    let mut attrs = Vec::new();
    let mut i = from;
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return (attrs, i);
        }
        if bytes[i] == b'>' {
            return (attrs, i + 1);
        }
        let name_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !matches!(bytes[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = lower[name_start..i].to_owned();
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            let (value_start, value_end, next) = match bytes.get(i) {
                Some(&quote @ (b'"' | b'\'')) => {
                    let end = lower[i + 1..].find(quote as char).map_or(bytes.len(), |e| i + 1 + e);
                    (i + 1, end, (end + 1).min(bytes.len()))
                }
                _ => {
                    let end =
                        lower[i..].find(|c: char| c.is_ascii_whitespace() || c == '>').map_or(bytes.len(), |e| i + e);
                    (i, end, end)
                }
            };
            value = decode_entities(&html[value_start..value_end]);
            i = next;
        }
        if !name.is_empty() {
            attrs.push((name, value));
        }
    }
}

/// Decodes character references: the numeric ones and the few named ones pages use in titles.
fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest[1..].find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..1 + end];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let code = match entity.strip_prefix('#') {
                        Some(hex) if hex.starts_with(['x', 'X']) => u32::from_str_radix(&hex[1..], 16).ok(),
                        Some(dec) => dec.parse().ok(),
                        None => None,
                    };
                    code.and_then(char::from_u32)
                }
            };
            c.map(|c| (c, end + 2))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_title_and_meta_tags() {
        let page = r#"<!DOCTYPE html><html><HEAD>
            <!-- <meta property="og:title" content="commented out"> -->
            <title>  Tom &amp; Jerry &#8211;
              the&#x20;show </title>
            <script>var s = "<meta property='og:title' content='in a script'>";</script>
            <meta property="og:title" content="The &quot;real&quot; title" />
            <meta name=description content=plain>
            <META PROPERTY='og:image' CONTENT='/img/a.png'>
            <meta charset="utf-8">
            </head><body><p>hi</p></body></html>"#;
        let meta = scan(page);
        assert_eq!(meta.title.as_deref(), Some("Tom & Jerry \u{2013} the show"));
        assert_eq!(meta.get("og:title"), Some("The \"real\" title"));
        assert_eq!(meta.get("description"), Some("plain"));
        assert_eq!(meta.get("og:image"), Some("/img/a.png"));
        assert_eq!(meta.metas.len(), 3);
    }

    #[test]
    fn survives_truncated_and_odd_markup() {
        for page in ["<", "<meta", "<meta content='x", "<title>unterminated", "&#xFFFFFFFF; &bogus", "<!-- x", "<a b=>"]
        {
            scan(page);
        }
        // A stray `<` in text does not swallow the next tag.
        assert_eq!(scan("1 < 2 <meta name=description content=x>").get("description"), Some("x"));
        assert_eq!(scan("<title>unterminated").title.as_deref(), Some("unterminated"));
        assert_eq!(decode_entities("a &#xFFFFFFFF; &bogus; &lt;"), "a &#xFFFFFFFF; &bogus; <");
    }
}
