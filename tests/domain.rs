//! Sender-domain DNS tooling: the record set of a brand domain, its renderings, and the live
//! check against an in-process DNS authority.
//!
//! Loopback nets owned here: 127.130.0.0/24 ..= 127.134.0.0/24.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;

use sluice::dkim::{DkimCfg, Signer};
use sluice::domain::{
    check, dkim_for, feedback_name, normalize_domain, records, render_table, render_zone, Check,
    DomainError, DomainSetup, Record,
};
use sluice::testkit::dns::{resolver_for, DnsBuilder, DnsServer};

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net, 0, host))
}

const SPF_OK: &str = "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all";
/// A short fake key (40 characters): real RSA records exceed one TXT string.
const KEY: &str = "MCowBQYDK2VwAyEAfakefakefakefakefakefake";
const DKIM_NAME: &str = "s1._domainkey.brand.test";

fn dkim_value(key: &str) -> String {
    format!("v=DKIM1; k=ed25519; p={key}")
}

fn setup() -> DomainSetup {
    DomainSetup {
        subdomain: "feedback".into(),
        bounce_host: Some("bounce.mta.test".into()),
        cname_target: Some("fb.mta.test".into()),
        source_ips: vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ],
        dkim: vec![(DKIM_NAME.into(), dkim_value(KEY))],
    }
}

fn row<'a>(checks: &'a [Check], rtype: &str, name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.record.rtype == rtype && c.record.name == name)
        .unwrap_or_else(|| panic!("no {rtype} {name} row in {checks:#?}"))
}

fn statuses(checks: &[Check]) -> Vec<(String, String, String)> {
    checks
        .iter()
        .map(|c| {
            (
                c.record.rtype.clone(),
                c.record.name.clone(),
                c.status.clone(),
            )
        })
        .collect()
}

fn assert_all(checks: &[Check], status: &str) {
    assert_eq!(checks.len(), 5, "{checks:#?}");
    assert!(
        checks.iter().all(|c| c.status == status),
        "expected every row {status}: {:#?}",
        statuses(checks)
    );
}

// ---------------------------------------------------------------------------------------------
// Record set and renderings

#[test]
fn records_of_a_brand_domain() {
    let r = records("Brand.Example.", &{
        let mut s = setup();
        s.dkim = vec![("s1._domainkey.brand.example".into(), dkim_value(KEY))];
        s.source_ips.push("192.0.2.10".parse().unwrap()); // duplicates are listed once
        s
    });
    let rows: Vec<(&str, &str, &str, Option<&str>)> = r
        .iter()
        .map(|r| {
            let alt = r.alternative_to.as_deref();
            (r.rtype.as_str(), r.name.as_str(), r.value.as_str(), alt)
        })
        .collect();
    let dkim = dkim_value(KEY);
    let dmarc = "v=DMARC1; p=none; rua=mailto:dmarc@brand.example; adkim=r; aspf=r";
    assert_eq!(
        rows,
        vec![
            ("MX", "feedback.brand.example", "10 bounce.mta.test", None),
            ("CNAME", "feedback.brand.example", "fb.mta.test", Some("MX")),
            ("TXT", "feedback.brand.example", SPF_OK, None),
            ("TXT", "s1._domainkey.brand.example", dkim.as_str(), None),
            ("TXT", "_dmarc.brand.example", dmarc, None),
        ]
    );
    assert!(r.iter().all(|r| !r.purpose.is_empty()));
    let json = serde_json::to_value(&r[1]).expect("serialize");
    assert_eq!(json["alternative_to"], "MX");
    assert_eq!(json["rtype"], "CNAME");
}

#[test]
fn optional_records_and_domain_normalisation() {
    let bare = DomainSetup {
        subdomain: "feedback".into(),
        ..DomainSetup::default()
    };
    // Without hosts there is no MX/CNAME, without IPs no SPF (it would authorise nothing).
    let r = records("Brand.Example.", &bare);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].name, "_dmarc.brand.example");
    let only_cname = DomainSetup {
        bounce_host: None,
        cname_target: Some("FB.mta.test.".into()),
        ..setup()
    };
    let r = records("brand.example", &only_cname);
    assert_eq!(
        (r[0].rtype.as_str(), r[0].value.as_str()),
        ("CNAME", "fb.mta.test")
    );
    assert_eq!(r[0].alternative_to, None);

    assert_eq!(
        normalize_domain(" Brand.Example. "),
        Ok("brand.example".into())
    );
    assert_eq!(normalize_domain(""), Err(DomainError::Empty));
    assert!(normalize_domain("a..b").is_err());
    assert!(normalize_domain("bad domain").is_err());
    assert_eq!(feedback_name("brand.example", ".fb."), "fb.brand.example");
}

#[test]
fn zone_lines_have_absolute_names_and_split_long_txt() {
    let long: String = "v=DKIM1; k=rsa; p="
        .chars()
        .chain("A".repeat(582).chars())
        .collect();
    assert_eq!(long.len(), 600);
    let mut s = setup();
    s.dkim = vec![("rsa._domainkey.brand.example".into(), long.clone())];
    let zone = render_zone(&records("brand.example", &s));
    let lines: Vec<&str> = zone.lines().collect();
    assert!(
        lines.contains(&"feedback.brand.example. 3600 IN MX 10 bounce.mta.test."),
        "{zone}"
    );
    // The CNAME alternative cannot coexist with the MX: it is written commented out.
    assert!(
        lines.contains(&"; feedback.brand.example. 3600 IN CNAME fb.mta.test."),
        "{zone}"
    );
    assert!(
        lines.contains(&format!("feedback.brand.example. 3600 IN TXT \"{SPF_OK}\"").as_str()),
        "{zone}"
    );
    let dkim = lines
        .iter()
        .find(|l| l.starts_with("rsa._domainkey.brand.example. 3600 IN TXT "))
        .unwrap_or_else(|| panic!("no DKIM line in {zone}"));
    let quoted = dkim.trim_start_matches("rsa._domainkey.brand.example. 3600 IN TXT ");
    let inner = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or_else(|| panic!("not quoted: {dkim}"));
    let parts: Vec<&str> = inner.split("\" \"").collect();
    let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
    assert_eq!(lens, vec![255, 255, 90], "{dkim}");
    assert_eq!(parts.concat(), long);
    // Every non-comment line is a record with an absolute owner.
    for l in lines.iter().filter(|l| !l.starts_with(';')) {
        assert!(l.split(' ').next().is_some_and(|n| n.ends_with('.')), "{l}");
    }
}

#[test]
fn zone_txt_escapes_quotes_and_backslashes() {
    let r = Record {
        name: "x.brand.example.".into(),
        rtype: "TXT".into(),
        value: r#"a "b" \c"#.into(),
        purpose: "test".into(),
        alternative_to: None,
    };
    let zone = render_zone(&[r]);
    assert!(
        zone.contains(r#"x.brand.example. 3600 IN TXT "a \"b\" \\c""#),
        "{zone}"
    );
}

#[test]
fn table_lists_every_record_with_its_whole_value() {
    let r = records("brand.example", &setup());
    let table = render_table(&r);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), r.len() + 1, "{table}");
    assert!(lines[0].starts_with("TYPE"), "{table}");
    assert!(lines[0].contains("NAME") && lines[0].contains("VALUE"));
    for (line, rec) in lines[1..].iter().zip(&r) {
        assert!(line.starts_with(&rec.rtype), "{line}");
        assert!(line.ends_with(&rec.value), "{line}");
        assert!(line.contains(&rec.name), "{line}");
    }
    assert!(lines[2].contains("CNAME (or MX)"), "{table}");
}

#[test]
fn dkim_for_keeps_the_domain_selectors_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = gen_ed25519(dir.path(), "ed.pem");
    let cfg = |domain: &str, selector: &str| DkimCfg {
        domain: domain.into(),
        selector: selector.into(),
        key: key.clone(),
        headers: None,
    };
    let signer = Signer::load(
        &[
            cfg("brand.test", "a"),
            cfg("other.test", "b"),
            cfg("*.brand.test", "w"),
            cfg("sub.brand.test", "c"),
        ],
        dir.path(),
    )
    .expect("load keys");
    let names: Vec<String> = dkim_for(&signer, "Brand.Test.")
        .into_iter()
        .map(|(n, v)| {
            assert!(v.starts_with("v=DKIM1"), "{v}");
            n
        })
        .collect();
    assert_eq!(
        names,
        vec!["a._domainkey.brand.test", "w._domainkey.brand.test"]
    );
}

// ---------------------------------------------------------------------------------------------
// Live checks

fn kit_zone(spf: &str, key: &str) -> DnsBuilder {
    DnsBuilder::new()
        .mx("feedback.brand.test", 10, "bounce.mta.test")
        .txt("feedback.brand.test", spf)
        .txt("feedback.brand.test", "google-site-verification=abc")
        .txt(DKIM_NAME, &dkim_value(key))
        .txt("_dmarc.brand.test", "v=DMARC1; p=quarantine")
}

#[tokio::test]
async fn correct_zone_is_all_ok() {
    let dns = kit_zone(SPF_OK, KEY).start(ip(130, 1)).await;
    let checks = check("brand.test", &setup(), &dns.resolver()).await;
    assert_all(&checks, "ok");
    let mx = row(&checks, "MX", "feedback.brand.test");
    assert_eq!(mx.found, vec!["10 bounce.mta.test"]);
    assert_eq!(mx.note, None);
    let cname = row(&checks, "CNAME", "feedback.brand.test");
    assert!(cname
        .note
        .as_deref()
        .is_some_and(|n| n.contains("not needed")));
    let spf = row(&checks, "TXT", "feedback.brand.test");
    assert!(spf.found.contains(&SPF_OK.to_string()), "{spf:?}");
    // A wider network covering the sending IPs also counts.
    let dns2 = kit_zone("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all", KEY)
        .start(ip(130, 2))
        .await;
    assert_all(&check("brand.test", &setup(), &dns2.resolver()).await, "ok");
}

#[tokio::test]
async fn empty_zone_is_all_missing_and_a_refused_query_is_an_error() {
    let dns = DnsBuilder::new()
        .a("bounce.mta.test", Ipv4Addr::new(192, 0, 2, 1))
        .start(ip(131, 1))
        .await;
    let resolver = dns.resolver();
    let checks = check("brand.test", &setup(), &resolver).await;
    assert_all(&checks, "missing");
    assert!(checks.iter().all(|c| c.found.is_empty()), "{checks:#?}");
    // Outside the served zone the server answers REFUSED: not a verdict on the records.
    let mut s = setup();
    s.dkim = vec![("s1._domainkey.brand.example".into(), dkim_value(KEY))];
    let checks = check("brand.example", &s, &resolver).await;
    assert!(
        checks
            .iter()
            .all(|c| c.status == "error" && c.note.is_some()),
        "{checks:#?}"
    );
}

#[tokio::test]
async fn spf_missing_a_sending_ip_is_wrong() {
    let dns = kit_zone("v=spf1 ip4:192.0.2.10 include:_spf.mta.test -all", KEY)
        .start(ip(132, 1))
        .await;
    let checks = check("brand.test", &setup(), &dns.resolver()).await;
    let spf = row(&checks, "TXT", "feedback.brand.test");
    assert_eq!(spf.status, "wrong", "{spf:?}");
    let note = spf.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("2001:db8::10") && !note.contains("192.0.2.10"),
        "{note}"
    );
    assert!(note.contains("not followed"), "{note}");
    let mut others = checks.iter().filter(|c| !std::ptr::eq(*c, spf));
    assert!(others.all(|c| c.status == "ok"), "{:#?}", statuses(&checks));

    // Two SPF records at one name are a permerror.
    let dns2 = kit_zone(SPF_OK, KEY)
        .txt("feedback.brand.test", "v=spf1 -all")
        .start(ip(132, 2))
        .await;
    let checks = check("brand.test", &setup(), &dns2.resolver()).await;
    let spf = row(&checks, "TXT", "feedback.brand.test");
    assert_eq!(spf.status, "wrong", "{spf:?}");
}

#[tokio::test]
async fn dkim_with_another_key_is_wrong() {
    let other = "MCowBQYDK2VwAyEAotherotherotherotherothe";
    let dns = kit_zone(SPF_OK, other).start(ip(133, 1)).await;
    let resolver = dns.resolver();
    let checks = check("brand.test", &setup(), &resolver).await;
    let dkim = row(&checks, "TXT", DKIM_NAME);
    assert_eq!(dkim.status, "wrong", "{dkim:?}");
    assert_eq!(dkim.found, vec![dkim_value(other)]);
    assert_eq!(
        checks.iter().filter(|c| c.status == "ok").count(),
        4,
        "{:#?}",
        statuses(&checks)
    );

    // Same key with other spacing and tag order: ok.
    let mut s = setup();
    s.dkim = vec![(DKIM_NAME.into(), format!("v=DKIM1;k=ed25519;p= {other} "))];
    let checks = check("brand.test", &s, &resolver).await;
    assert_eq!(row(&checks, "TXT", DKIM_NAME).status, "ok");
}

// Zones with CNAMEs and multi-string TXT records, from the kit's DnsBuilder.

enum Rr<'a> {
    Cname(&'a str, &'a str),
    Mx(&'a str, u16, &'a str),
    Txt(&'a str, &'a str),
}

async fn serve(bind: IpAddr, rrs: &[Rr<'_>]) -> DnsServer {
    let mut b = DnsBuilder::new();
    for rr in rrs {
        b = match rr {
            Rr::Cname(o, t) => b.cname(o, t),
            Rr::Mx(o, p, h) => b.mx(o, *p, h),
            Rr::Txt(o, text) => b.txt(o, text),
        };
    }
    b.start(bind).await
}

#[tokio::test]
async fn cname_only_feedback_subdomain_is_accepted_for_the_mx() {
    let dkim = dkim_value(KEY);
    let zone = serve(
        ip(134, 1),
        &[
            Rr::Cname("feedback.brand.test", "fb.mta.test"),
            Rr::Mx("fb.mta.test", 10, "bounce.mta.test"),
            Rr::Txt("fb.mta.test", SPF_OK),
            Rr::Txt(DKIM_NAME, &dkim),
            Rr::Txt("_dmarc.brand.test", "v=DMARC1; p=none"),
        ],
    )
    .await;
    let checks = check("brand.test", &setup(), &resolver_for(zone.addr)).await;
    assert_all(&checks, "ok");
    let mx = row(&checks, "MX", "feedback.brand.test");
    let note = mx.note.as_deref().unwrap_or_default();
    assert!(note.contains("via CNAME"), "{mx:?}");
    assert!(
        mx.found.contains(&"CNAME fb.mta.test".to_string()),
        "{mx:?}"
    );
    let cname = row(&checks, "CNAME", "feedback.brand.test");
    assert_eq!(cname.found, vec!["fb.mta.test"]);
    assert_eq!(cname.note, None);

    // A CNAME elsewhere, to a host without the feedback MX: both rows wrong.
    let zone2 = serve(
        ip(134, 2),
        &[
            Rr::Cname("feedback.brand.test", "elsewhere.test"),
            Rr::Mx("elsewhere.test", 10, "mx.elsewhere.test"),
        ],
    )
    .await;
    let checks = check("brand.test", &setup(), &resolver_for(zone2.addr)).await;
    assert_eq!(row(&checks, "MX", "feedback.brand.test").status, "wrong");
    assert_eq!(row(&checks, "CNAME", "feedback.brand.test").status, "wrong");
}

#[tokio::test]
async fn real_rsa_key_records_check_ok_end_to_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("rsa.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        key.to_str().expect("utf-8 temp path"),
    ]);
    let cfg = DkimCfg {
        domain: "brand.test".into(),
        selector: "rsa".into(),
        key,
        headers: None,
    };
    let signer = Signer::load(&[cfg], dir.path()).expect("load key");
    let mut s = setup();
    s.dkim = dkim_for(&signer, "brand.test");
    assert_eq!(s.dkim.len(), 1);
    assert!(
        s.dkim[0].1.len() > 255,
        "an RSA-2048 record spans several strings"
    );
    let recs = records("brand.test", &s);
    let rrs: Vec<Rr> = recs
        .iter()
        .filter(|r| r.alternative_to.is_none())
        .map(|r| match r.rtype.as_str() {
            "MX" => Rr::Mx(&r.name, 10, "bounce.mta.test"),
            _ => Rr::Txt(&r.name, &r.value),
        })
        .collect();
    let zone = serve(ip(134, 3), &rrs).await;
    let checks = check("brand.test", &s, &resolver_for(zone.addr)).await;
    assert_all(&checks, "ok");
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("these tests generate DKIM keys with `openssl`: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gen_ed25519(dir: &Path, file: &str) -> std::path::PathBuf {
    let path = dir.join(file);
    openssl(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        path.to_str().expect("utf-8 temp path"),
    ]);
    path
}

#[tokio::test]
async fn cli_prints_records_and_api_checks_them() {
    // `sluice domain records` from a config, and GET /api/v1/domains/{domain}/check
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("s.toml");
    std::fs::write(
        &cfg,
        "hostname = \"mta.example.com\"\n[verp]\ndomain = \"fb.example.com\"\nsecret = \"0123456789abcdef-dom\"\nsubdomain = \"feedback\"\nbounce_host = \"bounce.mta.example.com\"\n[[sources]]\nname = \"ip1\"\nip = \"192.0.2.10\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "domain",
            "records",
            "brand.example",
            "--format",
            "zone",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("feedback.brand.example. 3600 IN MX 10 bounce.mta.example.com."),
        "{text}"
    );
    assert!(text.contains("v=spf1 ip4:192.0.2.10 -all"), "{text}");
}
