//! Message hygiene at intake: CRLF line endings, exactly one From:, Message-ID and Date
//! added when missing, lines within RFC 5322's 998 characters, intake headers taken out.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is empty")]
    Empty,
    #[error("message is {0} bytes, over the limit of {1}")]
    TooLarge(usize, usize),
    #[error("message has no From: header")]
    NoFrom,
    #[error("message has {0} From: headers; exactly one is required")]
    SeveralFrom(usize),
    #[error("line {0} is longer than 998 characters (RFC 5322); use a transfer encoding")]
    LineTooLong(usize),
    #[error("header section is malformed at line {0}: {1}")]
    BadHeader(usize, String),
}

/// Values of sluice's own intake headers (and PowerMTA's equivalents), removed from the message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IntakeHeaders {
    pub campaign: Option<String>,
    pub tenant: Option<String>,
    pub pool: Option<String>,
}

pub struct Prepared {
    pub content: Vec<u8>,
    pub headers: IntakeHeaders,
    /// Domain of the From: address (lowercase), when it has one.
    pub from_domain: Option<String>,
}

/// Normalise and check a message; `strip_intake` removes X-Sluice-* / x-job / x-virtual-mta.
pub fn prepare(
    raw: &[u8],
    max_size: usize,
    hostname: &str,
    now_ms: u64,
    unique: u64,
    strip_intake: bool,
) -> Result<Prepared, MessageError> {
    if raw.is_empty() {
        return Err(MessageError::Empty);
    }
    if raw.len() > max_size {
        return Err(MessageError::TooLarge(raw.len(), max_size));
    }
    let text = normalise_crlf(raw);
    // Split header section and body at the first empty line.
    let (head, body) = match find(&text, b"\r\n\r\n") {
        Some(p) => (&text[..p + 2], &text[p + 4..]),
        None => (&text[..], &b""[..]),
    };
    // Header fields (with folded continuation lines).
    let mut fields: Vec<(String, Vec<u8>)> = Vec::new();
    for (i, line) in head.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() > 998 {
            return Err(MessageError::LineTooLong(i + 1));
        }
        if line[0] == b' ' || line[0] == b'\t' {
            match fields.last_mut() {
                Some((_, raw)) => {
                    raw.extend_from_slice(line);
                    raw.extend_from_slice(b"\r\n");
                }
                None => {
                    return Err(MessageError::BadHeader(
                        i + 1,
                        "starts with a continuation line".into(),
                    ))
                }
            }
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(MessageError::BadHeader(
                i + 1,
                format!(
                    "{:?} is not a header field",
                    String::from_utf8_lossy(&line[..line.len().min(40)])
                ),
            ));
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_string();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(MessageError::BadHeader(
                i + 1,
                format!("invalid field name {name:?}"),
            ));
        }
        let mut raw_field = line.to_vec();
        raw_field.extend_from_slice(b"\r\n");
        fields.push((name, raw_field));
    }
    let is = |n: &str, want: &str| n.eq_ignore_ascii_case(want);
    let froms = fields.iter().filter(|(n, _)| is(n, "From")).count();
    if froms == 0 {
        return Err(MessageError::NoFrom);
    }
    if froms > 1 {
        return Err(MessageError::SeveralFrom(froms));
    }
    let from_domain = fields
        .iter()
        .find(|(n, _)| is(n, "From"))
        .and_then(|(_, v)| from_domain_of(&value(v)));
    let binary = fields.iter().any(|(n, v)| {
        is(n, "Content-Transfer-Encoding") && value(v).eq_ignore_ascii_case("binary")
    });
    if !binary {
        let first = head.split(|&b| b == b'\n').count() + 1;
        for (line_no, line) in (first..).zip(body.split(|&b| b == b'\n')) {
            let l = line.strip_suffix(b"\r").unwrap_or(line);
            if l.len() > 998 {
                return Err(MessageError::LineTooLong(line_no));
            }
        }
    }
    let mut headers = IntakeHeaders::default();
    if strip_intake {
        fields.retain(|(n, v)| {
            let val = || Some(value(v)).filter(|s| !s.is_empty());
            if is(n, "X-Sluice-Campaign") || is(n, "x-job") {
                if headers.campaign.is_none() || is(n, "X-Sluice-Campaign") {
                    headers.campaign = val();
                }
                false
            } else if is(n, "X-Sluice-Tenant") {
                headers.tenant = val();
                false
            } else if is(n, "X-Sluice-Pool") || is(n, "x-virtual-mta") {
                if headers.pool.is_none() || is(n, "X-Sluice-Pool") {
                    headers.pool = val();
                }
                false
            } else {
                true
            }
        });
    }
    let mut out = Vec::with_capacity(text.len() + 128);
    if !fields.iter().any(|(n, _)| is(n, "Message-ID")) {
        out.extend_from_slice(
            format!("Message-ID: <{unique:016x}.{now_ms}@{hostname}>\r\n").as_bytes(),
        );
    }
    if !fields.iter().any(|(n, _)| is(n, "Date")) {
        out.extend_from_slice(format!("Date: {}\r\n", crate::clock::rfc5322(now_ms)).as_bytes());
    }
    for (_, raw) in &fields {
        out.extend_from_slice(raw);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(Prepared {
        content: out,
        headers,
        from_domain,
    })
}

/// The domain of the (first) address in a From: value: `Name <a@b>` or `a@b`.
fn from_domain_of(v: &str) -> Option<String> {
    let addr = match (v.rfind('<'), v.rfind('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split_whitespace().find(|w| w.contains('@')).unwrap_or(v),
    };
    let d = addr.rsplit_once('@')?.1.trim().trim_end_matches('>');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

fn value(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let v = s.split_once(':').map(|(_, v)| v).unwrap_or("");
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// Turn bare LF (and bare CR) into CRLF.
pub fn normalise_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 50);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Result<Prepared, MessageError> {
        prepare(raw.as_bytes(), 1 << 20, "mta.test", 0, 7, true)
    }

    #[test]
    fn adds_missing_headers_and_crlf() {
        let r = p("From: a@b.test\nSubject: hi\n\nbody\n").unwrap();
        let s = String::from_utf8(r.content).unwrap();
        assert!(
            s.starts_with("Message-ID: <0000000000000007.0@mta.test>\r\nDate: Thu, 1 Jan 1970"),
            "{s}"
        );
        assert!(s.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{s}");
    }

    #[test]
    fn finds_the_from_domain() {
        let r = p("From: Shop <News@Brand.Example>\nSubject: x\n\nb").unwrap();
        assert_eq!(r.from_domain.as_deref(), Some("brand.example"));
        let r = p("From: a@b.test\n\nb").unwrap();
        assert_eq!(r.from_domain.as_deref(), Some("b.test"));
    }

    #[test]
    fn keeps_existing_headers() {
        let r = p("Date: x\r\nMessage-Id: <1@x>\r\nFrom: a@b.test\r\n\r\nb").unwrap();
        assert_eq!(
            r.content,
            b"Date: x\r\nMessage-Id: <1@x>\r\nFrom: a@b.test\r\n\r\nb"
        );
    }

    #[test]
    fn from_rules() {
        assert_eq!(p("Subject: x\n\nb").err(), Some(MessageError::NoFrom));
        assert_eq!(
            p("From: a@b.test\nFrom: c@d.test\n\nb").err(),
            Some(MessageError::SeveralFrom(2))
        );
    }

    #[test]
    fn long_lines() {
        let long = "x".repeat(999);
        assert_eq!(
            p(&format!("From: a@b.test\n\n{long}\n")).err(),
            Some(MessageError::LineTooLong(3))
        );
        assert!(p(&format!(
            "From: a@b.test\nContent-Transfer-Encoding: binary\n\n{long}\n"
        ))
        .is_ok());
    }

    #[test]
    fn size_and_garbage() {
        assert!(matches!(
            prepare(b"From: a@b.test\r\n\r\nxx", 5, "h", 0, 0, true),
            Err(MessageError::TooLarge(..))
        ));
        assert!(matches!(
            p("this is not a message"),
            Err(MessageError::BadHeader(1, _))
        ));
    }

    #[test]
    fn intake_headers_are_taken_out() {
        let r =
            p("From: a@b.test\nx-job: spring\nX-Virtual-MTA: pool1\nX-Sluice-Tenant: brand\n\nb")
                .unwrap();
        assert_eq!(r.headers.campaign.as_deref(), Some("spring"));
        assert_eq!(r.headers.pool.as_deref(), Some("pool1"));
        assert_eq!(r.headers.tenant.as_deref(), Some("brand"));
        let s = String::from_utf8(r.content).unwrap();
        assert!(
            !s.to_lowercase().contains("x-job") && !s.contains("X-Sluice"),
            "{s}"
        );
    }
}
