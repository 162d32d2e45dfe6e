//! DKIM signing: keys generated at test time with openssl, public keys published on an
//! in-process DNS authority, signatures checked by real verifiers (mail-auth, and Python's
//! dkimpy when installed; required under CI), also after a trip through an SMTP sink.
//!
//! Loopback nets owned here: 127.110.0.0/24 ..= 127.116.0.0/24.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use sluice::dkim::{DkimCfg, DkimError, Signer, MIN_RSA_BITS};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use common::dns::{resolver_for, DnsBuilder, DnsServer};
use common::mx::{FakeMx, MxScript};

fn ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net, 0, host))
}

// ---------------------------------------------------------------------------------------
// Keys

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "these tests generate DKIM keys with the `openssl` command, which cannot run: {e}"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn gen_rsa(dir: &Path, file: &str, bits: u32) -> PathBuf {
    let path = dir.join(file);
    let p = path.to_str().expect("utf-8 temp path");
    let bits = format!("rsa_keygen_bits:{bits}");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits, "-out", p]);
    path
}

fn gen_ed25519(dir: &Path, file: &str) -> PathBuf {
    let path = dir.join(file);
    let p = path.to_str().expect("utf-8 temp path");
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]);
    path
}

fn cfg(domain: &str, selector: &str, key: &Path) -> DkimCfg {
    DkimCfg {
        domain: domain.into(),
        selector: selector.into(),
        key: key.to_path_buf(),
        headers: None,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

// ---------------------------------------------------------------------------------------
// Messages

fn message(from: &str, body_bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "From: \"Sluice Test\" <news@{from}>\r\n\
         To: someone@dest.example\r\n\
         Subject: DKIM test   with  spaces\r\n\
         Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n\
         Message-ID: <dkim-test-1@{from}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         List-Unsubscribe: <https://{from}/u/1>\r\n\
         List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
         X-Not-Signed: 1\r\n\
         \r\n\
         Hello,\r\n\
         .a line starting with a dot (dot-stuffed on the wire)\r\n\
         trailing spaces   \r\n"
    )
    .into_bytes();
    let mut n = 0usize;
    while m.len() < body_bytes {
        m.extend_from_slice(
            format!("line {n} of the filler text for the body ....\r\n").as_bytes(),
        );
        n += 1;
    }
    m.extend_from_slice(b"\r\n\r\n");
    m
}

// ---------------------------------------------------------------------------------------
// DNS: one zone with TXT records split into 255-byte character-strings (an RSA-2048 key
// record is about 410 bytes; the kit's `DnsBuilder::txt` puts the value in one string, which
// cannot be encoded beyond 255 bytes).

async fn serve_txt(bind: IpAddr, origin: &str, records: &[(String, String)]) -> DnsServer {
    let mut b = DnsBuilder::with_origin(origin);
    for (owner, text) in records {
        b = b.txt(owner, text);
    }
    b.start(bind).await
}

// ---------------------------------------------------------------------------------------
// Verifiers

/// mail-auth's verifier asking only our DNS authority. Returns one result per signature
/// with its `h=` list.
async fn verify_mail_auth(dns: SocketAddr, msg: &[u8]) -> Vec<(DkimResult, Vec<String>)> {
    let auth = MessageAuthenticator(resolver_for(dns));
    let parsed = AuthenticatedMessage::parse(msg).expect("signed message parses");
    auth.verify_dkim(&parsed)
        .await
        .iter()
        .map(|o| {
            (
                o.result().clone(),
                o.signature().map(|s| s.h.clone()).unwrap_or_default(),
            )
        })
        .collect()
}

fn assert_all_pass(results: &[(DkimResult, Vec<String>)], n: usize) {
    assert_eq!(results.len(), n, "signature count: {results:?}");
    for (r, _) in results {
        assert_eq!(*r, DkimResult::Pass, "all results: {results:?}");
    }
}

/// Whether Python + dkimpy (with Ed25519 support when `ed25519`) can be used. Without CI it
/// may be missing (the test prints a note and skips that part); with CI set it must be there.
fn dkimpy_available(ed25519: bool) -> bool {
    let module = |m: &str| {
        Command::new("python3")
            .args(["-c", &format!("import {m}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut missing = Vec::new();
    if !module("dkim") {
        missing.push("dkim (pip install dkimpy)");
    }
    if ed25519 && !module("nacl") {
        missing.push("nacl (pip install 'dkimpy[ed25519]')");
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but python3 cannot import {missing:?}: .ci/run must install 'dkimpy[ed25519]'"
    );
    eprintln!("NOTE: skipping the dkimpy check, python3 cannot import {missing:?}");
    false
}

const DKIMPY: &str = r#"
import json, logging, os, sys
import dkim
logging.basicConfig(stream=sys.stderr, level=logging.DEBUG)
records = json.loads(os.environ["DKIM_RECORDS"])
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    v = records.get(n.rstrip(".").lower())
    return v.encode() if v is not None else None
msg = sys.stdin.buffer.read()
d = dkim.DKIM(msg, logger=logging.getLogger("dkim"))
n = sum(1 for h in d.headers if h[0].lower() == b"dkim-signature")
print(json.dumps([bool(d.verify(idx=i, dnsfunc=dnsfunc)) for i in range(n)]))
"#;

/// dkimpy's verdict for each signature of `msg`, its DNS answered from `records`.
fn verify_dkimpy(msg: &[u8], records: &[(String, String)]) -> Vec<bool> {
    let map: serde_json::Map<String, serde_json::Value> = records
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), serde_json::Value::String(v.clone())))
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", DKIMPY])
        .env("DKIM_RECORDS", serde_json::Value::Object(map).to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(msg).expect("write message to python3");
    }
    let out = child.wait_with_output().expect("python3 output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "dkimpy script failed: {stderr}");
    let verdicts: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "dkimpy output {:?}: {e}; stderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert!(
        verdicts.iter().all(|v| *v),
        "dkimpy verdicts {verdicts:?}; log: {stderr}"
    );
    verdicts
}

// ---------------------------------------------------------------------------------------
// mail-auth verification through DNS

#[tokio::test]
async fn rsa_signature_passes_mail_auth() {
    let dir = tmp();
    let key = gen_rsa(dir.path(), "rsa.pem", 2048);
    let signer = Signer::load(&[cfg("sluice.example", "rsa2024", &key)], dir.path()).expect("load");
    let txt = signer
        .public_key_txt("sluice.example", "rsa2024")
        .expect("txt");
    assert!(txt.starts_with("v=DKIM1; k=rsa; p="), "{txt}");
    assert!(txt.len() > 255, "an RSA-2048 record needs several strings");
    let dns = serve_txt(ip(110, 1), "example", &signer.dns_records()).await;

    let msg = message("sluice.example", 1000);
    let header = signer
        .sign(&msg)
        .expect("sign")
        .expect("From domain matches");
    let header_text = String::from_utf8(header.clone()).expect("ascii header");
    assert!(
        header_text.starts_with(
            "DKIM-Signature: v=1; a=rsa-sha256; s=rsa2024; d=sluice.example; c=relaxed/relaxed;"
        ),
        "{header_text}"
    );
    assert!(header_text.ends_with("\r\n"), "{header_text:?}");
    let signed = [header, msg.clone()].concat();
    assert_eq!(signer.signed(&msg).expect("signed").len(), signed.len());

    let results = verify_mail_auth(dns.addr, &signed).await;
    assert_all_pass(&results, 1);

    // A modified body or signed header does not pass: the verifier really checks.
    let mut body = signed.clone();
    let at = body.len() - 10;
    body[at] ^= 0x01;
    let results = verify_mail_auth(dns.addr, &body).await;
    assert!(
        matches!(results[0].0, DkimResult::Neutral(_) | DkimResult::Fail(_)),
        "{results:?}"
    );
    let text = String::from_utf8(signed).expect("ascii");
    let header = text.replace("Subject: DKIM test", "Subject: DKIM best");
    let results = verify_mail_auth(dns.addr, header.as_bytes()).await;
    assert!(matches!(results[0].0, DkimResult::Fail(_)), "{results:?}");
}

#[tokio::test]
async fn ed25519_signature_passes_mail_auth() {
    let dir = tmp();
    let key = gen_ed25519(dir.path(), "ed.pem");
    let signer = Signer::load(&[cfg("sluice.example", "ed2024", &key)], dir.path()).expect("load");
    let txt = signer
        .public_key_txt("sluice.example", "ed2024")
        .expect("txt");
    assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
    let dns = serve_txt(ip(111, 1), "example", &signer.dns_records()).await;

    let signed = signer
        .signed(&message("sluice.example", 1000))
        .expect("sign");
    assert!(signed.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256; s=ed2024;"));
    assert_all_pass(&verify_mail_auth(dns.addr, &signed).await, 1);
}

#[tokio::test]
async fn dual_signature_ed25519_and_rsa_both_pass_with_default_headers() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let rsa = gen_rsa(dir.path(), "rsa.pem", 2048);
    let signer = Signer::load(
        &[
            cfg("sluice.example", "ed", &ed),
            cfg("sluice.example", "rsa", &rsa),
            cfg("other.example", "ed", &ed),
        ],
        dir.path(),
    )
    .expect("load");
    let dns = serve_txt(ip(112, 1), "example", &signer.dns_records()).await;

    let signed = signer
        .signed(&message("sluice.example", 2000))
        .expect("sign");
    let results = verify_mail_auth(dns.addr, &signed).await;
    assert_all_pass(&results, 2);
    for (_, h) in &results {
        let lower: Vec<String> = h.iter().map(|s| s.to_ascii_lowercase()).collect();
        let count = |n: &str| lower.iter().filter(|x| *x == n).count();
        assert_eq!(count("from"), 2, "From over-signed: {h:?}");
        for present in [
            "to",
            "subject",
            "date",
            "message-id",
            "mime-version",
            "content-type",
            "list-unsubscribe",
            "list-unsubscribe-post",
        ] {
            assert_eq!(count(present), 1, "{present} signed once: {h:?}");
        }
        assert_eq!(count("feedback-id"), 0, "absent header not signed: {h:?}");
        assert_eq!(count("x-not-signed"), 0, "{h:?}");
    }
}

#[tokio::test]
async fn explicit_headers_and_pkcs1_rsa_key() {
    let dir = tmp();
    let p8 = gen_rsa(dir.path(), "rsa8.pem", 2048);
    let p1 = dir.path().join("rsa1.pem");
    openssl(&[
        "pkey",
        "-in",
        p8.to_str().expect("utf-8"),
        "-traditional",
        "-out",
        p1.to_str().expect("utf-8"),
    ]);
    let pem = std::fs::read_to_string(&p1).expect("read pkcs1");
    assert!(pem.contains("BEGIN RSA PRIVATE KEY"), "{pem}");

    let a = Signer::load(&[cfg("sluice.example", "s", &p8)], dir.path()).expect("pkcs8");
    let mut c = cfg("sluice.example", "s", Path::new("rsa1.pem")); // relative to base_dir
    c.headers = Some(vec!["from".into(), "subject".into(), "x-absent".into()]);
    let b = Signer::load(&[c], dir.path()).expect("pkcs1");
    assert_eq!(
        a.public_key_txt("sluice.example", "s"),
        b.public_key_txt("sluice.example", "s"),
        "same key in both formats"
    );
    let dns = serve_txt(ip(115, 1), "example", &b.dns_records()).await;
    let results = verify_mail_auth(
        dns.addr,
        &b.signed(&message("sluice.example", 500)).expect("sign"),
    )
    .await;
    assert_all_pass(&results, 1);
    let h: Vec<String> = results[0]
        .1
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    assert_eq!(h, ["subject", "from", "x-absent"], "explicit list as given");
}

#[tokio::test]
async fn wildcard_entry_signs_subdomains_with_parent_domain() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let signer = Signer::load(&[cfg("*.brand.example", "w", &ed)], dir.path()).expect("load");
    assert_eq!(
        signer.dns_records()[0].0,
        "w._domainkey.brand.example",
        "one record for every subdomain"
    );
    assert!(signer.public_key_txt("*.brand.example", "w").is_some());
    assert!(signer.public_key_txt("brand.example", "w").is_some());
    let dns = serve_txt(ip(114, 1), "example", &signer.dns_records()).await;

    let signed = signer
        .signed(&message("news.brand.example", 500))
        .expect("sign");
    assert!(std::str::from_utf8(&signed)
        .expect("ascii")
        .contains("d=brand.example;"));
    assert_all_pass(&verify_mail_auth(dns.addr, &signed).await, 1);
    // The wildcard does not cover the parent itself nor look-alikes.
    assert!(signer
        .sign(&message("brand.example", 100))
        .expect("ok")
        .is_none());
    assert!(signer
        .sign(&message("evilbrand.example", 100))
        .expect("ok")
        .is_none());
}

// ---------------------------------------------------------------------------------------
// Independent verifier

#[test]
fn dkimpy_verifies_rsa_ed25519_and_dual() {
    if !dkimpy_available(true) {
        return;
    }
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let rsa = gen_rsa(dir.path(), "rsa.pem", 2048);
    let only_rsa = Signer::load(&[cfg("sluice.example", "rsa", &rsa)], dir.path()).expect("load");
    let only_ed = Signer::load(&[cfg("sluice.example", "ed", &ed)], dir.path()).expect("load");
    let both = Signer::load(
        &[
            cfg("sluice.example", "ed", &ed),
            cfg("sluice.example", "rsa", &rsa),
        ],
        dir.path(),
    )
    .expect("load");
    let msg = message("sluice.example", 3000);
    for (what, s, n) in [
        ("rsa", &only_rsa, 1),
        ("ed25519", &only_ed, 1),
        ("dual", &both, 2),
    ] {
        let signed = s.signed(&msg).expect("sign");
        let verdicts = verify_dkimpy(&signed, &s.dns_records());
        assert_eq!(verdicts.len(), n, "{what}: {verdicts:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Through an SMTP sink

async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).await.expect("read SMTP reply");
        assert!(n > 0, "SMTP server closed the connection after {all:?}");
        all.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return all;
        }
    }
}

async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: &str) {
    let reply = read_reply(r).await;
    assert!(reply.starts_with(code), "expected {code}, got {reply:?}");
}

/// Minimal SMTP client: one transaction, dot-stuffing the data.
async fn smtp_send(addr: SocketAddr, from: &str, to: &str, data: &[u8]) {
    let stream = TcpStream::connect(addr).await.expect("connect to the sink");
    let (rd, mut w) = stream.into_split();
    let mut r = BufReader::new(rd);
    expect(&mut r, "220").await;
    for (cmd, code) in [
        ("EHLO client.test".to_string(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_string(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .expect("write");
        expect(&mut r, code).await;
    }
    let mut stuffed = Vec::with_capacity(data.len() + 16);
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.first() == Some(&b'.') {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    stuffed.extend_from_slice(b".\r\n");
    w.write_all(&stuffed).await.expect("write data");
    expect(&mut r, "250").await;
    w.write_all(b"QUIT\r\n").await.expect("write");
    expect(&mut r, "221").await;
}

#[tokio::test]
async fn signed_message_verifies_after_smtp_sink() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let rsa = gen_rsa(dir.path(), "rsa.pem", 2048);
    let signer = Signer::load(
        &[
            cfg("sluice.example", "ed", &ed),
            cfg("sluice.example", "rsa", &rsa),
        ],
        dir.path(),
    )
    .expect("load");
    let dns = serve_txt(ip(113, 1), "example", &signer.dns_records()).await;
    let mx = FakeMx::start(ip(113, 2), 0, MxScript::default()).await;

    let signed = signer
        .signed(&message("sluice.example", 5 * 1024))
        .expect("sign");
    smtp_send(
        mx.addr,
        "bounce@sluice.example",
        "rcpt@dest.example",
        &signed,
    )
    .await;
    let txns = mx.wait_transactions(1, Duration::from_secs(10)).await;
    assert_eq!(
        txns[0].data, signed,
        "the sink received the message unchanged"
    );
    assert_all_pass(&verify_mail_auth(dns.addr, &txns[0].data).await, 2);
}

// ---------------------------------------------------------------------------------------
// Errors and matching

#[test]
fn missing_key_file_is_an_error_naming_entry_and_path() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let entries = [
        cfg("sluice.example", "ok", &ed),
        cfg("sluice.example", "gone", Path::new("keys/missing.pem")),
    ];
    let err = Signer::load(&entries, dir.path()).expect_err("missing key");
    assert!(matches!(err, DkimError::KeyRead { .. }), "{err:?}");
    let expected = dir.path().join("keys/missing.pem");
    assert_eq!(err.key_path(), Some(expected.as_path()));
    assert_eq!(err.entry().map(|e| e.index), Some(2));
    let text = err.to_string();
    for part in ["entry 2", "sluice.example", "gone", "missing.pem"] {
        assert!(text.contains(part), "{part} in {text}");
    }
}

#[test]
fn garbage_and_unsupported_keys_are_rejected() {
    let dir = tmp();
    let cases: [(&str, &[u8], &str); 4] = [
        ("text.pem", b"this is not a key\n", "no PEM private key"),
        (
            "bad64.pem",
            b"-----BEGIN PRIVATE KEY-----\nnot*base64!!\n-----END PRIVATE KEY-----\n",
            "",
        ),
        (
            "junk-der.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAECAwQFBgcICQ==\n-----END PRIVATE KEY-----\n",
            "",
        ),
        ("empty.pem", b"", "no PEM private key"),
    ];
    for (file, content, want) in cases {
        let path = dir.path().join(file);
        std::fs::write(&path, content).expect("write");
        let err = Signer::load(&[cfg("sluice.example", "s", &path)], dir.path()).expect_err(file);
        assert!(
            matches!(err, DkimError::KeyInvalid { .. }),
            "{file}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(file) && text.contains(want), "{file}: {text}");
    }
    let ec = dir.path().join("ec.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        ec.to_str().expect("utf-8"),
    ]);
    let err = Signer::load(&[cfg("sluice.example", "s", &ec)], dir.path()).expect_err("EC key");
    assert!(err.to_string().contains("RSA or Ed25519"), "{err}");
}

#[test]
fn rsa_1024_is_refused() {
    let dir = tmp();
    let weak = gen_rsa(dir.path(), "weak.pem", 1024);
    let err = Signer::load(&[cfg("sluice.example", "s", &weak)], dir.path()).expect_err("weak");
    match &err {
        DkimError::KeyTooWeak { bits, .. } => assert_eq!(*bits, 1024),
        other => panic!("expected KeyTooWeak, got {other:?}"),
    }
    assert!(err.to_string().contains(&MIN_RSA_BITS.to_string()), "{err}");
}

#[test]
fn invalid_entries_are_rejected() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let mut no_from = cfg("sluice.example", "s", &ed);
    no_from.headers = Some(vec!["Subject".into()]);
    let bad: Vec<(Vec<DkimCfg>, &str)> = vec![
        (vec![no_from], "must include From"),
        (vec![cfg("bad domain", "s", &ed)], "domain"),
        (vec![cfg("a.*.example", "s", &ed)], "domain"),
        (vec![cfg("sluice.example", "", &ed)], "selector"),
        (
            vec![
                cfg("sluice.example", "s", &ed),
                cfg("Sluice.Example", "s", &ed),
            ],
            "same domain and selector",
        ),
    ];
    for (entries, want) in bad {
        let err = Signer::load(&entries, dir.path()).expect_err(want);
        assert!(matches!(err, DkimError::Config { .. }), "{err:?}");
        assert!(err.to_string().contains(want), "{want} in {err}");
    }
}

#[test]
fn from_matching() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let signer = Signer::load(
        &[
            cfg("sluice.example", "s", &ed),
            cfg("*.brand.example", "w", &ed),
        ],
        dir.path(),
    )
    .expect("load");
    assert!(!signer.is_empty());
    assert!(Signer::default().is_empty());
    assert!(Signer::default()
        .sign(&message("x.example", 10))
        .expect("ok")
        .is_none());

    // No entry for this domain: Ok(None), and `signed` passes the message through.
    let other = message("elsewhere.example", 100);
    assert!(signer.sign(&other).expect("ok").is_none());
    assert_eq!(signer.signed(&other).expect("ok"), other);

    let sub = signer
        .sign(&message("news.brand.example", 100))
        .expect("ok")
        .expect("wildcard matches");
    assert!(String::from_utf8_lossy(&sub).contains("s=w; d=brand.example;"));
    // Case-insensitive From domain.
    assert!(signer
        .sign(&message("SLUICE.Example", 100))
        .expect("ok")
        .is_some());

    let no_from = b"To: a@b.example\r\nSubject: x\r\n\r\nbody\r\n";
    assert!(matches!(signer.sign(no_from), Err(DkimError::NoFromDomain)));
}

// ---------------------------------------------------------------------------------------
// Cost (run: cargo test [--release] --test dkim -- --ignored --nocapture signing_cost)

#[test]
#[ignore]
fn signing_cost() {
    let dir = tmp();
    let ed = gen_ed25519(dir.path(), "ed.pem");
    let rsa = gen_rsa(dir.path(), "rsa.pem", 2048);
    let msg = message("sluice.example", 5 * 1024);
    for (what, key) in [("rsa-2048", &rsa), ("ed25519", &ed)] {
        let signer = Signer::load(&[cfg("sluice.example", "s", key)], dir.path()).expect("load");
        let runs = 200;
        let start = Instant::now();
        for _ in 0..runs {
            let h = signer.sign(&msg).expect("sign");
            assert!(h.is_some());
        }
        let per = start.elapsed() / runs;
        eprintln!(
            "{what}: {per:?} per {} byte message ({} profile)",
            msg.len(),
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
    }
}
