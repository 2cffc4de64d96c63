//! Claim templates: text with `{{ user.CLAIM }}` placeholders (the Jinja syntax Synapse's
//! mapping provider uses, without filters), filled from an OpenID Connect provider's claims.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Claim(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("unclosed {{")?;
            let name = after[..end].trim().strip_prefix("user.").ok_or("placeholders are {{ user.CLAIM }}")?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':')) {
                return Err(format!("{name:?} is not a claim name"));
            }
            parts.push(Part::Claim(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The claims the template reads.
    pub fn claims(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Claim(name) => Some(name.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The filled-in text; None when a claim it reads is missing, empty or not a string or number.
    pub fn render(&self, claims: &Map<String, Value>) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Claim(name) => out.push_str(&claim_text(claims, name)?),
            }
        }
        Some(out)
    }
}

fn claim_text(claims: &Map<String, Value>, name: &str) -> Option<String> {
    match claims.get(name)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_claims_and_refuses_bad_templates() {
        let t = Template::parse("sso_{{ user.preferred_username }}-{{user.sub}}").unwrap();
        assert_eq!(t.claims().collect::<Vec<_>>(), ["preferred_username", "sub"]);
        let claims = json!({ "preferred_username": "Alice", "sub": 42 });
        assert_eq!(t.render(claims.as_object().unwrap()).as_deref(), Some("sso_Alice-42"));
        assert_eq!(t.render(json!({ "sub": "x" }).as_object().unwrap()), None);
        assert_eq!(t.render(json!({ "sub": "x", "preferred_username": "" }).as_object().unwrap()), None);
        assert!(Template::parse("{{ user.name").is_err());
        assert!(Template::parse("{{ name }}").is_err());
        assert!(Template::parse("{{ user.a b }}").is_err());
    }
}
