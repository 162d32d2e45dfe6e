//! The command line: `sluice check` and `sluice verp decode`.

use std::process::Command;

fn sluice(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .expect("run sluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const GOOD: &str = "hostname = \"mta.example.com\"\n[verp]\ndomain = \"fb.example.com\"\nprefix = \"b\"\nsecret = \"0123456789abcdef-cli\"\n";

#[test]
fn check_accepts_the_shipped_example_config() {
    let (code, out, err) = sluice(&[
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/sluice.toml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn check_reports_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        format!("{GOOD}[delivery]\nretry = []\nmax_agee = \"5d\"\n"),
    )
    .unwrap();
    let (code, _, err) = sluice(&["check", "--config", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("bad.toml:8") && err.contains("max_agee"),
        "{err}"
    );

    std::fs::write(&p, format!("{GOOD}[delivery]\nretry = []\n")).unwrap();
    let (code, _, err) = sluice(&["check", "--config", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("bad.toml:7: delivery.retry"), "{err}");

    let (code, _, err) = sluice(&["check", "--config", "/nonexistent/sluice.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read"), "{err}");
}

#[test]
fn verp_decode_verifies_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(&p, GOOD).unwrap();
    let v = sluice::verp::Verp::new("fb.example.com", "b", "0123456789abcdef-cli");
    let addr = v.encode(0x0123_4567_89ab_cdef);
    let (code, out, err) = sluice(&["verp", "decode", &addr, "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "0123456789abcdef");
    // uppercased by some relay: still decodes
    let (code, out, _) = sluice(&[
        "verp",
        "decode",
        &addr.to_uppercase(),
        "--config",
        p.to_str().unwrap(),
    ]);
    assert_eq!((code, out.trim()), (0, "0123456789abcdef"));
    // tampered
    let forged = addr.replacen("0123456789abcdef", "0123456789abcdee", 1);
    let (code, _, err) = sluice(&["verp", "decode", &forged, "--config", p.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("forged"), "{err}");
    let (code, _, _) = sluice(&[
        "verp",
        "decode",
        "someone@fb.example.com",
        "--config",
        p.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
}

#[test]
fn bounce_classify_prints_type_and_reason() {
    let (code, out, err) = sluice(&[
        "bounce",
        "classify",
        "550 5.1.1 <x@y.example>: User is unknown",
        "--config",
        "/nonexistent.toml",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "hard");
    assert_eq!(v["reason"], "user_unknown");
    assert_eq!(v["status"], "5.1.1");
    let (code, out, _) = sluice(&["bounce", "classify", "421 4.16.55 [TS01] Messages from 1.2.3.4 temporarily deferred due to excessive user complaints", "--config", "/nonexistent.toml"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["reason"].as_str()),
        (Some("soft"), Some("unreachable"))
    );
    let corpus = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/bounce-corpus/samples/arf-01.eml"
    );
    let (code, out, err) = sluice(&[
        "bounce",
        "classify",
        "--file",
        corpus,
        "--config",
        "/nonexistent.toml",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"complaint\""), "{out}");
}

#[test]
fn check_warns_about_reverse_dns_of_sources() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    // a resolver that does not answer: the check warns, it does not fail
    std::fs::write(
        &p,
        format!("{GOOD}[dns]\nnameservers = [\"127.79.0.1:53\"]\ntimeout = \"1s\"\n[[sources]]\nname = \"ip1\"\nip = \"127.79.0.10\"\nhelo = \"mta1.example.com\"\n"),
    )
    .unwrap();
    let (code, _, err) = sluice(&["check", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning:") && err.contains("ip1"), "{err}");
}
