//! The CDR store against both databases it supports: a real SQLite file and a real
//! PostgreSQL server (started by `.ci/postgres`). Every scenario runs on both.

mod common;

use common::Scratch;
use std::time::Duration;

use signaling::cdr::{
    CDR_COLUMNS, CDR_MEDIA_COLUMNS, Cdr, CdrMedia, CdrWriter, MIGRATIONS, OpenCall, Store, Target,
    Value, WriterMetrics, WriterOptions,
};

fn sqlite(dir: &Scratch) -> Target {
    Target::Sqlite(dir.join("cdr.db"))
}

fn postgres(name: &str) -> Target {
    Target::Postgres(common::postgres_database(name))
}

fn metrics() -> WriterMetrics {
    WriterMetrics {
        queued: prometheus::IntGauge::new("q", "q").unwrap(),
        written: prometheus::IntCounter::new("w", "w").unwrap(),
        errors: prometheus::IntCounter::new("e", "e").unwrap(),
        spooled: prometheus::IntCounter::new("s", "s").unwrap(),
    }
}

fn call(id: &str, start: i64) -> Cdr {
    Cdr {
        call_id: id.into(),
        b_call_id: format!("b-{id}"),
        caller: "alice".into(),
        callee: "bob".into(),
        start_time_ms: start,
        answer_time_ms: Some(start + 1000),
        end_time_ms: start + 61_000,
        duration_ms: 60_000,
        disposition: "answered".into(),
        sip_status: 200,
        hangup_side: "caller".into(),
        media_mode: "relay".into(),
        media_node: Some("mp-1".into()),
        caller_audio_packets: 3000,
        callee_audio_packets: 2998,
        caller_audio_bytes: 516_000,
        callee_audio_bytes: 515_656,
        total_bytes_relayed: 1_031_656,
        media_verdict: "ok".into(),
        media_diagnosis: "both legs sent audio".into(),
        end_reason: "BYE from the caller".into(),
        media_address: Some("203.0.113.5".into()),
        media: vec![
            CdrMedia {
                leg: "caller".into(),
                kind: "audio".into(),
                direction: "sendrecv".into(),
                local_rtp_port: 30000,
                local_rtcp_port: 30001,
                sdp_rtp_address: "10.0.0.7:17616".into(),
                latched_rtp_source: "198.51.100.9:4000".into(),
                rtp_packets_in: 3000,
                jitter_ms: 1.25,
                first_packet_time: Some(start + 1100),
                ..CdrMedia::default()
            },
            CdrMedia {
                leg: "callee".into(),
                kind: "audio".into(),
                rtp_packets_in: 2998,
                ..CdrMedia::default()
            },
        ],
        ..Cdr::default()
    }
}

fn column<'a>(names: &[String], row: &'a [Value], name: &str) -> &'a Value {
    let index = names.iter().position(|n| n == name).expect(name);
    &row[index]
}

fn schema_from_empty(target: Target) {
    let mut store = Store::open(&target).unwrap();
    assert_eq!(store.version().unwrap(), MIGRATIONS.len());
    // Opening again changes nothing.
    drop(store);
    let mut store = Store::open(&target).unwrap();
    assert_eq!(store.version().unwrap(), MIGRATIONS.len());
    let (names, rows) = store.rows("cdr", 0, i64::MAX).unwrap();
    assert_eq!(names, CDR_COLUMNS);
    assert!(rows.is_empty());
    let (names, _) = store.rows("cdr_media", 0, i64::MAX).unwrap();
    assert_eq!(names, CDR_MEDIA_COLUMNS);
}

fn migrates_from_the_previous_version(target: Target) {
    // A database as the first release left it, with one row.
    let mut store = match &target {
        Target::Sqlite(path) => Store::Sqlite(rusqlite::Connection::open(path).unwrap()),
        Target::Postgres(url) => Store::Postgres(Box::new(
            postgres::Client::connect(url, postgres::NoTls).unwrap(),
        )),
    };
    store.migrate_to(1).unwrap();
    assert_eq!(store.version().unwrap(), 1);
    let insert = "INSERT INTO cdr (call_id, b_call_id, caller, callee, start_time, answer_time,
        end_time, duration_ms, disposition, sip_status, hangup_side, media_mode, media_node,
        caller_audio_packets, callee_audio_packets, caller_audio_bytes, callee_audio_bytes,
        total_bytes_relayed, recording_packets, has_recording, recording_path, media_verdict,
        media_diagnosis) VALUES ('old', 'b-old', 'a', 'b', 5, 6, 7, 1, 'answered', 200, 'caller',
        'relay', 'n', 10, 11, 1720, 1892, 3612, 0, false, NULL, 'ok', 'fine')";
    match &mut store {
        Store::Sqlite(c) => {
            c.execute_batch(insert).unwrap();
        }
        Store::Postgres(c) => {
            c.batch_execute(insert).unwrap();
        }
    }
    drop(store);
    let mut store = Store::open(&target).unwrap();
    assert_eq!(store.version().unwrap(), MIGRATIONS.len());
    let (names, rows) = store.rows("cdr", 0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(column(&names, &rows[0], "call_id"), &Value::from("old"));
    assert_eq!(
        column(&names, &rows[0], "caller_audio_packets"),
        &Value::Int(10)
    );
    assert_eq!(column(&names, &rows[0], "end_reason"), &Value::from(""));
    assert_eq!(column(&names, &rows[0], "media_address"), &Value::Null);
    // And the new tables take rows.
    assert!(store.insert(&call("new", 100)).unwrap());
    assert_eq!(store.rows("cdr_media", 0, i64::MAX).unwrap().1.len(), 2);
}

fn rows_round_trip_and_inserts_are_idempotent(target: Target) {
    let mut store = Store::open(&target).unwrap();
    let cdr = call("c1@example", 1_700_000_000_000);
    assert!(store.insert(&cdr).unwrap());
    assert!(!store.insert(&cdr).unwrap(), "a second insert is a no-op");
    let mut other = call("c2@example", 1_700_000_100_000);
    other.answer_time_ms = None;
    other.media_node = None;
    other.media.clear();
    assert!(store.insert(&other).unwrap());
    let (names, rows) = store.rows("cdr", 0, i64::MAX).unwrap();
    assert_eq!(rows.len(), 2);
    let first = &rows[0];
    assert_eq!(column(&names, first, "call_id"), &Value::from("c1@example"));
    assert_eq!(column(&names, first, "sip_status"), &Value::Int(200));
    assert_eq!(
        column(&names, first, "has_recording"),
        &bool_value(&target, false)
    );
    assert_eq!(
        column(&names, first, "answer_time"),
        &Value::Int(1_700_000_001_000)
    );
    assert_eq!(column(&names, &rows[1], "answer_time"), &Value::Null);
    assert_eq!(column(&names, &rows[1], "media_node"), &Value::Null);
    let (names, media) = store.rows("cdr_media", 0, i64::MAX).unwrap();
    assert_eq!(media.len(), 2, "only the first call has media rows, once");
    assert_eq!(column(&names, &media[0], "leg"), &Value::from("caller"));
    assert_eq!(
        column(&names, &media[0], "latched_rtp_source"),
        &Value::from("198.51.100.9:4000")
    );
    assert_eq!(column(&names, &media[0], "jitter_ms"), &Value::Real(1.25));
    // The date range is half open on start_time.
    assert_eq!(
        store
            .rows("cdr", 1_700_000_000_000, 1_700_000_100_000)
            .unwrap()
            .1
            .len(),
        1
    );
}

/// SQLite has no boolean type: it stores 0 and 1.
fn bool_value(target: &Target, value: bool) -> Value {
    match target {
        Target::Sqlite(_) => Value::Int(i64::from(value)),
        Target::Postgres(_) => Value::Bool(value),
    }
}

fn spool_is_replayed_at_start(target: Target, name: &str) {
    let dir = Scratch::new(&format!("cdr-spool-{name}"));
    let spool = dir.join("cdr.spool");
    let lines: Vec<String> = ["s1", "s2"]
        .iter()
        .enumerate()
        .map(|(i, id)| serde_json::to_string(&call(id, 10 + i as i64)).unwrap())
        .collect();
    std::fs::write(&spool, lines.join("\n") + "\n").unwrap();
    let writer = CdrWriter::start(
        target.clone(),
        WriterOptions {
            queue_limit: 100,
            spool: spool.clone(),
            close_grace: Duration::from_secs(1),
            instance: "test-host/127.0.0.1:5060".into(),
        },
        metrics(),
    )
    .unwrap();
    writer.write(call("live", 50));
    assert!(writer.flush(Duration::from_secs(10)));
    writer.close();
    let mut store = Store::open(&target).unwrap();
    let (names, rows) = store.rows("cdr", 0, i64::MAX).unwrap();
    let ids: Vec<&Value> = rows.iter().map(|r| column(&names, r, "call_id")).collect();
    assert_eq!(
        ids,
        [&Value::from("s1"), &Value::from("s2"), &Value::from("live")]
    );
    assert!(!spool.exists(), "the spool is gone once replayed");
    assert!(!spool.with_extension("replaying").exists());
}

fn open_call(id: &str, start: i64) -> OpenCall {
    OpenCall {
        call_id: id.into(),
        b_call_id: format!("b-{id}"),
        caller: "alice".into(),
        callee: "bob".into(),
        start_time_ms: start,
        answer_time_ms: start + 1000,
        media_mode: "relay".into(),
        media_node: Some("mp-1".into()),
        media_endpoint: Some("http://10.0.1.11:50051".into()),
        relayed: true,
        media_address: Some("203.0.113.5".into()),
        transferred_from: None,
    }
}

/// A call that is up is kept until its CDR is written; what a stopped process left is found
/// by its successor (same instance, at once) and by others (once its heartbeat is stale).
fn open_calls_outlive_their_process(target: Target) {
    let mut store = Store::open(&target).unwrap();
    let mine = "host-a/10.0.0.1:5060";
    let other = "host-b/10.0.0.2:5060";
    store
        .keep_open(mine, &open_call("up-1", 1_000), 2_000)
        .unwrap();
    store
        .keep_open(mine, &open_call("up-2", 1_500), 2_000)
        .unwrap();
    store
        .keep_open(other, &open_call("theirs", 1_200), 2_000)
        .unwrap();
    store.alive(other, 4_000).unwrap();
    // Kept again (the media moved): one record, the newer one.
    let mut moved = open_call("up-2", 1_500);
    moved.media_node = Some("mp-2".into());
    store.keep_open(mine, &moved, 3_000).unwrap();
    // up-1 ends normally: its CDR is written and its open record goes with it.
    assert!(store.insert(&call("up-1", 1_000)).unwrap());
    store.alive(mine, 9_000).unwrap();
    // The successor of `mine` finds its one call left, alive at the last heartbeat; the
    // other instance's call is not stale yet.
    let found = store.orphans(mine, 1_000).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].call, moved);
    assert_eq!(found[0].alive_at_ms, 9_000);
    assert_eq!(found[0].instance, mine);
    // Once its heartbeat is old, another instance's call is an orphan too, ended at that
    // instance's last heartbeat.
    let found = store.orphans(mine, 5_000).unwrap();
    assert_eq!(found[0].alive_at_ms, 4_000);
    assert_eq!(found[0].instance, other);
    let ids: Vec<&str> = found.iter().map(|o| o.call.call_id.as_str()).collect();
    assert_eq!(ids, ["theirs", "up-2"]);
    // Completing them (their CDRs written) leaves nothing open.
    for orphan in found {
        let mut row = call(&orphan.call.call_id, orphan.call.start_time_ms);
        row.end_time_ms = orphan.alive_at_ms;
        assert!(store.insert(&row).unwrap());
    }
    assert!(store.orphans(mine, i64::MAX).unwrap().is_empty());
    // A CDR written twice still closes the record (the second insert writes nothing).
    store
        .keep_open(mine, &open_call("twice", 7_000), 8_000)
        .unwrap();
    assert!(store.insert(&call("twice", 7_000)).unwrap());
    store
        .keep_open(mine, &open_call("twice", 7_000), 8_000)
        .unwrap();
    assert!(!store.insert(&call("twice", 7_000)).unwrap());
    assert!(store.orphans(mine, i64::MAX).unwrap().is_empty());
}

#[test]
fn sqlite_open_calls_outlive_their_process() {
    let dir = Scratch::new("cdr-store-open");
    open_calls_outlive_their_process(sqlite(&dir));
}

#[test]
fn postgres_open_calls_outlive_their_process() {
    open_calls_outlive_their_process(postgres("open"));
}

#[test]
fn sqlite_schema_from_empty() {
    let dir = Scratch::new("cdr-store-empty");
    schema_from_empty(sqlite(&dir));
}

#[test]
fn postgres_schema_from_empty() {
    schema_from_empty(postgres("empty"));
}

#[test]
fn sqlite_migrates_from_the_previous_version() {
    let dir = Scratch::new("cdr-store-previous");
    migrates_from_the_previous_version(sqlite(&dir));
}

#[test]
fn postgres_migrates_from_the_previous_version() {
    migrates_from_the_previous_version(postgres("previous"));
}

#[test]
fn sqlite_rows_round_trip_and_inserts_are_idempotent() {
    let dir = Scratch::new("cdr-store-roundtrip");
    rows_round_trip_and_inserts_are_idempotent(sqlite(&dir));
}

#[test]
fn postgres_rows_round_trip_and_inserts_are_idempotent() {
    rows_round_trip_and_inserts_are_idempotent(postgres("roundtrip"));
}

#[test]
fn sqlite_spool_is_replayed_at_start() {
    let dir = Scratch::new("cdr-store-spool");
    spool_is_replayed_at_start(sqlite(&dir), "sqlite");
}

#[test]
fn postgres_spool_is_replayed_at_start() {
    spool_is_replayed_at_start(postgres("spool"), "postgres");
}

#[test]
fn a_database_outage_queues_cdrs_and_loses_none() {
    let url = common::postgres_database("outage");
    let gate = common::Gate::new(common::postgres_address(&url));
    let target = Target::Postgres(gate.url(&url));
    let dir = Scratch::new("cdr-spool-outage");
    let spool = dir.join("cdr.spool");
    let metrics = metrics();
    let writer = CdrWriter::start(
        target.clone(),
        WriterOptions {
            queue_limit: 100,
            spool: spool.clone(),
            close_grace: Duration::from_secs(1),
            instance: "test-host/127.0.0.1:5060".into(),
        },
        metrics.clone(),
    )
    .unwrap();
    writer.write(call("before", 1));
    assert!(writer.flush(Duration::from_secs(10)));
    gate.close();
    for i in 0..5 {
        writer.write(call(&format!("during-{i}"), 10 + i));
    }
    assert!(
        !writer.flush(Duration::from_millis(1500)),
        "nothing can be written while the database is cut off"
    );
    assert_eq!(metrics.queued.get(), 5);
    assert!(metrics.errors.get() >= 1);
    // What waits is journaled beside the spool (a kill now would lose nothing).
    let journal = dir.join("cdr.queue");
    let journaled = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(journaled.lines().count(), 5, "{journaled}");
    gate.open();
    assert!(
        writer.flush(Duration::from_secs(20)),
        "the queue drains once the database is back"
    );
    assert_eq!(metrics.queued.get(), 0);
    assert!(!journal.exists(), "the journal goes with the queue");
    // Cut off again and shut down: the rest goes to the spool, and the next start writes it.
    gate.close();
    writer.write(call("at-shutdown", 100));
    writer.close();
    assert_eq!(metrics.spooled.get(), 1);
    let spooled = std::fs::read_to_string(&spool).unwrap();
    assert!(spooled.contains("\"at-shutdown\""), "{spooled}");
    gate.open();
    let writer = CdrWriter::start(
        target.clone(),
        WriterOptions {
            queue_limit: 100,
            spool: spool.clone(),
            close_grace: Duration::from_secs(1),
            instance: "test-host/127.0.0.1:5060".into(),
        },
        metrics.clone(),
    )
    .unwrap();
    assert!(writer.flush(Duration::from_secs(10)));
    writer.close();
    let mut store = Store::open(&Target::Postgres(url)).unwrap();
    let (names, rows) = store.rows("cdr", 0, i64::MAX).unwrap();
    let ids: Vec<String> = rows
        .iter()
        .map(|r| match column(&names, r, "call_id") {
            Value::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ids,
        [
            "before",
            "during-0",
            "during-1",
            "during-2",
            "during-3",
            "during-4",
            "at-shutdown"
        ]
    );
    assert_eq!(store.rows("cdr_media", 0, i64::MAX).unwrap().1.len(), 14);
}

/// The durable record of a call answered while the database is down is written once it is
/// back (a crash after that still gets the call its row); a call that ends before that needs
/// none: its row closes it.
#[test]
fn a_call_answered_during_an_outage_gets_its_durable_record_when_the_database_is_back() {
    let url = common::postgres_database("open_outage");
    let gate = common::Gate::new(common::postgres_address(&url));
    let dir = Scratch::new("cdr-open-outage");
    let metrics = metrics();
    let instance = "test-host/127.0.0.1:5062";
    let writer = CdrWriter::start(
        Target::Postgres(gate.url(&url)),
        WriterOptions {
            queue_limit: 100,
            spool: dir.join("cdr.spool"),
            close_grace: Duration::from_secs(1),
            instance: instance.into(),
        },
        metrics.clone(),
    )
    .unwrap();
    assert!(writer.flush(Duration::from_secs(10)));
    gate.close();
    writer.open(open_call("up-during", 5_000));
    writer.open(open_call("ended-during", 6_000));
    writer.write(call("ended-during", 6_000));
    std::thread::sleep(Duration::from_millis(1500));
    let mut direct = Store::open(&Target::Postgres(url.clone())).unwrap();
    assert!(
        direct.orphans(instance, 0).unwrap().is_empty(),
        "nothing reached the database while it was cut off"
    );
    gate.open();
    assert!(
        common::eventually(Duration::from_secs(20), || {
            direct
                .orphans(instance, 0)
                .unwrap()
                .iter()
                .any(|orphan| orphan.call.call_id == "up-during")
        }),
        "the record of the call that is up was written once the database came back"
    );
    assert!(writer.flush(Duration::from_secs(10)));
    let open: Vec<String> = direct
        .orphans(instance, 0)
        .unwrap()
        .into_iter()
        .map(|orphan| orphan.call.call_id)
        .collect();
    assert_eq!(
        open,
        ["up-during"],
        "the ended call has its row, not a record"
    );
    assert_eq!(direct.rows("cdr", 0, i64::MAX).unwrap().1.len(), 1);
    writer.close();
}

/// Another instance whose heartbeat looks a minute old by this host's clock is not taken for
/// dead while its heartbeat still moves (its host's clock is behind): its calls are left to
/// it. Once it stops, they are completed.
#[test]
fn an_instance_whose_clock_is_behind_keeps_its_calls() {
    let dir = Scratch::new("cdr-skewed-clock");
    let target = sqlite(&dir);
    let behind = "host-behind/10.0.0.9:5060";
    let hour_ago = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        now - 3_600_000
    };
    let mut store = Store::open(&target).unwrap();
    store
        .keep_open(behind, &open_call("theirs", hour_ago - 10_000), hour_ago)
        .unwrap();
    // The other instance lives on, its clock an hour behind ours: it beats every 500 ms.
    let beating = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let heart = {
        let (target, beating) = (target.clone(), beating.clone());
        std::thread::spawn(move || {
            let mut store = Store::open(&target).unwrap();
            let mut n = 0;
            while beating.load(std::sync::atomic::Ordering::Relaxed) {
                n += 500;
                store.alive(behind, hour_ago + n).unwrap();
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    let start = |name: &str| {
        CdrWriter::start(
            target.clone(),
            WriterOptions {
                queue_limit: 100,
                spool: dir.join(&format!("{name}.spool")),
                close_grace: Duration::from_secs(1),
                instance: format!("host-a/{name}"),
            },
            metrics(),
        )
        .unwrap()
    };
    let writer = start("first");
    assert!(
        writer.orphans(Duration::from_secs(15)).is_empty(),
        "a live instance's call was taken for an orphan"
    );
    writer.close();
    // It stops: the same age, and now it does not move.
    beating.store(false, std::sync::atomic::Ordering::Relaxed);
    heart.join().unwrap();
    let writer = start("second");
    let orphans = writer.orphans(Duration::from_secs(15));
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].0.call_id, "theirs");
    writer.close();
}

#[test]
fn a_full_queue_overflows_to_the_spool_not_to_nowhere() {
    let url = common::postgres_database("overflow");
    let gate = common::Gate::new(common::postgres_address(&url));
    let dir = Scratch::new("cdr-spool-overflow");
    let spool = dir.join("cdr.spool");
    gate.close();
    let metrics = metrics();
    // Unreachable at start: the writer starts anyway and queues.
    let writer = CdrWriter::start(
        Target::Postgres(gate.url(&url)),
        WriterOptions {
            queue_limit: 2,
            spool: spool.clone(),
            close_grace: Duration::from_millis(200),
            instance: "test-host/127.0.0.1:5060".into(),
        },
        metrics.clone(),
    )
    .unwrap();
    for i in 0..5 {
        writer.write(call(&format!("c{i}"), i));
    }
    assert!(common::eventually(Duration::from_secs(5), || metrics
        .spooled
        .get()
        == 3));
    writer.close();
    let lines = std::fs::read_to_string(&spool).unwrap();
    assert_eq!(lines.lines().count(), 5, "3 overflowed, 2 at shutdown");
}

#[test]
fn a_wrong_password_or_database_stops_the_start() {
    let server = common::postgres_server();
    let (base, _) = server.rsplit_once('/').unwrap();
    let error = Store::open(&Target::Postgres(format!("{base}/no_such_database")))
        .err()
        .expect("fails");
    assert!(!error.transient, "{error}");
    assert!(error.message.contains("no_such_database"), "{error}");
    // Nobody listening is an outage, not a configuration error.
    let error = Store::open(&Target::Postgres(
        "postgres://postgres@127.0.0.1:1/x?connect_timeout=1".into(),
    ))
    .err()
    .expect("fails");
    assert!(error.transient, "{error}");
}
