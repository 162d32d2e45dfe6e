//! Recipient address validation (RFC 5321 mailbox syntax, as used by bulk mail).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address contains CR or LF (header injection attempt)")]
    CrLf,
    #[error("address contains a control character, space or one of <>()[],;:\\\"")]
    BadChar,
    #[error("address needs exactly one @")]
    NoAt,
    #[error("local part is empty or longer than 64 characters")]
    LocalLength,
    #[error("local part has a leading, trailing or double dot")]
    LocalDots,
    #[error("domain {0:?} is not a valid host name")]
    BadDomain(String),
    #[error("address is longer than 254 characters")]
    TooLong,
}

/// A validated address: local part as given, domain lowercased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    pub fn as_string(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Validate a recipient address.
pub fn parse(raw: &str) -> Result<Address, AddressError> {
    if raw.contains(['\r', '\n']) {
        return Err(AddressError::CrLf);
    }
    let s = raw.trim();
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    if s.len() > 254 {
        return Err(AddressError::TooLong);
    }
    if s.chars()
        .any(|c| c.is_control() || c.is_whitespace() || "<>()[],;:\\\"".contains(c))
    {
        return Err(AddressError::BadChar);
    }
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(AddressError::NoAt);
    };
    if local.is_empty() || local.len() > 64 {
        return Err(AddressError::LocalLength);
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::LocalDots);
    }
    let domain = domain.to_ascii_lowercase();
    if !valid_domain(&domain) {
        return Err(AddressError::BadDomain(domain));
    }
    Ok(Address {
        local: local.to_string(),
        domain,
    })
}

fn valid_domain(d: &str) -> bool {
    if d.is_empty() || d.len() > 253 || !d.contains('.') {
        return false;
    }
    d.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_addresses() {
        let a = parse("Ana.Lima+promo@Example.COM").unwrap();
        assert_eq!(a.domain, "example.com");
        assert_eq!(a.local, "Ana.Lima+promo");
        assert!(parse("x@sub-1.b.test").is_ok());
    }

    #[test]
    fn refuses_bad_ones() {
        assert_eq!(parse("a@b.test\r\nBcc: x@y.test"), Err(AddressError::CrLf));
        assert_eq!(parse(""), Err(AddressError::Empty));
        assert_eq!(parse("ab.test"), Err(AddressError::NoAt));
        assert_eq!(parse("a@b@c.test"), Err(AddressError::NoAt));
        assert_eq!(parse("a b@c.test"), Err(AddressError::BadChar));
        assert_eq!(parse("<a@c.test>"), Err(AddressError::BadChar));
        assert_eq!(parse(".a@c.test"), Err(AddressError::LocalDots));
        assert!(matches!(
            parse("a@localhost"),
            Err(AddressError::BadDomain(_))
        ));
        assert!(matches!(
            parse("a@-x.test"),
            Err(AddressError::BadDomain(_))
        ));
        assert_eq!(
            parse(&format!("{}@c.test", "a".repeat(65))),
            Err(AddressError::LocalLength)
        );
    }
}
