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

#[test]
fn dsn_delayed() {
    let raw = DSN
        .replace("Action: failed", "Action: delayed")
        .replace("Status: 5.1.1", "Status: 4.4.1");
    let v = classify_message(raw.as_bytes(), &rules());
    assert_eq!(v.action.as_deref(), Some("delayed"));
    assert_eq!(
        (v.bounce_type, v.reason),
        (BounceType::Soft, Reason::Unreachable)
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
