//! Bounce qualification: SMTP replies and returned mail (DSN, ARF, auto-replies, plain
//! bounces) → type (hard / soft / ignored) and reason.
//!
//! * [`rules`] loads the ordered text rules (`rules/bounce-rules.toml`) and classifies one
//!   SMTP reply or diagnostic text ([`BounceRules::classify_reply`]), falling back on the
//!   RFC 3463 enhanced status code and then on the basic reply code class.
//! * [`message`] parses returned mail (RFC 3464 DSNs, RFC 5965 ARF reports, RFC 3834
//!   auto-replies, legacy plain-text bounces) into a [`MessageVerdict`].
//! * [`text`] holds the text helpers (code extraction, normalisation) and the JSON helpers
//!   used by the `sluice bounce classify` CLI.

mod envelope;
pub mod message;
pub mod rules;
pub mod text;

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub use message::{classify_message, MessageKind, MessageVerdict};
pub use rules::{BounceRules, BounceRulesError, Classification, ReasonPolicy};
pub use text::{classify_file_json, classify_text_json};

/// How a bounce affects the recipient address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceType {
    /// Permanent: the address is quarantined at the first occurrence (by default).
    Hard,
    /// Transient or not about the address.
    Soft,
    /// Not a delivery failure (auto-replies, ...).
    Ignored,
}

impl BounceType {
    /// The lowercase name used in rules files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceType::Hard => "hard",
            BounceType::Soft => "soft",
            BounceType::Ignored => "ignored",
        }
    }
}

impl fmt::Display for BounceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BounceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hard" => Ok(BounceType::Hard),
            "soft" => Ok(BounceType::Soft),
            "ignored" => Ok(BounceType::Ignored),
            other => Err(format!(
                "unknown type `{other}` (expected hard, soft or ignored)"
            )),
        }
    }
}

/// Why a message bounced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The address does not exist (hard).
    UserUnknown,
    /// Over quota (soft).
    MailboxFull,
    /// Mailbox disabled, suspended or inactive (soft).
    InactiveMailbox,
    /// The recipient domain does not resolve, has no MX or a null MX (soft).
    InvalidDomain,
    /// Final rejection about the sender's reputation, authentication, content or policy.
    Refused,
    /// Temporary deferrals, transport failures, message size.
    Unreachable,
    /// RFC 3834 auto-reply / out-of-office (ignored).
    AutoReply,
    /// ARF feedback-loop complaint (hard).
    Complaint,
    /// Could not decide (soft).
    Unknown,
}

impl Reason {
    /// Every reason, in taxonomy order.
    pub const ALL: [Reason; 9] = [
        Reason::UserUnknown,
        Reason::MailboxFull,
        Reason::InactiveMailbox,
        Reason::InvalidDomain,
        Reason::Refused,
        Reason::Unreachable,
        Reason::AutoReply,
        Reason::Complaint,
        Reason::Unknown,
    ];

    /// The snake_case name used in rules files and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnknown => "user_unknown",
            Reason::MailboxFull => "mailbox_full",
            Reason::InactiveMailbox => "inactive_mailbox",
            Reason::InvalidDomain => "invalid_domain",
            Reason::Refused => "refused",
            Reason::Unreachable => "unreachable",
            Reason::AutoReply => "auto_reply",
            Reason::Complaint => "complaint",
            Reason::Unknown => "unknown",
        }
    }

    /// The type this reason has unless a rule says otherwise.
    pub fn default_type(self) -> BounceType {
        match self {
            Reason::UserUnknown | Reason::Complaint => BounceType::Hard,
            Reason::AutoReply => BounceType::Ignored,
            _ => BounceType::Soft,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
                format!(
                    "unknown reason `{s}` (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// The shipped rules, parsed once.
pub fn builtin_rules() -> &'static BounceRules {
    static RULES: OnceLock<BounceRules> = OnceLock::new();
    RULES.get_or_init(BounceRules::builtin)
}

/// Classifies one SMTP reply with the shipped rules: `(type, reason)`.
///
/// `code` is the basic reply code (e.g. 550), `enhanced` the RFC 3463 status (e.g.
/// "5.1.1"), `text` the reply or diagnostic text.
pub fn classify_reply(
    code: Option<u16>,
    enhanced: Option<&str>,
    text: &str,
) -> (BounceType, Reason) {
    let c = builtin_rules().classify_reply(code, enhanced, text);
    (c.bounce_type, c.reason)
}
