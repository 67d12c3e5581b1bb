//! The `UsageCounters` conformance suite: exact, atomic windows and slots, checked the same way
//! on every adapter. Every case uses fresh random keys, so one instance serves the whole suite.

use std::time::Duration;

use crate::ports::{Admission, SlotAndCount, SlotClaim, UsageCounters, WindowCount};

const NOW: i64 = 1_800_000_000_000;
const MINUTE: Duration = Duration::from_secs(60);

fn unique(prefix: &str) -> String {
    format!("{prefix}:{}", uuid::Uuid::new_v4().simple())
}

fn admitted(admission: Admission) -> bool {
    admission == Admission::Admitted
}

/// Runs every case. Panics with the case's name on the first broken contract.
pub async fn run_all<C: UsageCounters + ?Sized>(counters: &C) {
    windows(counters).await;
    concurrent_window_hits(counters).await;
    slots(counters).await;
    concurrent_slot_claims(counters).await;
    slot_and_count(counters).await;
}

/// A window admits `limit` actions, refuses the next with the time until it ends without
/// counting it, and opens anew at the first action after it ended.
pub async fn windows<C: UsageCounters + ?Sized>(counters: &C) {
    let key = unique("messages");
    for offset in [0, 10_000, 20_000] {
        let admission = counters
            .count_in_window(&key, 3, MINUTE, NOW + offset)
            .await
            .unwrap();
        assert!(admitted(admission), "windows: action at +{offset} admitted");
    }
    assert_eq!(
        counters
            .count_in_window(&key, 3, MINUTE, NOW + 30_000)
            .await
            .unwrap(),
        Admission::Refused {
            retry_after_ms: 30_000
        },
        "windows: the 4th is refused until the window ends"
    );
    assert_eq!(
        counters
            .count_in_window(&key, 3, MINUTE, NOW + 59_999)
            .await
            .unwrap(),
        Admission::Refused { retry_after_ms: 1 },
        "windows: a refused action is not counted and the window does not move"
    );
    // Another key is not affected.
    let other = unique("messages");
    assert!(
        admitted(
            counters
                .count_in_window(&other, 3, MINUTE, NOW + 30_000)
                .await
                .unwrap()
        ),
        "windows: keys are independent"
    );
    // The window ended at +60 s: the next one is anchored at its first action (+70 s).
    for offset in [70_000, 80_000, 90_000] {
        assert!(
            admitted(
                counters
                    .count_in_window(&key, 3, MINUTE, NOW + offset)
                    .await
                    .unwrap()
            ),
            "windows: a new window admits again (+{offset})"
        );
    }
    assert_eq!(
        counters
            .count_in_window(&key, 3, MINUTE, NOW + 100_000)
            .await
            .unwrap(),
        Admission::Refused {
            retry_after_ms: 30_000
        },
        "windows: the new window ends 60 s after its first action"
    );
}

/// Of many actions at once, exactly `limit` are admitted.
pub async fn concurrent_window_hits<C: UsageCounters + ?Sized>(counters: &C) {
    let key = unique("guests");
    let attempts = (0..10).map(|_| counters.count_in_window(&key, 4, MINUTE, NOW));
    let results = futures::future::join_all(attempts).await;
    let admitted_count = results
        .into_iter()
        .map(|r| r.expect("no store error"))
        .filter(|a| admitted(*a))
        .count();
    assert_eq!(
        admitted_count, 4,
        "concurrent_window_hits: exactly the limit is admitted"
    );
}

/// Slots: `limit` holders at once; a claim past it is refused until a holder releases or
/// expires; claiming a held slot again and releasing a free one both succeed.
pub async fn slots<C: UsageCounters + ?Sized>(counters: &C) {
    let key = unique("turns");
    let claim = |slot: &'static str, now: i64, expires_at: i64| {
        let key = key.clone();
        async move {
            counters
                .claim_slot(&key, slot, 2, now, expires_at)
                .await
                .unwrap()
        }
    };
    assert!(admitted(claim("a", NOW, NOW + 100_000).await), "slots: a");
    assert!(
        admitted(claim("b", NOW + 1, NOW + 50_000).await),
        "slots: b"
    );
    assert_eq!(
        claim("c", NOW + 10_000, NOW + 110_000).await,
        Admission::Refused {
            retry_after_ms: 40_000
        },
        "slots: a third is refused until the oldest-expiring slot frees"
    );
    assert!(
        admitted(claim("a", NOW + 10_000, NOW + 120_000).await),
        "slots: claiming a held slot again is admitted"
    );
    counters.release_slot(&key, "a").await.unwrap();
    counters.release_slot(&key, "a").await.unwrap();
    counters.release_slot(&key, "never-held").await.unwrap();
    counters
        .release_slot(&unique("turns"), "nothing")
        .await
        .expect("slots: releasing on an unknown key succeeds");
    assert!(
        admitted(claim("c", NOW + 20_000, NOW + 120_000).await),
        "slots: a released slot is free"
    );
    assert!(
        !admitted(claim("d", NOW + 20_000, NOW + 120_000).await),
        "slots: full again"
    );
    // b expires at +50 s: a crashed holder stops counting then.
    assert!(
        admitted(claim("d", NOW + 50_000, NOW + 150_000).await),
        "slots: an expired slot is free"
    );
    assert!(
        !admitted(claim("e", NOW + 50_000, NOW + 150_000).await),
        "slots: c and d hold both"
    );
    // Windows and slots of one key are independent.
    assert!(
        admitted(
            counters
                .count_in_window(&key, 1, MINUTE, NOW)
                .await
                .unwrap()
        ),
        "slots: a window of the same key is separate"
    );
}

/// Of many different claims at once, exactly `limit` are admitted.
pub async fn concurrent_slot_claims<C: UsageCounters + ?Sized>(counters: &C) {
    let key = unique("turns");
    let ids: Vec<String> = (0..8).map(|i| format!("turn-{i}")).collect();
    let claims = ids
        .iter()
        .map(|id| counters.claim_slot(&key, id, 3, NOW, NOW + 60_000));
    let admitted_count = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|r| r.expect("no store error"))
        .filter(|a| admitted(*a))
        .count();
    assert_eq!(
        admitted_count, 3,
        "concurrent_slot_claims: exactly the limit is admitted"
    );
}

/// `claim_slot_and_count` takes the slot and counts; with every slot held it counts nothing;
/// with the window full it gives the slot back.
pub async fn slot_and_count<C: UsageCounters + ?Sized>(counters: &C) {
    let (turns, messages) = (unique("turns"), unique("messages"));
    let claim = |slot_id| SlotClaim {
        key: &turns,
        slot_id,
        limit: 1,
        expires_at: NOW + 60_000,
    };
    let window = WindowCount {
        key: &messages,
        limit: 2,
        window: MINUTE,
    };
    let decide = |slot_id| counters.claim_slot_and_count(claim(slot_id), window, NOW);
    assert_eq!(
        decide("a").await.expect("no store error"),
        SlotAndCount::Admitted,
        "slot_and_count: the first is admitted"
    );
    assert!(
        matches!(
            decide("b").await.expect("no store error"),
            SlotAndCount::SlotRefused {
                retry_after_ms: 60_000
            }
        ),
        "slot_and_count: the only slot is held until it expires"
    );
    counters.release_slot(&turns, "a").await.unwrap();
    assert_eq!(
        decide("c").await.expect("no store error"),
        SlotAndCount::Admitted,
        "slot_and_count: the refused one was not counted, so the window still has room"
    );
    counters.release_slot(&turns, "c").await.unwrap();
    assert!(
        matches!(
            decide("d").await.expect("no store error"),
            SlotAndCount::WindowRefused {
                retry_after_ms: 60_000
            }
        ),
        "slot_and_count: the window is full"
    );
    assert!(
        admitted(
            counters
                .claim_slot(&turns, "e", 1, NOW, NOW + 60_000)
                .await
                .unwrap()
        ),
        "slot_and_count: a window's refusal gave its slot back"
    );
}
