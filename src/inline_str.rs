//! A short string kept inline (up to 30 bytes) and on the heap only when longer: most
//! recipient addresses and domains fit, so a queued delivery's recipient and a route's key
//! need no allocation of their own and no pointer to follow.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;

/// Bytes stored inline.
pub const INLINE: usize = 30;

#[derive(Clone)]
pub enum InlineStr {
    Inline(u8, [u8; INLINE]),
    Heap(Box<str>),
}

impl InlineStr {
    pub fn as_str(&self) -> &str {
        match self {
            // built from a &str only, so always valid UTF-8
            InlineStr::Inline(len, buf) => std::str::from_utf8(&buf[..*len as usize]).unwrap_or(""),
            InlineStr::Heap(s) => s,
        }
    }

    pub fn is_inline(&self) -> bool {
        matches!(self, InlineStr::Inline(..))
    }
}

impl From<&str> for InlineStr {
    fn from(s: &str) -> InlineStr {
        let mut buf = [0u8; INLINE];
        match buf.get_mut(..s.len()) {
            Some(dst) => {
                dst.copy_from_slice(s.as_bytes());
                InlineStr::Inline(s.len() as u8, buf)
            }
            None => InlineStr::Heap(s.into()),
        }
    }
}

impl From<String> for InlineStr {
    fn from(s: String) -> InlineStr {
        if s.len() <= INLINE {
            InlineStr::from(s.as_str())
        } else {
            InlineStr::Heap(s.into_boxed_str())
        }
    }
}

impl From<Box<str>> for InlineStr {
    fn from(s: Box<str>) -> InlineStr {
        if s.len() <= INLINE {
            InlineStr::from(&*s)
        } else {
            InlineStr::Heap(s)
        }
    }
}

impl Deref for InlineStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for InlineStr {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for InlineStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for InlineStr {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // as `str` hashes, so maps keyed by it are searched with a &str
        self.as_str().hash(h)
    }
}

impl PartialEq for InlineStr {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}
impl Eq for InlineStr {}

impl PartialEq<str> for InlineStr {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for InlineStr {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for InlineStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for InlineStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for InlineStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for InlineStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InlineStr, D::Error> {
        String::deserialize(d).map(InlineStr::from)
    }
}

#[cfg(test)]
mod tests {
    use super::{InlineStr, INLINE};
    use std::collections::HashMap;

    #[test]
    fn short_strings_inline_long_ones_on_the_heap_and_maps_find_both_by_str() {
        let long = "a-rather-long-subdomain.of-a-long-domain.example";
        let mut m = HashMap::new();
        m.insert(InlineStr::from("gmail.com"), 1);
        m.insert(InlineStr::from(long), 2);
        m.insert(InlineStr::from(""), 3);
        assert!(InlineStr::from("gmail.com").is_inline());
        assert!(!InlineStr::from(long).is_inline());
        assert_eq!(m.get("gmail.com"), Some(&1));
        assert_eq!(m.get(long), Some(&2));
        assert_eq!(m.get(""), Some(&3));
        assert_eq!(m.get("gmail.co"), None);
        let edge = "x".repeat(INLINE);
        assert!(InlineStr::from(edge.as_str()).is_inline());
        assert!(!InlineStr::from("y".repeat(INLINE + 1)).is_inline());
        assert_eq!(InlineStr::from(edge.clone()).as_str(), edge);
        assert_eq!(std::mem::size_of::<InlineStr>(), 32);
        // multi-byte characters survive either way
        let u = InlineStr::from("ñandú@correo.test");
        assert_eq!(&*u, "ñandú@correo.test");
        assert_eq!(
            serde_json::to_string(&u).unwrap_or_default(),
            "\"ñandú@correo.test\""
        );
    }
}
