use super::*;
use crate::bounce::text::extract_codes;

fn classify(text: &str) -> (BounceType, Reason) {
    let rules = BounceRules::builtin();
    let (code, enhanced) = extract_codes(text);
    let c = rules.classify_reply(code, enhanced.as_deref(), text);
    (c.bounce_type, c.reason)
}

const HARD_UNKNOWN: (BounceType, Reason) = (BounceType::Hard, Reason::UserUnknown);
const FULL: (BounceType, Reason) = (BounceType::Soft, Reason::MailboxFull);
const REFUSED: (BounceType, Reason) = (BounceType::Soft, Reason::Refused);
const UNREACHABLE: (BounceType, Reason) = (BounceType::Soft, Reason::Unreachable);
const INVALID_DOMAIN: (BounceType, Reason) = (BounceType::Soft, Reason::InvalidDomain);

#[test]
fn builtin_rules_parse() {
    let rules = BounceRules::from_str_at(BUILTIN_RULES, BUILTIN_PATH).unwrap();
    assert!(rules.rules().len() > 10);
    assert_eq!(
        rules.policy(Reason::MailboxFull).release_after,
        Some(Duration::from_secs(30 * 86_400))
    );
    assert_eq!(rules.policy(Reason::UserUnknown).quarantine_after, 1);
    assert_eq!(rules.policy(Reason::Refused).quarantine_after, 0);
    assert_eq!(rules.policy(Reason::Unknown).quarantine_after, 3);
}

#[test]
fn classify_reply_signature() {
    let rules = BounceRules::builtin();
    let c = rules.classify_reply(Some(550), Some("5.1.1"), "550 5.1.1 <x@y> User is unknown");
    assert_eq!((c.bounce_type, c.reason), HARD_UNKNOWN);
    assert!(c.rule.is_some());
    assert_eq!(
        crate::bounce::classify_reply(Some(550), Some("5.2.2"), "550 5.2.2 User quota exceeded"),
        FULL
    );
}

#[test]
fn basic_assertions() {
    assert_eq!(classify("550 5.1.1 <x@y> User is unknown"), HARD_UNKNOWN);
    assert_eq!(classify("550 5.2.2 User quota exceeded"), FULL);
    assert_eq!(
        classify("550 5.7.1 : Recipient address rejected: Inactive MailBox, not poped for more than 6 months"),
        (BounceType::Soft, Reason::InactiveMailbox)
    );
    assert_eq!(
        classify("550 5.1.2 domain nomail.test does not exist (NXDOMAIN)"),
        INVALID_DOMAIN
    );
    assert_eq!(
        classify("556 5.1.10 domain x accepts no mail (null MX, RFC 7505)"),
        INVALID_DOMAIN
    );
    assert_eq!(
        classify("451 4.4.3 DNS lookup for x failed temporarily"),
        UNREACHABLE
    );
    assert_eq!(
        classify("421 4.16.55 [TS01] Messages from 1.2.3.4 temporarily deferred due to excessive user complaints"),
        UNREACHABLE
    );
}

#[test]
fn gmail() {
    assert_eq!(classify("550-5.1.1 The email account that you tried to reach does not exist. Please try\n550-5.1.1 double-checking the recipient's email address for typos"), HARD_UNKNOWN);
    assert_eq!(classify("452-4.2.2 The email account that you tried to reach is over quota. Please direct\n452-4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp"), FULL);
    assert_eq!(classify("550-5.7.26 This mail is unauthenticated, which poses a security risk to the\n550-5.7.26 sender and Gmail users, and has been blocked."), REFUSED);
    assert_eq!(classify("421-4.7.28 [1.2.3.4] Our system has detected an unusual rate of\n421-4.7.28 unsolicited mail originating from your IP address."), UNREACHABLE);
    assert_eq!(classify("550-5.7.1 [1.2.3.4] Our system has detected that this message is\n550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\n550-5.7.1 this message has been blocked."), REFUSED);
}

#[test]
fn microsoft() {
    assert_eq!(
        classify("550 5.5.0 Requested action not taken: mailbox unavailable"),
        HARD_UNKNOWN
    );
    assert_eq!(classify("550 5.7.606 Access denied, banned sending IP [1.2.3.4]. To request removal from this list please visit https://sender.office.com/"), REFUSED);
    assert_eq!(classify("550 SC-001 (S3140) Unfortunately, messages from 1.2.3.4 weren't sent. Please contact your Internet service provider since part of their network is on our block list."), REFUSED);
    assert_eq!(
        classify("451 4.7.500 Server busy. Please try again later from [1.2.3.4]. (S77719)"),
        UNREACHABLE
    );
}

#[test]
fn yahoo_aol() {
    assert_eq!(classify("554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - mta1001.mail.ir2.yahoo.com"), HARD_UNKNOWN);
    assert_eq!(classify("554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes"), REFUSED);
    assert_eq!(classify("421 4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred due to unexpected volume or user complaints"), UNREACHABLE);
}

#[test]
fn icloud_gmx_orange() {
    assert_eq!(
        classify("550 5.1.1 <x@icloud.com>: user does not exist"),
        HARD_UNKNOWN
    );
    assert_eq!(
        classify("550 Requested action not taken: mailbox unavailable"),
        HARD_UNKNOWN
    );
    assert_eq!(classify("554-Transaction failed\n554-Reject due to policy restrictions.\n554 For explanation visit https://postmaster.gmx.net/en/error-messages"), REFUSED);
    assert_eq!(classify("550 5.1.1 Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 [416]"), HARD_UNKNOWN);
    assert_eq!(classify("421 mwinf5c10 ME Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR_999 [999]"), UNREACHABLE);
}

#[test]
fn spamhaus() {
    assert_eq!(classify("554 5.7.1 Service unavailable; Client host [1.2.3.4] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/1.2.3.4"), REFUSED);
}

#[test]
fn fallbacks() {
    let rules = BounceRules::from_str_at("", "empty.toml").unwrap();
    let r = |c, e: Option<&str>| rules.classify_reply(c, e, "zzz").reason;
    assert_eq!(r(Some(550), Some("5.1.1")), Reason::UserUnknown);
    assert_eq!(r(Some(452), Some("4.2.2")), Reason::MailboxFull);
    assert_eq!(r(Some(550), Some("5.2.1")), Reason::InactiveMailbox);
    assert_eq!(r(Some(550), Some("5.1.10")), Reason::InvalidDomain);
    assert_eq!(r(Some(550), Some("5.7.1")), Reason::Refused);
    assert_eq!(r(Some(451), Some("4.3.0")), Reason::Unreachable);
    assert_eq!(r(Some(552), Some("5.3.4")), Reason::Unreachable);
    assert_eq!(r(Some(421), None), Reason::Unreachable);
    assert_eq!(r(Some(554), None), Reason::Unknown);
    assert_eq!(r(None, None), Reason::Unknown);
    assert_eq!(
        rules
            .classify_reply(Some(550), Some("5.1.1"), "x")
            .bounce_type,
        BounceType::Hard
    );
}

#[test]
fn code_filters() {
    let text = "[[rule]]\nname = \"a\"\npattern = \"x\"\ncodes = [\"4xx\"]\ntype = \"soft\"\nreason = \"unreachable\"\n\n[[rule]]\nname = \"b\"\npattern = \"x\"\nenhanced = [\"5.7.*\"]\ntype = \"soft\"\nreason = \"refused\"\n";
    let rules = BounceRules::from_str_at(text, "t.toml").unwrap();
    assert_eq!(
        rules.classify_reply(Some(451), None, "x").rule.as_deref(),
        Some("a")
    );
    assert_eq!(
        rules
            .classify_reply(None, Some("4.7.1"), "x")
            .rule
            .as_deref(),
        Some("a")
    );
    assert_eq!(
        rules
            .classify_reply(Some(550), Some("5.7.1"), "x")
            .rule
            .as_deref(),
        Some("b")
    );
    assert_eq!(
        rules.classify_reply(Some(550), Some("5.1.1"), "x").rule,
        None
    );
}

fn err(text: &str) -> String {
    BounceRules::from_str_at(text, "rules/bounce-rules.toml")
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_file_line_key() {
    let rule = |name: &str, pattern: &str| {
        format!("[[rule]]\nname = \"{name}\"\npattern = '{pattern}'\ntype = \"hard\"\nreason = \"user_unknown\"\n\n")
    };
    let bad_regex = format!("{}{}", rule("a", "x"), rule("b", "(unclosed"));
    let e = err(&bad_regex);
    assert!(
        e.starts_with("rules/bounce-rules.toml:9: rule[1].pattern: invalid regex"),
        "{e}"
    );

    let dup = format!("{}{}", rule("a", "x"), rule("a", "y"));
    let e = err(&dup);
    assert!(
        e.starts_with("rules/bounce-rules.toml:8: rule[1].name: duplicate"),
        "{e}"
    );

    let bad_reason = rule("a", "x").replace("user_unknown", "nope");
    let e = err(&bad_reason);
    assert!(
        e.starts_with("rules/bounce-rules.toml:5: rule[0].reason: unknown reason"),
        "{e}"
    );

    let bad_type = rule("a", "x").replace("\"hard\"", "\"medium\"");
    let e = err(&bad_type);
    assert!(
        e.starts_with("rules/bounce-rules.toml:4: rule[0].type: unknown type"),
        "{e}"
    );

    let unknown_key = format!(
        "{}{}",
        rule("a", "x"),
        rule("b", "y").replace("type =", "colour = 1\ntype =")
    );
    let e = err(&unknown_key);
    assert!(
        e.starts_with("rules/bounce-rules.toml:10: rule[1].colour"),
        "{e}"
    );
    assert!(e.contains("unknown field"), "{e}");

    let bad_mask = rule("a", "x").replace("type =", "codes = [\"5x\"]\ntype =");
    let e = err(&bad_mask);
    assert!(
        e.starts_with("rules/bounce-rules.toml:4: rule[0].codes"),
        "{e}"
    );

    let bad_duration = "[[reason]]\nname = \"mailbox_full\"\nrelease_after = \"30 parsecs\"\n";
    let e = err(bad_duration);
    assert!(
        e.starts_with("rules/bounce-rules.toml:3: reason[0].release_after"),
        "{e}"
    );

    let syntax = "[[rule]]\nname = \n";
    let e = err(syntax);
    assert!(e.starts_with("rules/bounce-rules.toml:2:"), "{e}");
}

#[test]
fn load_from_file() {
    let dir = std::env::temp_dir().join(format!("sluice-bounce-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("r.toml");
    std::fs::write(&path, BUILTIN_RULES).unwrap();
    assert!(BounceRules::load(&path).is_ok());
    let e = BounceRules::load(dir.join("missing.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.toml"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn durations() {
    assert_eq!(
        parse_duration("30d").unwrap(),
        Duration::from_secs(30 * 86_400)
    );
    assert_eq!(
        parse_duration("12h").unwrap(),
        Duration::from_secs(12 * 3_600)
    );
    assert!(parse_duration("d").is_err());
}

#[test]
fn final_matching_promotes_temporary_codes() {
    let rules = BounceRules::builtin();
    let text = "451 4.7.650 The mail server [192.0.2.25] has been temporarily rate limited due to IP reputation.";
    // Live reply: a deferral.
    assert_eq!(
        rules
            .classify_reply(Some(451), Some("4.7.650"), text)
            .reason,
        Reason::Unreachable
    );
    // In a returned DSN whose delivery finally failed: qualified by the text.
    let r = rules.match_rule_final(Some(451), Some("4.7.650"), text);
    assert_eq!(r.map(|r| r.reason), Some(Reason::Refused));
    let r = rules.match_rule_final(Some(452), Some("4.2.2"), "452 4.2.2 Mailbox full");
    assert_eq!(r.map(|r| r.reason), Some(Reason::MailboxFull));
    let r = rules.match_rule_final(Some(451), Some("4.3.0"), "451 4.3.0 Try again later");
    assert_eq!(r.map(|r| r.reason), Some(Reason::Unreachable));
    assert_eq!(final_status("4.7.1"), "5.7.1");
    assert_eq!(final_status("5.1.1"), "5.1.1");
    assert_eq!(final_code(421), 521);
    assert_eq!(final_code(550), 550);
}

#[test]
fn wording_families() {
    assert_eq!(
        classify("550 connect to mx.example.net[192.0.2.1]: server refused to talk to me: 554 Service not available"),
        REFUSED
    );
    assert_eq!(
        classify(
            "550 service permits 2 unverifiable sending IPs - mx.example.com is not 192.0.2.1"
        ),
        REFUSED
    );
    assert_eq!(classify("554 Transaction failed"), UNREACHABLE);
    assert_eq!(classify("550 No MX found for domain"), INVALID_DOMAIN);
    assert_eq!(
        classify("Your message was not delivered within 0 days and 1 hours. Remote host is not responding."),
        UNREACHABLE
    );
    assert_eq!(
        classify("550 5.0.0 <x@y>: Recipient address rejected: On hold"),
        (BounceType::Soft, Reason::Unknown)
    );
}
