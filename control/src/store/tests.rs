//! The store's behaviour, the same for both back-ends: every test here runs against SQLite
//! (in memory) and against a real PostgreSQL started by the test support
//! (`tapwire_tests::pg`), which fails without PostgreSQL unless `TAPWIRE_SKIP_POSTGRES` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::json;
use tapwire_api_types::control::Role;
use tapwire_api_types::probe::Encapsulation;
use tapwire_tests::pg::Pg;

use super::postgres::PgStore;
use super::*;

/// A fresh PostgreSQL database (on the process's shared server) and its URL; `None` where
/// PostgreSQL is not installed.
pub(crate) fn pg_url(tag: &str) -> Option<String> {
    let pg = Pg::shared()?;
    Some(pg.url(&pg.database(tag)))
}

/// A database for one test: an SQLite file in a directory of its own, or a fresh PostgreSQL
/// database. [`Backend::open`] opens it (again: several collectors may share it).
pub(crate) struct Backend {
    pub(crate) location: Location,
    /// Holds the SQLite file; removed with the backend.
    pub(crate) dir: tapwire_tests::TempDir,
}

impl Backend {
    pub(crate) fn sqlite(tag: &str) -> Backend {
        let dir = tapwire_tests::TempDir::new(tag);
        Backend {
            location: Location::Sqlite(dir.join("c.db")),
            dir,
        }
    }

    pub(crate) fn postgres(tag: &str) -> Option<Backend> {
        Some(Backend {
            location: Location::Postgres(pg_url(tag)?),
            dir: tapwire_tests::TempDir::new(tag),
        })
    }

    pub(crate) fn open(&self) -> Box<dyn Store> {
        open(&self.location).unwrap()
    }
}

/// Two tests from one body: `NAME::sqlite` and `NAME::postgres` (skipped only under
/// `TAPWIRE_SKIP_POSTGRES`). The body is a function of the [`Backend`].
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sqlite() {
                let body: fn($crate::store::tests::Backend) = $body;
                body($crate::store::tests::Backend::sqlite(stringify!($name)));
            }

            #[test]
            fn postgres() {
                let body: fn($crate::store::tests::Backend) = $body;
                if let Some(b) = $crate::store::tests::Backend::postgres(stringify!($name)) {
                    body(b);
                }
            }
        }
    };
}

fn session(name: &str, id: u32) -> StoredSession {
    StoredSession {
        name: name.into(),
        encap: Encapsulation::ErspanIii,
        mirror_id: id,
        enabled: true,
        filter: Some("tcp".into()),
        files: Some(json!({ "rotate": { "size": "1GiB" } })),
        tap: None,
        created: "c".into(),
        updated: "u".into(),
        pin: None,
        owner: Some("a".into()),
    }
}

fn collector(name: &str, incarnation: &str, until: i64) -> StoredCollector {
    StoredCollector {
        name: name.into(),
        incarnation: incarnation.into(),
        advertise: Some("10.0.0.1".into()),
        api_url: Some("https://10.0.0.1:9760".into()),
        version: "0.1.0".into(),
        started_ns: 1,
        heartbeat_ns: 1,
        lease_until_ns: until,
        load: Load::default(),
    }
}

both_backends!(rows_round_trip, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    tx.put_session(&session("web", 7)).unwrap();
    let mut pinned = session("db", 8);
    pinned.pin = Some("b".into());
    pinned.owner = Some("b".into());
    pinned.enabled = false;
    tx.put_session(&pinned).unwrap();
    tx.commit().unwrap();
    let mut tx = store.begin().unwrap();
    let all = tx.sessions().unwrap();
    assert_eq!(all, vec![pinned.clone(), session("web", 7)]);
    let mut ids = tx.used_mirror_ids().unwrap();
    ids.sort();
    assert_eq!(ids, [7, 8]);
    tx.set_session_owner("web", Some("c")).unwrap();
    assert_eq!(
        tx.session("web").unwrap().unwrap().owner.as_deref(),
        Some("c")
    );
    tx.set_session_owner("web", None).unwrap();
    assert_eq!(tx.session("web").unwrap().unwrap().owner, None);
    // Probes, flows and the flow set's version.
    tx.ensure_probe("h1", 4, Some(1000)).unwrap();
    tx.ensure_probe("h1", 9, None).unwrap();
    let p = tx.probe("h1").unwrap().unwrap();
    assert_eq!(
        (p.max_flows, p.max_pps, p.flowset_version),
        (4, Some(1000), 0)
    );
    let id = tx
        .insert_flow(&StoredFlow {
            id: 0,
            probe: "h1".into(),
            name: "eth0".into(),
            session: "web".into(),
            enabled: true,
            spec: json!({ "interface": "eth0" }),
            created: "c".into(),
            updated: "u".into(),
        })
        .unwrap();
    assert!(id > 0);
    assert_eq!(
        tx.flow(id).unwrap().unwrap().spec,
        json!({ "interface": "eth0" })
    );
    assert!(tx.set_flowset("h1", &json!([{ "name": "eth0" }])).unwrap());
    assert!(!tx.set_flowset("h1", &json!([{ "name": "eth0" }])).unwrap());
    assert_eq!(tx.probe("h1").unwrap().unwrap().flowset_version, 1);
    tx.commit().unwrap();
    // A dropped transaction leaves nothing.
    let mut tx = store.begin().unwrap();
    tx.delete_flow(id).unwrap();
    drop(tx);
    assert!(store.begin().unwrap().flow(id).unwrap().is_some());
});

both_backends!(audit_rows_name_the_collector_that_served_them, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    for collector in [Some("a"), None] {
        tx.audit(&AuditRow {
            at: "t",
            token: "alice",
            role: Role::Operator,
            action: "session.create",
            target: "web",
            detail: &json!({ "x": 1 }),
            collector,
        })
        .unwrap();
    }
    let rows = tx.list_audit(0, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].collector.as_deref(), Some("a"));
    assert_eq!(rows[1].collector, None);
    assert_eq!(rows[0].detail, json!({ "x": 1 }));
    assert_eq!(tx.list_audit(rows[0].id, 10).unwrap().len(), 1);
});

both_backends!(a_lease_is_renewed_only_by_its_own_incarnation, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    tx.put_collector(&collector("a", "one", 100)).unwrap();
    let beat = |inc| Heartbeat {
        name: "a",
        incarnation: inc,
        at_ns: 50,
        lease_until_ns: 200,
        load: Load {
            pps: 12.5,
            packets: 1000,
            lost: 3,
        },
    };
    assert!(tx.heartbeat(&beat("one")).unwrap());
    assert!(!tx.heartbeat(&beat("two")).unwrap());
    let c = tx.collectors().unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].heartbeat_ns, c[0].lease_until_ns), (50, 200));
    assert_eq!(c[0].load, beat("one").load);
    // Taken over: the old incarnation can no longer renew.
    tx.put_collector(&collector("a", "two", 300)).unwrap();
    assert!(!tx.heartbeat(&beat("one")).unwrap());
    assert_eq!(tx.collectors().unwrap()[0].incarnation, "two");
});

both_backends!(the_change_counter_counts_commits_only, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    assert!(tx.lock_fleet(true).unwrap());
    assert_eq!(tx.fleet_version().unwrap(), 0);
    assert_eq!(tx.bump_fleet_version().unwrap(), 1);
    drop(tx);
    let mut tx = store.begin().unwrap();
    assert_eq!(tx.fleet_version().unwrap(), 0);
    assert_eq!(tx.bump_fleet_version().unwrap(), 1);
    assert_eq!(tx.bump_fleet_version().unwrap(), 2);
    tx.commit().unwrap();
    assert_eq!(store.begin().unwrap().fleet_version().unwrap(), 2);
});

fn file(collector: &str, session: &str, path: &str, first: i64, last: i64) -> CatalogFile {
    CatalogFile {
        collector: collector.into(),
        session: session.into(),
        path: path.into(),
        first_ns: Some(first),
        last_ns: Some(last),
        packets: 10,
        bytes: 1000,
        state: FileState::Closed,
        updated_ns: last,
    }
}

both_backends!(the_catalog_answers_which_files_overlap_a_time_range, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    tx.catalog_put(&file("a", "web", "/c/web_1.pcapng", 100, 200))
        .unwrap();
    tx.catalog_put(&file("b", "web", "/c/web_2.pcapng", 300, 400))
        .unwrap();
    tx.catalog_put(&file("a", "db", "/c/db_1.pcapng", 100, 400))
        .unwrap();
    let mut open = file("b", "web", "/c/web_3.pcapng", 500, 500);
    open.state = FileState::Open;
    tx.catalog_put(&open).unwrap();
    let paths = |v: Vec<CatalogFile>| -> Vec<String> { v.into_iter().map(|f| f.path).collect() };
    assert_eq!(
        paths(tx.catalog_range("web", 150, 350).unwrap()),
        ["/c/web_1.pcapng", "/c/web_2.pcapng"]
    );
    assert_eq!(
        paths(tx.catalog_range("web", 201, 299).unwrap()),
        Vec::<String>::new()
    );
    // An open file reaches to now, whatever its last packet so far.
    assert_eq!(
        paths(tx.catalog_range("web", 900, 1000).unwrap()),
        ["/c/web_3.pcapng"]
    );
    // Updated in place by (collector, path).
    open.state = FileState::Deleted;
    open.last_ns = Some(600);
    tx.catalog_put(&open).unwrap();
    assert!(tx.catalog_range("web", 900, 1000).unwrap().is_empty());
    let b = tx.catalog_of("b").unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[1], open);
    assert_eq!(tx.catalog_range("web", 550, 560).unwrap()[0].collector, "b");
});

both_backends!(
    catalog_rows_are_marked_and_removed_by_collector_and_path,
    |b| {
        let mut store = b.open();
        let mut tx = store.begin().unwrap();
        tx.catalog_put(&file("a", "web", "web_1.pcapng", 100, 200))
            .unwrap();
        tx.catalog_put(&file("b", "web", "web_1.pcapng", 100, 200))
            .unwrap();
        // Only the state and the time of the change: the packets stay as they were.
        assert!(
            tx.catalog_mark("a", "web_1.pcapng", FileState::Deleted, 900)
                .unwrap()
        );
        assert!(
            !tx.catalog_mark("a", "web_9.pcapng", FileState::Deleted, 900)
                .unwrap()
        );
        let mut want = file("a", "web", "web_1.pcapng", 100, 200);
        want.state = FileState::Deleted;
        want.updated_ns = 900;
        assert_eq!(tx.catalog_of("a").unwrap(), [want]);
        assert_eq!(tx.catalog_of("b").unwrap()[0].state, FileState::Closed);
        tx.catalog_remove("a", "web_1.pcapng").unwrap();
        assert!(tx.catalog_of("a").unwrap().is_empty());
        assert_eq!(tx.catalog_of("b").unwrap().len(), 1);
    }
);

#[test]
fn locations_are_read_from_paths_and_urls() {
    use std::path::PathBuf;
    let sqlite = |p: &str| Ok(Location::Sqlite(PathBuf::from(p)));
    assert_eq!(
        Location::parse("/var/lib/tapwire/c.db"),
        sqlite("/var/lib/tapwire/c.db")
    );
    assert_eq!(Location::parse("c.db"), sqlite("c.db"));
    assert_eq!(Location::parse("sqlite:/x/c.db"), sqlite("/x/c.db"));
    assert_eq!(Location::parse("sqlite:///x/c.db"), sqlite("/x/c.db"));
    for pg in [
        "postgres://tw@db1:5432/tapwire",
        "postgresql://tw:secret@db1/tapwire?sslmode=require",
        "host=db1 dbname=tapwire user=tw",
    ] {
        assert_eq!(Location::parse(pg), Ok(Location::Postgres(pg.into())));
    }
    assert!(
        Location::parse("mysql://x/y")
            .unwrap_err()
            .contains("mysql://")
    );
    assert!(Location::parse("sqlite:").is_err());
    assert_eq!(
        Location::parse("postgres://tw:hunter2@db1/tapwire?password=x&sslmode=require")
            .unwrap()
            .display(),
        "postgres://tw:***@db1/tapwire?password=***&sslmode=require"
    );
    assert_eq!(
        Location::parse("host=db1 password=hunter2 dbname=t")
            .unwrap()
            .display(),
        "host=db1 password=*** dbname=t"
    );
}

#[test]
fn postgres_tls_parameters_are_checked_at_start() {
    let e = postgres::Settings::parse("postgres://tw@db1/t?sslmode=bogus")
        .err()
        .expect("refused");
    assert!(e.to_string().contains("sslmode=bogus"), "{e}");
    let e = postgres::Settings::parse(
        "postgres://tw@db1/t?sslmode=verify-full&sslrootcert=/nonexistent",
    )
    .err()
    .expect("refused");
    assert!(e.to_string().contains("sslrootcert=/nonexistent"), "{e}");
    assert!(postgres::Settings::parse("postgres://tw@db1/t?sslmode=require").is_ok());
    let e = postgres::Settings::parse("postgres://tw@db1")
        .err()
        .expect("refused");
    assert!(e.to_string().contains("no database name"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: migrations under the advisory lock, the fleet lock, notifications.

fn pg_client(url: &str) -> ::postgres::Client {
    ::postgres::Client::connect(url, ::postgres::NoTls).unwrap()
}

fn schema_version(url: &str) -> i32 {
    pg_client(url)
        .query_one("SELECT version FROM tapwire_schema", &[])
        .unwrap()
        .get(0)
}

#[test]
fn postgres_collectors_starting_together_migrate_once() {
    let Some(url) = pg_url("together") else {
        return;
    };
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || PgStore::open(&url).map(drop))
        })
        .collect();
    for t in opened {
        t.join().unwrap().unwrap();
    }
    assert_eq!(schema_version(&url) as usize, postgres::MIGRATIONS.len());
    // One fleet row: step 2 ran once.
    let n: i64 = pg_client(&url)
        .query_one("SELECT count(*) FROM fleet", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn postgres_an_older_schema_is_migrated_and_a_newer_one_refused() {
    let Some(url) = pg_url("versions") else {
        return;
    };
    let mut c = pg_client(&url);
    assert_eq!(
        postgres::migrate(&mut c, &postgres::MIGRATIONS[..1]).unwrap(),
        1
    );
    c.execute(
        "INSERT INTO sessions (name, mirror_id, encap, enabled, created_at, updated_at)
         VALUES ('old', 5, 'erspan-ii', true, 'c', 'u')",
        &[],
    )
    .unwrap();
    let mut store = PgStore::open(&url).unwrap();
    let s = store.begin().unwrap().session("old").unwrap().unwrap();
    assert_eq!((s.mirror_id, s.pin, s.owner), (5, None, None));
    assert_eq!(schema_version(&url) as usize, postgres::MIGRATIONS.len());
    c.execute("UPDATE tapwire_schema SET version = version + 1", &[])
        .unwrap();
    match PgStore::open(&url) {
        Err(StoreError::TooNew { found, known }) => {
            assert_eq!(found as usize, postgres::MIGRATIONS.len() + 1);
            assert_eq!(known as usize, postgres::MIGRATIONS.len());
        }
        other => panic!("expected TooNew, got {:?}", other.map(drop)),
    }
}

#[test]
fn postgres_a_failing_step_leaves_nothing_of_any_step() {
    let Some(url) = pg_url("failing") else {
        return;
    };
    let mut c = pg_client(&url);
    assert_eq!(
        postgres::migrate(&mut c, &postgres::MIGRATIONS[..1]).unwrap(),
        1
    );
    // Step 4 cannot run: its table exists. Steps 2 to 4 run in one transaction.
    c.batch_execute("CREATE TABLE files (x INTEGER)").unwrap();
    match PgStore::open(&url) {
        Err(StoreError::Migration { step: 4, source }) => {
            assert!(source.to_string().contains("already exists"), "{source}")
        }
        other => panic!("expected a failed step 4, got {:?}", other.map(drop)),
    }
    assert_eq!(schema_version(&url), 1);
    let collectors: Option<String> = c
        .query_one("SELECT to_regclass('collectors')::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        collectors, None,
        "step 3's table was rolled back with step 4"
    );
}

#[test]
fn postgres_bad_credentials_and_addresses_are_clear_errors() {
    let Some(pg) = Pg::shared() else {
        return;
    };
    let db = pg.database("creds");
    let wrong = format!("postgres://tapwire:wrong@127.0.0.1:{}/{db}", pg.port());
    let e = PgStore::open(&wrong).err().expect("refused").to_string();
    assert!(e.contains("password authentication failed"), "{e}");
    assert!(!e.contains("wrong"), "the password is not shown: {e}");
    let nobody = "postgres://tapwire:x@127.0.0.1:1/nothing";
    let e = PgStore::open(nobody).err().expect("refused").to_string();
    assert!(
        e.contains("127.0.0.1:1") || e.contains("onnection refused"),
        "{e}"
    );
    let e = PgStore::open(&format!(
        "postgres://tapwire:{}@127.0.0.1:{}/no_such_db",
        tapwire_tests::pg::PASSWORD,
        pg.port()
    ))
    .err()
    .expect("refused")
    .to_string();
    assert!(e.contains("no_such_db"), "{e}");
}

#[test]
fn postgres_one_placer_at_a_time_and_changes_wait_for_each_other() {
    let Some(url) = pg_url("lock") else {
        return;
    };
    let mut a = PgStore::open(&url).unwrap();
    let mut b = PgStore::open(&url).unwrap();
    let mut ta = a.begin().unwrap();
    assert!(ta.lock_fleet(true).unwrap());
    let mut tb = b.begin().unwrap();
    assert!(
        !tb.lock_fleet(false).unwrap(),
        "SKIP LOCKED: another holds it"
    );
    drop(tb);
    // A waiting change goes on once the holder commits.
    let url2 = url.clone();
    let (asking, asked) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let mut c = PgStore::open(&url2).unwrap();
        let mut tc = c.begin().unwrap();
        let t0 = std::time::Instant::now();
        asking.send(()).unwrap();
        assert!(tc.lock_fleet(true).unwrap());
        let v = tc.bump_fleet_version().unwrap();
        tc.commit().unwrap();
        (t0.elapsed(), v)
    });
    asked.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(ta.bump_fleet_version().unwrap(), 1);
    ta.commit().unwrap();
    let (waited, v) = waiter.join().unwrap();
    assert!(
        waited >= std::time::Duration::from_millis(250),
        "{waited:?}"
    );
    assert_eq!(v, 2, "the waiter saw the holder's commit");
}

#[test]
fn postgres_a_commit_wakes_every_listener() {
    let Some(url) = pg_url("notify") else {
        return;
    };
    let mut a = PgStore::open(&url).unwrap();
    let b = PgStore::open(&url).unwrap();
    let mut la = a.listener().expect("a listener");
    let mut lb = b.listener().expect("a listener");
    // The listeners connect on their own threads; a first wake-up may come from that.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = la.wait(std::time::Duration::ZERO);
    let _ = lb.wait(std::time::Duration::ZERO);
    let mut tx = a.begin().unwrap();
    tx.bump_fleet_version().unwrap();
    // Not before the commit.
    assert!(!lb.wait(std::time::Duration::from_millis(300)).unwrap());
    tx.commit().unwrap();
    let t0 = std::time::Instant::now();
    assert!(lb.wait(std::time::Duration::from_secs(2)).unwrap());
    assert!(la.wait(std::time::Duration::from_secs(2)).unwrap());
    eprintln!("notification after {:?}", t0.elapsed());
}

// ---------------------------------------------------------------------------------------------
// TLS to PostgreSQL, against real servers: one that requires TLS on TCP (its certificate signed
// by a CA made here), the shared one without TLS.

/// TLS to a server that requires it: verified against the CA given, refused with a clear
/// error for a wrong CA, without TLS, or (`require`) by a server without TLS.
#[test]
fn postgres_tls_is_verified_and_refused_clearly() {
    let ca = tapwire_tests::pg::TestCa::new("tapwire test CA");
    let Some(pg) = Pg::start_tls("tls", &ca, true) else {
        return;
    };
    let dir = tapwire_tests::TempDir::new("pg-tls");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.ca_pem).unwrap();
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, tapwire_tests::pg::TestCa::new("another CA").ca_pem).unwrap();
    let db = pg.database("tls");
    let url = |query: &str| format!("{}?{query}", pg.url(&db));
    let open_err = |u: String| PgStore::open(&u).err().expect("refused").to_string();

    for (i, mode) in ["verify-full", "verify-ca", "require"]
        .into_iter()
        .enumerate()
    {
        let u = url(&format!("sslmode={mode}&sslrootcert={}", ca_file.display()));
        let mut store = PgStore::open(&u).unwrap_or_else(|e| panic!("{mode}: {e}"));
        let mut tx = store.begin().unwrap();
        tx.insert_token(&NewToken {
            name: mode,
            role: Role::Viewer,
            probe: None,
            hash: &[i as u8; 32],
            created: "2026-12-06T00:00:00Z",
            created_by: "test",
        })
        .unwrap();
        tx.commit().unwrap();
    }
    // Stored over TLS: the server saw encrypted connections (its own view of them).
    assert_eq!(
        pg.psql(&db, "SELECT count(*) FROM tokens"),
        "3",
        "three tokens stored over TLS"
    );

    // Without TLS, refused by the server's pg_hba.conf.
    let e = open_err(url("sslmode=disable"));
    assert!(
        e.contains("no pg_hba.conf entry") && e.contains("no encryption"),
        "{e}"
    );
    // A CA that did not sign the server's certificate.
    let e = open_err(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.display()
    )));
    assert!(
        e.contains(&format!(
            "not signed by a CA in sslrootcert={}",
            other.display()
        )),
        "{e}"
    );
    // No CA given: the public roots, which did not sign it either.
    let e = open_err(url("sslmode=verify-full"));
    assert!(e.contains("not signed by a public CA"), "{e}");

    // A server without TLS: `require` is refused, `prefer` goes on in the clear.
    let plain = Pg::shared().unwrap();
    let plain_db = plain.database("notls");
    let e = open_err(format!(
        "{}?sslmode=require&sslrootcert={}",
        plain.url(&plain_db),
        ca_file.display()
    ));
    assert!(e.contains("the server does not support TLS, which"), "{e}");
    PgStore::open(&format!(
        "{}?sslmode=prefer&sslrootcert={}",
        plain.url(&plain_db),
        ca_file.display()
    ))
    .unwrap();
}

both_backends!(the_fleet_secret_is_made_once_and_kept, |b| {
    let mut store = b.open();
    let mut tx = store.begin().unwrap();
    let first = tx.fleet_secret(&[1; 32]).unwrap();
    assert_eq!(first, vec![1; 32]);
    tx.commit().unwrap();
    let mut again = b.open();
    let mut tx = again.begin().unwrap();
    assert_eq!(tx.fleet_secret(&[2; 32]).unwrap(), vec![1; 32]);
});
