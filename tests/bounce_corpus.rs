//! Runs the bounce classifier over the labelled real-world corpus in
//! `../shared/bounce-corpus/` and checks the reason accuracy (≥ 94 %: the held-out set
//! of other MTAs must stay above 90 %, so this one keeps a margin).
//!
//! `BOUNCE_CORPUS_VERBOSE=1` lists the misses; `BOUNCE_CORPUS_DUMP=<file>` writes every
//! verdict as one JSON line.

use std::collections::BTreeMap;
use std::path::Path;

use sluice::bounce::{classify_message, BounceRules};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bounce-corpus");
const MIN_REASON_ACCURACY: f64 = 0.94;

#[test]
fn bounce_corpus_accuracy() {
    let dir = Path::new(CORPUS);
    let labels_path = dir.join("labels.jsonl");
    assert!(
        labels_path.is_file(),
        "bounce corpus missing: expected {} (the labelled corpus lives in ../shared/bounce-corpus next to the crate)",
        labels_path.display()
    );
    let labels = std::fs::read_to_string(&labels_path).expect("read labels.jsonl");
    let rules = BounceRules::builtin();
    // BOUNCE_CORPUS_DUMP=<file>: write every verdict as one JSON line (for analysis).
    let mut dump = std::env::var_os("BOUNCE_CORPUS_DUMP")
        .and_then(|p| std::fs::File::create(p).ok())
        .map(std::io::BufWriter::new);

    let mut total = 0usize;
    let mut reason_ok = 0usize;
    let mut type_ok = 0usize;
    let mut confusion: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (n, line) in labels.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let label: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("labels.jsonl:{}: {e}", n + 1));
        let file = label["file"].as_str().expect("file");
        let want_type = label["type"].as_str().expect("type");
        let want_reason = label["reason"].as_str().expect("reason");
        let raw = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let v = classify_message(&raw, &rules);
        if let Some(out) = dump.as_mut() {
            let row = serde_json::json!({
                "file": file,
                "want": want_reason,
                "want_type": want_type,
                "got": v.reason.as_str(),
                "got_type": v.bounce_type.as_str(),
                "kind": format!("{:?}", v.kind),
                "status": v.status,
                "action": v.action,
                "recipient": v.recipient,
                "envelope": v.original_envelope,
                "diagnostic": v.diagnostic,
            });
            use std::io::Write;
            let _ = writeln!(out, "{row}");
        }
        total += 1;
        if v.bounce_type.as_str() == want_type {
            type_ok += 1;
        }
        if v.reason.as_str() == want_reason {
            reason_ok += 1;
        } else {
            confusion
                .entry((want_reason.to_string(), v.reason.as_str().to_string()))
                .or_default()
                .push(format!(
                    "{file} [{:?} status={:?} diag={:?}]",
                    v.kind,
                    v.status,
                    v.diagnostic
                        .as_deref()
                        .map(|d| d.chars().take(160).collect::<String>())
                ));
        }
    }
    assert!(
        total > 0,
        "no labelled samples in {}",
        labels_path.display()
    );
    let reason_acc = reason_ok as f64 / total as f64;
    let type_acc = type_ok as f64 / total as f64;
    eprintln!("bounce corpus: {total} samples");
    eprintln!(
        "reason accuracy: {reason_ok}/{total} = {:.1} %",
        reason_acc * 100.0
    );
    eprintln!(
        "type accuracy:   {type_ok}/{total} = {:.1} %",
        type_acc * 100.0
    );
    eprintln!("confusion (expected -> got: count):");
    for ((want, got), files) in &confusion {
        eprintln!("  {want} -> {got}: {}", files.len());
        if std::env::var_os("BOUNCE_CORPUS_VERBOSE").is_some() {
            for f in files {
                eprintln!("      {f}");
            }
        }
    }
    assert!(
        reason_acc >= MIN_REASON_ACCURACY,
        "reason accuracy {:.1} % is below {:.0} %",
        reason_acc * 100.0,
        MIN_REASON_ACCURACY * 100.0
    );
}
