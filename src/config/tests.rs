use super::*;

const BASE: &str = "hostname = \"mta.example.com\"\n[verp]\ndomain = \"fb.example.com\"\nsecret = \"0123456789abcdef0123\"\n";

#[test]
fn durations() {
    assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
    assert_eq!(parse_duration("5d").unwrap(), Duration::from_secs(432000));
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5w").is_err());
    assert!(parse_duration("s").is_err());
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_str_at(BASE, Path::new("/etc/sluice/sluice.toml")).unwrap();
    assert_eq!(c.delivery.port, 25);
    assert_eq!(c.delivery.max_age.0, Duration::from_secs(5 * 86400));
    assert_eq!(c.intake.max_message_size, 26_214_400);
    assert_eq!(c.spool.path, PathBuf::from("/etc/sluice/spool/sluice.redb"));
}

#[test]
fn unknown_key_names_line_and_key() {
    let text = format!("{BASE}[delivery]\nport = 2525\nretyr = [\"1m\"]\n");
    let e = Config::from_str_at(&text, Path::new("s.toml")).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("s.toml:7"), "{s}");
    assert!(s.contains("retyr"), "{s}");
}

#[test]
fn semantic_errors_are_located() {
    let text = BASE.replace("0123456789abcdef0123", "short");
    let e = Config::from_str_at(&text, Path::new("s.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "s.toml:4: verp.secret: must be at least 16 characters (it signs every VERP address)"
    );
}

#[test]
fn open_exposure_is_refused() {
    let text = format!("{BASE}[listen]\nhttp = \"0.0.0.0:8025\"\nsmtp_allow = [\"0.0.0.0/0\"]\n");
    let e = Config::from_str_at(&text, Path::new("s.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("listen.http"), "{e}");
    assert!(e.contains("whole internet"), "{e}");
}

#[test]
fn cidr() {
    let c = Cidr::parse("127.0.0.0/8").unwrap();
    assert!(c.contains("127.3.4.5".parse().unwrap()));
    assert!(!c.contains("10.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("::1/128")
        .unwrap()
        .contains("::1".parse().unwrap()));
    assert!(Cidr::parse("1.2.3.4/40").is_err());
}
