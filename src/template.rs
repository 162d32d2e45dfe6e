//! Personalisation: `{{name}}` and `{{name|default}}` placeholders in a message (headers and
//! body) are filled per recipient at delivery time, so the spool keeps one template plus small
//! per-recipient variables.
//!
//! * A placeholder without a default needs a value for every recipient (checked at intake).
//! * A value containing CR or LF is refused when the placeholder is in the header section
//!   (header injection).
//! * Values are inserted as-is: in `text/html` parts the caller must HTML-escape them.
//! * Placeholders inside `base64` or `quoted-printable` parts cannot be filled after the
//!   transfer encoding was applied, so such a message is refused at intake with a clear error:
//!   put personalised text in 7bit/8bit parts (sluice renders before transmission, never
//!   re-encodes).

use std::collections::BTreeMap;

/// Per-recipient variables.
pub type Vars = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "missing variable {0:?} (give it in the recipient's \"vars\" or write {{{{{0}|default}}}})"
    )]
    Missing(String),
    #[error("variable {0:?} contains CR or LF and is used in a header")]
    HeaderInjection(String),
    #[error("placeholder {{{{{0}}}}} is inside a {1} part; personalise 7bit/8bit parts only")]
    EncodedPart(String, String),
    #[error("unterminated placeholder at byte {0}")]
    Unterminated(usize),
    #[error("invalid placeholder name {0:?} (letters, digits, _ - .)")]
    BadName(String),
}

/// One placeholder occurrence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub start: usize,
    pub end: usize,
    pub name: String,
    pub default: Option<String>,
    pub in_header: bool,
}

/// A parsed template: the placeholders of a message, in order.
#[derive(Debug, Clone, Default)]
pub struct Template {
    pub placeholders: Vec<Placeholder>,
}

fn header_end(msg: &[u8]) -> usize {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(msg.len())
}

impl Template {
    /// Find the placeholders of a message (and refuse those in encoded parts).
    pub fn parse(msg: &[u8]) -> Result<Template, TemplateError> {
        let hdr_end = header_end(msg);
        let mut out = Vec::new();
        let mut i = 0;
        while i + 1 < msg.len() {
            if msg[i] == b'{' && msg[i + 1] == b'{' {
                let close = msg[i + 2..]
                    .windows(2)
                    .position(|w| w == b"}}")
                    .ok_or(TemplateError::Unterminated(i))?;
                let inner = String::from_utf8_lossy(&msg[i + 2..i + 2 + close]).to_string();
                if inner.contains('\n') || inner.len() > 200 {
                    return Err(TemplateError::Unterminated(i));
                }
                let (name, default) = match inner.split_once('|') {
                    Some((n, d)) => (n.trim().to_string(), Some(d.to_string())),
                    None => (inner.trim().to_string(), None),
                };
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                {
                    return Err(TemplateError::BadName(name));
                }
                let end = i + 2 + close + 2;
                out.push(Placeholder {
                    start: i,
                    end,
                    name,
                    default,
                    in_header: i < hdr_end,
                });
                i = end;
            } else {
                i += 1;
            }
        }
        let t = Template { placeholders: out };
        t.check_encoded_parts(msg)?;
        Ok(t)
    }

    pub fn is_empty(&self) -> bool {
        self.placeholders.is_empty()
    }

    /// Refuse placeholders that sit inside base64 / quoted-printable parts.
    fn check_encoded_parts(&self, msg: &[u8]) -> Result<(), TemplateError> {
        if self.placeholders.is_empty() {
            return Ok(());
        }
        // Walk header blocks: every "Content-Transfer-Encoding" header starts a region that
        // lasts until the next MIME boundary line ("--...").
        let text = String::from_utf8_lossy(msg);
        let mut regions: Vec<(usize, usize, String)> = Vec::new();
        let mut offset = 0;
        let mut current: Option<(usize, String)> = None;
        for line in text.split_inclusive('\n') {
            let l = line.trim_end();
            if l.starts_with("--") && l.len() > 2 {
                if let Some((s, enc)) = current.take() {
                    regions.push((s, offset, enc));
                }
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-transfer-encoding") {
                    let enc = v.trim().to_ascii_lowercase();
                    if enc == "base64" || enc == "quoted-printable" {
                        current = Some((offset, enc));
                    }
                }
            }
            offset += line.len();
        }
        if let Some((s, enc)) = current {
            regions.push((s, msg.len(), enc));
        }
        for p in &self.placeholders {
            if p.in_header {
                continue;
            }
            if let Some((_, _, enc)) = regions
                .iter()
                .find(|(s, e, _)| p.start >= *s && p.start < *e)
            {
                return Err(TemplateError::EncodedPart(p.name.clone(), enc.clone()));
            }
        }
        Ok(())
    }

    /// Check that a recipient's variables fill the template.
    pub fn check(&self, vars: &Vars) -> Result<(), TemplateError> {
        for p in &self.placeholders {
            match vars.get(&p.name) {
                Some(v) if p.in_header && (v.contains('\r') || v.contains('\n')) => {
                    return Err(TemplateError::HeaderInjection(p.name.clone()))
                }
                Some(_) => {}
                None if p.default.is_some() => {}
                None => return Err(TemplateError::Missing(p.name.clone())),
            }
        }
        Ok(())
    }

    /// Fill the placeholders for one recipient (call `check` first).
    pub fn render(&self, msg: &[u8], vars: &Vars) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        let mut last = 0;
        for p in &self.placeholders {
            out.extend_from_slice(&msg[last..p.start]);
            let v = vars
                .get(&p.name)
                .map(String::as_str)
                .or(p.default.as_deref())
                .unwrap_or("");
            out.extend_from_slice(v.as_bytes());
            last = p.end;
        }
        out.extend_from_slice(&msg[last..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(kv: &[(&str, &str)]) -> Vars {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fills_headers_and_body_with_defaults() {
        let m = b"From: a@b.test\r\nSubject: Hi {{first_name|there}}\r\n\r\nDear {{first_name}}, code {{code}}.\r\n";
        let t = Template::parse(m).unwrap();
        assert_eq!(t.placeholders.len(), 3);
        assert!(t.placeholders[0].in_header && !t.placeholders[1].in_header);
        let v = vars(&[("first_name", "Ana"), ("code", "X1")]);
        t.check(&v).unwrap();
        assert_eq!(
            t.render(m, &v),
            b"From: a@b.test\r\nSubject: Hi Ana\r\n\r\nDear Ana, code X1.\r\n".to_vec()
        );
        assert_eq!(
            t.check(&vars(&[("first_name", "Bo")])),
            Err(TemplateError::Missing("code".into()))
        );
    }

    #[test]
    fn refuses_header_injection_and_encoded_parts() {
        let m = b"From: a@b.test\r\nSubject: {{s}}\r\n\r\nx\r\n";
        let t = Template::parse(m).unwrap();
        assert_eq!(
            t.check(&vars(&[("s", "x\r\nBcc: victim@x.test")])),
            Err(TemplateError::HeaderInjection("s".into()))
        );
        let enc = b"From: a@b.test\r\nContent-Type: multipart/alternative; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nHi {{n}}\r\n--B\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<p>Hi {{n}}</p>\r\n--B--\r\n";
        assert!(
            matches!(Template::parse(enc), Err(TemplateError::EncodedPart(n, e)) if n == "n" && e == "quoted-printable")
        );
        assert!(matches!(
            Template::parse(b"From: a\r\n\r\n{{oops"),
            Err(TemplateError::Unterminated(_))
        ));
        assert!(matches!(
            Template::parse(b"From: a\r\n\r\n{{ bad name }}"),
            Err(TemplateError::BadName(_))
        ));
    }
}
