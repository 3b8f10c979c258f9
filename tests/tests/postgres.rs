//! The PostgreSQL lab (`failover_lab::pg`) on the real daemon: a
//! synchronous primary on backend 1, its standby on backend 2, the `pg`
//! service on the VIP, and an application inserting a row every 10 ms
//! through it. Checks the lab itself: every acknowledged insert is on the
//! primary and on the standby, and the crash, promote and rebuild helpers
//! the failover scenario tests use work. Needs root and PostgreSQL (`cargo
//! xtask setup` installs it); fails, never skips, without them.

use std::time::{Duration, Instant};

use failover_lab::{
    DaemonProcess, LB_IFACES, Topology, Workdir,
    pg::{self, InsertClient, InsertOptions, InsertReport, PgInstall, PgServer, PgServiceConfig},
};

#[test]
fn sync_pair_behind_the_vip_then_crash_promote_rebuild() {
    failover_tests::require_root();
    let t0 = Instant::now();
    let install = PgInstall::find().expect("PostgreSQL for the lab");
    eprintln!(
        "PostgreSQL {} at {}",
        install.version,
        install.bin.display()
    );
    let wd = Workdir::new("fpg").expect("workdir");
    let topo = Topology::create(&wd.prefix).expect("lab topology");
    pg::route_backends(&topo).expect("routes between the backends");
    let config = pg::write_daemon_config(&wd, &PgServiceConfig::default()).expect("daemon config");
    let mut daemon = DaemonProcess::spawn(&failover_tests::failover_exe(), &topo.lb.name, &config)
        .expect("daemon");
    daemon
        .wait_attached(&wd.bpffs, &LB_IFACES)
        .expect("attached");

    // Declared after the lab: dropped (stopped) before it.
    let mut db1 = PgServer::on_backend(&install, &topo, &wd, 0).expect("db1");
    let mut db2 = PgServer::on_backend(&install, &topo, &wd, 1).expect("db2");
    let t = Instant::now();
    db1.init_primary(true).expect("primary on backend 1");
    eprintln!("db1: initdb, start, create: {:.0?}", t.elapsed());
    let t = Instant::now();
    db2.init_standby_of(db1.ip()).expect("standby on backend 2");
    eprintln!("db2: pg_basebackup and start: {:.0?}", t.elapsed());
    let state = db1
        .wait_streaming("db2", Duration::from_secs(10))
        .expect("db2 streams from db1");
    assert_eq!(state, "sync", "db2 is db1's synchronous standby");
    assert!(db2.is_in_recovery().expect("db2 recovery state"));

    let client = InsertClient::start(&topo.client, InsertOptions::default()).expect("client");
    std::thread::sleep(Duration::from_secs(2));
    let report = client.stop().expect("client report");
    eprintln!("client: {}", report.summary());

    let acked = report.acked_ids();
    let counts = report.counts();
    assert!(
        acked.len() >= 100,
        "only {} inserts acknowledged in 2 s: {}",
        acked.len(),
        report.summary()
    );
    assert_eq!(
        counts.read_only,
        0,
        "read-only errors: {}",
        report.summary()
    );
    let on_db1 = db1.ids().expect("ids on db1");
    assert!(
        InsertReport::lost(&acked, &on_db1).is_empty(),
        "acknowledged but missing on the primary: {:?}",
        InsertReport::lost(&acked, &on_db1)
    );
    // Synchronous commit waits for the standby's flush, not its replay.
    let lsn = db1.wal_lsn().expect("db1 LSN");
    db2.wait_replayed(&lsn, Duration::from_secs(10))
        .expect("db2 replays");
    let on_db2 = db2.ids().expect("ids on db2");
    assert!(
        InsertReport::lost(&acked, &on_db2).is_empty(),
        "acknowledged but missing on the synchronous standby: {:?}",
        InsertReport::lost(&acked, &on_db2)
    );

    // A crash of the primary, a promotion by hand, the old primary rebuilt
    // as the new one's standby. The daemon has no checks, so the VIP stays
    // on db1: a second client (ids from 1 000 000) sees its connection
    // lost, connections refused, then read-only errors once db1 is back as
    // a standby; it never gets an acknowledgement.
    let opts = InsertOptions {
        first_id: 1_000_000,
        ..Default::default()
    };
    let client = InsertClient::start(&topo.client, opts).expect("second client");
    std::thread::sleep(Duration::from_millis(100));
    let killed_at = Instant::now();
    let gone = db1.kill_postmaster().expect("kill -9 db1");
    let dead_at = Instant::now();
    eprintln!("db1 killed: its children were gone {gone:.1?} after the SIGKILL");
    let took = db2.promote().expect("promote db2");
    eprintln!("db2 promoted: out of recovery {took:.0?} after pg_promote()");
    assert!(!db2.is_in_recovery().expect("db2 recovery state"));
    let on_new = db2.ids().expect("ids on the new primary");
    assert!(
        InsertReport::lost(&acked, &on_new).is_empty(),
        "acknowledged but missing after the promotion: {:?}",
        InsertReport::lost(&acked, &on_new)
    );
    let t = Instant::now();
    db1.rebuild_as_standby_of(db2.ip())
        .expect("db1 rebuilt as db2's standby");
    eprintln!("db1 rebuilt (pg_basebackup, start): {:.0?}", t.elapsed());
    assert!(db1.is_in_recovery().expect("db1 recovery state"));
    let state = db2
        .wait_streaming("db1", Duration::from_secs(10))
        .expect("db1 streams from db2");
    assert_eq!(state, "sync", "db1 is db2's synchronous standby");
    let lsn = db2.wal_lsn().expect("db2 LSN");
    db1.wait_replayed(&lsn, Duration::from_secs(10))
        .expect("db1 replays");
    let on_db1 = db1.ids().expect("ids on the rebuilt db1");
    assert!(
        InsertReport::lost(&acked, &on_db1).is_empty(),
        "acknowledged but missing on the rebuilt standby: {:?}",
        InsertReport::lost(&acked, &on_db1)
    );
    std::thread::sleep(Duration::from_millis(300));
    let during = client.stop().expect("second client report");
    eprintln!("second client: {}", during.summary());
    let c = during.counts();
    assert_eq!(c.acked, during.acked_ids().len());
    // A backend serves on until it notices its postmaster's death, so an
    // insert may still be acknowledged between the SIGKILL and the last
    // child's exit (on the standby too: the commit was synchronous).
    let acked_while_dying = during
        .attempts
        .iter()
        .filter(|a| a.acked() && a.start >= killed_at)
        .count();
    eprintln!("acknowledged by db1's backends after the SIGKILL: {acked_while_dying}");
    let acked_dead = during
        .attempts
        .iter()
        .filter(|a| a.acked() && a.start >= dead_at)
        .count();
    assert_eq!(
        acked_dead,
        0,
        "acknowledged after db1's crash with the VIP on db1: {}",
        during.summary()
    );
    assert!(
        c.connect_refused > 0,
        "no connection refused while db1 was down: {}",
        during.summary()
    );
    assert!(
        c.read_only > 0 && during.read_only_between(t, during.stopped).len() == c.read_only,
        "read-only errors only once db1 is being rebuilt as a standby (it takes read-only connections as soon as it starts, before the rebuild returns): {}",
        during.summary()
    );
    let on_db2 = db2.ids().expect("ids on db2");
    assert!(
        InsertReport::lost(&during.acked_ids(), &on_db2).is_empty(),
        "acknowledged but missing on db2"
    );
    eprintln!("postgres lab test: {:.1?}", t0.elapsed());
}
