//! PowerMTA-style accounting records (one CSV line per delivery outcome).

use super::Event;

/// The header line (without line end).
pub const CSV_HEADER: &str = "type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,jobId,envId,queue,vmtaPool,header_x-id";

/// The accounting line (ending in `\n`) of a `delivered`, `bounced` or `deferred` event;
/// `None` for every other event.
pub fn csv_record(e: &Event) -> Option<String> {
    let (kind, action) = match e.event.as_str() {
        "delivered" => ("d", "relayed"),
        "bounced" if e.bounce_reason.as_deref() == Some("complaint") => ("f", "failed"),
        "bounced" => ("b", "failed"),
        "deferred" => ("t", "delayed"),
        _ => return None,
    };
    let queued =
        e.id.as_deref()
            .and_then(crate::verp::parse_id)
            .map(|id| crate::clock::rfc3339(crate::spool::Spool::id_time_ms(id)))
            .unwrap_or_default();
    let returned = e.bounce_source.as_deref() == Some("returned");
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    let fields: [String; 24] = [
        kind.into(),
        e.ts.clone(),
        queued,
        s(&e.envelope_from),
        s(&e.recipient),
        String::new(), // orcpt
        action.into(),
        s(&e.enhanced),
        e.response
            .as_deref()
            .map(|r| format!("smtp;{r}"))
            .unwrap_or_default(),
        s(&e.mx),
        s(&e.bounce_reason),
        "smtp".into(),
        String::new(), // srcMta
        if returned { "returned" } else { "smtp" }.into(),
        s(&e.source_ip),
        s(&e.ip),
        String::new(), // dlvEsmtpAvailable
        String::new(), // dlvSize
        String::new(), // vmta
        s(&e.campaign),
        s(&e.id),
        String::new(), // queue
        String::new(), // vmtaPool
        s(&e.recipient_id),
    ];
    let mut line = String::with_capacity(256);
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        push_field(&mut line, f);
    }
    line.push('\n');
    Some(line)
}

/// RFC 4180: quote a field holding a comma, a quote, CR or LF; double its quotes.
fn push_field(out: &mut String, f: &str) {
    if f.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&f.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let mut s = String::new();
        push_field(&mut s, "a,\"b\"");
        assert_eq!(s, "\"a,\"\"b\"\"\"");
        let mut s = String::new();
        push_field(&mut s, "plain");
        assert_eq!(s, "plain");
    }

    #[test]
    fn kinds() {
        let mut e = Event {
            event: "bounced".into(),
            bounce_reason: Some("complaint".into()),
            ..Event::default()
        };
        assert!(csv_record(&e).is_some_and(|l| l.starts_with("f,")));
        e.bounce_reason = Some("bad-mailbox".into());
        assert!(csv_record(&e).is_some_and(|l| l.starts_with("b,")));
        e.event = "expired".into();
        assert!(csv_record(&e).is_none());
        assert_eq!(CSV_HEADER.split(',').count(), 24);
    }
}
