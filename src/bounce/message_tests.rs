use super::*;

fn rules() -> BounceRules {
    BounceRules::builtin()
}

const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+abc@sender.example\r\nSubject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\nFinal-Recipient: rfc822; bob@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 <bob@example.org>: Recipient address\r\n rejected: User unknown in virtual mailbox table\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <bounces+abc@sender.example>\r\nFrom: a@sender.example\r\nSubject: hi\r\n\r\nbody\r\n--B--\r\n";

#[test]
fn dsn_user_unknown() {
    let v = classify_message(DSN.as_bytes(), &rules());
    assert_eq!(v.kind, MessageKind::Dsn);
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Hard, Reason::UserUnknown)
    );
    assert_eq!(v.status.as_deref(), Some("5.1.1"));
    assert_eq!(v.recipient.as_deref(), Some("bob@example.org"));
    assert_eq!(v.action.as_deref(), Some("failed"));
    assert_eq!(
        v.original_envelope.as_deref(),
        Some("bounces+abc@sender.example")
    );
    assert!(v.diagnostic.unwrap_or_default().contains("User unknown"));
}

/// `DSN` with another action, status and diagnostic.
fn dsn_with(action: &str, status: &str, diag: &str) -> String {
    DSN.replace("Action: failed", &format!("Action: {action}"))
        .replace("Status: 5.1.1", &format!("Status: {status}"))
        .replace(
            "smtp; 550 5.1.1 <bob@example.org>: Recipient address\r\n rejected: User unknown in virtual mailbox table",
            diag,
        )
}

#[test]
fn dsn_delayed() {
    // A delay notice is classified by its cause; the action tells the caller to skip it.
    let raw = dsn_with("delayed", "4.4.1", "smtp; 451 4.4.1 No answer from host");
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.action.as_deref(), Some("delayed"));
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Soft, Reason::Unreachable)
    );
    let raw = dsn_with("delayed", "4.0.0", "smtp; 452 4.2.2 Mailbox over quota");
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(
        (v.action.as_deref(), v.reason),
        (Some("delayed"), Reason::MailboxFull)
    );
    // No diagnostic and a generic status: the unreachable default.
    let raw = dsn_with("delayed", "4.0.0", "");
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.reason, Reason::Unreachable);
}

#[test]
fn dsn_failed_with_temporary_reply_is_qualified_by_text() {
    // The last attempt got a 4xx, but the DSN reports a final failure: the text decides.
    let reputation = "421 4.16.55 [TS01] Messages from 192.0.2.1 temporarily deferred due to excessive user complaints";
    let raw = dsn_with("failed", "4.0.0", &format!("smtp; {reputation}"));
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Soft, Reason::Refused)
    );
    // The same text as a live SMTP reply stays a deferral.
    assert_eq!(
        crate::bounce::classify_reply(Some(421), Some("4.16.55"), reputation),
        (BounceType::Soft, Reason::Unreachable)
    );
    let raw = dsn_with(
        "failed",
        "4.1.1",
        "smtp; 450 4.1.1 <bob@example.org>: Recipient address rejected: User unknown",
    );
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Hard, Reason::UserUnknown)
    );
    let raw = dsn_with("failed", "4.4.7", "smtp; 451 4.4.7 Delivery time expired");
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).reason,
        Reason::Unreachable
    );
}

#[test]
fn dsn_without_diagnostic_uses_the_recipient_line() {
    let raw = dsn_with("delayed", "4.0.0", "").replace(
        "I'm sorry.",
        "A message is delayed.\r\n\r\nbob@example.org: No MX found for domain",
    );
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.reason, Reason::InvalidDomain);
    assert_eq!(
        v.diagnostic.as_deref(),
        Some("bob@example.org: No MX found for domain")
    );
}

#[test]
fn user_unknown_with_policy_status_is_a_filter() {
    // "User unknown" under a 5.7.x / 5.2.x status, not in reply to RCPT: a content filter.
    let raw = dsn_with("failed", "5.7.1", "smtp; 550 5.7.1 User Unknown");
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).reason,
        Reason::Refused
    );
    let raw = dsn_with(
        "failed",
        "5.7.1",
        "smtp; 550 5.7.1 User Unknown (in reply to RCPT TO command)",
    );
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).reason,
        Reason::UserUnknown
    );
}

#[test]
fn original_envelope_sources() {
    // X-Postfix-Sender of the report when the original is not enclosed.
    let raw = DSN
        .replace(
            "Reporting-MTA: dns; mx.example.net\r\n",
            "Reporting-MTA: dns; mx.example.net\r\nX-Postfix-Sender: rfc822; b+7@sender.example\r\n",
        )
        .replace("Return-Path: <bounces+abc@sender.example>\r\n", "");
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.original_envelope.as_deref(), Some("b+7@sender.example"));
    // text/rfc822-headers with only a Received envelope-from note.
    let raw = DSN.replace(
        "Content-Type: message/rfc822\r\n\r\nReturn-Path: <bounces+abc@sender.example>\r\n",
        "Content-Type: text/rfc822-headers\r\n\r\nReceived: from a by b\r\n\t(envelope-from <b+8@sender.example>); Mon\r\n",
    );
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.original_envelope.as_deref(), Some("b+8@sender.example"));
    // An original enclosed without a Content-Type: its headers are the part's headers.
    let raw = "From: MAILER-DAEMON@mx.example.net\r\nSubject: failure notice\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nbob@example.org [User unknown]\r\n--B\r\nReturn-Path: <b+9@sender.example>\r\nSubject: hi\r\n\r\nbody\r\n--B--\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.original_envelope.as_deref(), Some("b+9@sender.example"));
    // The bounce's own null Return-Path is never used.
    let raw = "Return-Path: <>\r\nFrom: MAILER-DAEMON@mx.example.net\r\nSubject: failure notice\r\n\r\n550 5.1.1 <bob@example.org>: User unknown\r\n";
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).original_envelope,
        None
    );
}

#[test]
fn arf_envelope_falls_back_on_the_original_return_path() {
    let raw = "From: fbl@isp.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: x/1\r\nVersion: 1\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <b+10@sender.example>\r\nFrom: a@sender.example\r\n\r\nhi\r\n--B--\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.reason, Reason::Complaint);
    assert_eq!(v.original_envelope.as_deref(), Some("b+10@sender.example"));
}

#[test]
fn forwarded_bounce() {
    // A gateway notice without details, enclosing the real bounce.
    let raw = format!(
        "From: postmaster@gw.example\r\nSubject: Undeliverable\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"O\"\r\n\r\n--O\r\nContent-Type: text/plain\r\n\r\nThe following mail could not be delivered.\r\n--O\r\nContent-Type: message/rfc822\r\n\r\n{DSN}\r\n--O--\r\n"
    );
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.reason, Reason::UserUnknown);
    assert_eq!(v.recipient.as_deref(), Some("bob@example.org"));
    assert_eq!(
        v.original_envelope.as_deref(),
        Some("bounces+abc@sender.example")
    );
}

#[test]
fn arf() {
    let raw = "From: fbl@isp.example\r\nSubject: FW: hi\r\nMIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report\r\n--B\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: x/1\r\nVersion: 1\r\nOriginal-Mail-From: <b+1@sender.example>\r\nOriginal-Rcpt-To: <u@isp.example>\r\n\r\n--B--\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.kind, MessageKind::Arf);
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Hard, Reason::Complaint)
    );
    assert_eq!(v.recipient.as_deref(), Some("u@isp.example"));
    assert_eq!(v.original_envelope.as_deref(), Some("b+1@sender.example"));
    let auth = raw.replace("Feedback-Type: abuse", "Feedback-Type: auth-failure");
    let v = classify_message(auth.as_bytes(), &rules());
    assert_eq!(v.bounce_type, BounceType::Ignored);
}

#[test]
fn auto_reply() {
    let raw = "From: Bob <bob@example.org>\r\nTo: a@sender.example\r\nSubject: Out of Office: hi\r\nAuto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.kind, MessageKind::AutoReply);
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Ignored, Reason::AutoReply)
    );
    let raw = "From: Bob <bob@example.org>\r\nSubject: Abwesenheitsnotiz\r\n\r\nbin weg\r\n";
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).reason,
        Reason::AutoReply
    );
    let raw = "From: Bob <bob@example.org>\r\nSubject: hi\r\nAuto-Submitted: no\r\n\r\nhello\r\n";
    assert_eq!(
        classify_message(raw.as_bytes(), &rules()).kind,
        MessageKind::Unknown
    );
}

#[test]
fn plain_bounce_qmail() {
    let raw = "From: MAILER-DAEMON@mx.example.net\r\nTo: a@sender.example\r\nSubject: failure notice\r\n\r\nHi. This is the qmail-send program at mx.example.net.\r\nI'm afraid I wasn't able to deliver your message to the following addresses.\r\nThis is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n<bob@example.org>:\r\n192.0.2.1 does not like recipient.\r\nRemote host said: 550 5.1.1 <bob@example.org>... User unknown\r\nGiving up on 192.0.2.1.\r\n\r\n--- Below this line is a copy of the message.\r\n\r\nReturn-Path: <b+1@sender.example>\r\nSubject: vacation\r\n\r\nhello\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.kind, MessageKind::PlainBounce);
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Hard, Reason::UserUnknown)
    );
    assert_eq!(v.status.as_deref(), Some("5.1.1"));
    assert_eq!(v.recipient.as_deref(), Some("bob@example.org"));
    assert_eq!(v.original_envelope.as_deref(), Some("b+1@sender.example"));
}

#[test]
fn malformed_never_panics() {
    let inputs: [&[u8]; 6] = [
        b"",
        b"\xff\xfe\x00garbage",
        b"Content-Type: multipart/report; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\nAction",
        b"Content-Type: multipart/mixed; boundary=\r\n\r\n--\r\n--\r\n",
        b"Subject: =?utf-8?B?////?=\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!",
        b"Content-Type: message/delivery-status\r\n\r\nStatus: 5.\r\nDiagnostic-Code: ;\r\n",
    ];
    for raw in inputs {
        let v = classify_message(raw, &rules());
        assert_ne!(v.bounce_type, BounceType::Hard);
    }
}

#[test]
fn plain_delay_warning_is_marked_delayed() {
    let raw = "From: Mail Delivery System <Mailer-Daemon@mx.example.net>\r\nSubject: Warning: message 1abc delayed 24 hours\r\n\r\nThis message was created automatically by mail delivery software.\r\nA message that you sent has not yet been delivered to one or more of its\r\nrecipients after more than 24 hours on the queue on mx.example.net.\r\n\r\n  bob@example.org\r\n    host mx.example.org [192.0.2.1]: 450 Client host rejected: cannot find your reverse hostname\r\n\r\nNo action is required on your part. Delivery attempts will continue for\r\nsome time, and this warning may be repeated at intervals if the message\r\nremains undelivered.\r\n";
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.kind, MessageKind::PlainBounce);
    assert_eq!(v.action.as_deref(), Some("delayed"));
    assert_eq!(v.reason, Reason::Refused);
}
