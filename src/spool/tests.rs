//! Spool unit tests.
use super::*;

#[test]
fn a_queued_delivery_stays_small() {
    // what campaign_1m's memory figure rests on: grow it only on purpose
    assert!(std::mem::size_of::<Delivery>() <= 96);
}

fn delivery(sp: &Spool, body_id: u64, rcpt: &str) -> Delivery {
    Delivery {
        id: sp.next_id(),
        body_id,
        recipient: rcpt.into(),
        meta: Arc::new(Meta {
            campaign: Some("c".into()),
            ..Meta::default()
        }),
        created_ms: 1,
        expires_ms: u64::MAX,
        attempts: 0,
        next_ms: 0,
        extra: None,
    }
}

#[tokio::test]
async fn inject_finish_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let sp = Spool::open(&path, Clock::System, 86_400_000).unwrap();
    let body_id = sp.next_id();
    let a = delivery(&sp, body_id, "a@x.test");
    let b = delivery(&sp, body_id, "b@x.test");
    assert!(b.id > a.id);
    sp.inject(
        body_id,
        Arc::new(b"hello".to_vec()),
        &[a.clone(), b.clone()],
    )
    .await
    .unwrap();
    assert_eq!(sp.body(body_id).unwrap().as_slice(), b"hello");
    sp.finish(&a, FinalState::Delivered).await.unwrap();
    assert!(
        matches!(sp.lookup(a.id).unwrap(), Some(Lookup::Finished(f)) if f.state == FinalState::Delivered)
    );
    let mut b2 = b.clone();
    b2.attempts = 3;
    sp.update(&b2).await.unwrap();
    sp.close();
    drop(sp);

    let sp = Spool::open(&path, Clock::System, 86_400_000).unwrap();
    let active = sp.load_active().unwrap();
    assert_eq!(active, vec![b2.clone()]);
    assert_eq!(sp.body(body_id).unwrap().as_slice(), b"hello");
    sp.finish(&b2, FinalState::Bounced).await.unwrap();
    assert!(matches!(sp.body(body_id), Err(SpoolError::MissingBody(_))));
    assert!(sp.next_id() > b2.id);
    sp.close();
}

#[tokio::test]
async fn concurrent_injections_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let sp = Spool::open(&dir.path().join("s.redb"), Clock::System, 86_400_000).unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        let sp = sp.clone();
        handles.push(tokio::spawn(async move {
            let body_id = sp.next_id();
            let d = delivery(&sp, body_id, &format!("r{i}@x.test"));
            sp.inject(body_id, Arc::new(vec![b'x'; 100]), &[d]).await
        }));
    }
    for h in handles {
        h.await.unwrap().unwrap();
    }
    assert_eq!(sp.load_active().unwrap().len(), 200);
    // group commit: far fewer fsyncs than requests (plus the table-creation commit)
    assert!(sp.commits() < 200, "commits = {}", sp.commits());
    sp.close();
}
