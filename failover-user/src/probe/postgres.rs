//! PostgreSQL check: is the server at the target a primary (accepts
//! writes) or a healthy standby, asked over a connection kept between
//! probes (tokio-postgres: the protocol is not ours to write).
//!
//! A kept connection makes a probe one round trip (well under a
//! millisecond on a LAN) instead of a process, a connection and an
//! authentication (~8 ms with `psql` in an exec check), and notices a
//! dead server at once: the connection breaks with its postmaster. A
//! failed or timed-out probe drops its connection; the next one connects
//! anew.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
};

use tokio_postgres::{Client, NoTls};

use super::*;

/// What a PostgreSQL check expects of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgRole {
    /// Accepts writes: not in recovery.
    Primary,
    /// A healthy standby: in recovery, having received WAL by streaming
    /// since it started (a diverged old primary restarted on its own is
    /// not in recovery; one restarted as a standby cannot stream from the
    /// new timeline).
    Standby,
}

/// A password that never shows in a `Debug` print (config dumps, logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Connections kept between probes, by (address, user, database).
type Key = (SocketAddr, String, String);
static KEPT: LazyLock<Mutex<HashMap<Key, Client>>> = LazyLock::new(Default::default);

fn take(k: &Key) -> Option<Client> {
    KEPT.lock().ok()?.remove(k).filter(|c| !c.is_closed())
}

fn keep(k: Key, c: Client) {
    if let Ok(mut m) = KEPT.lock() {
        m.insert(k, c);
    }
}

pub(super) async fn pg_check(
    addr: SocketAddr,
    role: PgRole,
    user: &str,
    database: &str,
    password: Option<&Password>,
) -> Check {
    let key = (addr, user.to_string(), database.to_string());
    let client = match take(&key) {
        Some(c) => c,
        None => {
            let mut cfg = tokio_postgres::Config::new();
            cfg.host(addr.ip().to_string())
                .port(addr.port())
                .user(user)
                .dbname(database)
                .application_name("failover-check");
            if let Some(p) = password {
                cfg.password(&p.0);
            }
            let (client, conn) = cfg
                .connect(NoTls)
                .await
                .map_err(|e| format!("postgres connect: {}", pg_error(&e)))?;
            // The connection's I/O runs beside the probes; it ends when the
            // client is dropped or the server goes away.
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client
        }
    };
    let row = client
        .query_one(
            "select pg_is_in_recovery(), pg_last_wal_receive_lsn() is not null",
            &[],
        )
        .await
        .map_err(|e| format!("postgres: {}", pg_error(&e)))?;
    let (in_recovery, streamed): (bool, bool) = match (row.try_get(0), row.try_get(1)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err("postgres: unexpected answer (not PostgreSQL?)".into()),
    };
    keep(key, client);
    match (role, in_recovery, streamed) {
        (PgRole::Primary, false, _) => Ok("postgres: primary".into()),
        (PgRole::Primary, true, _) => Err("postgres: in recovery (a standby)".into()),
        (PgRole::Standby, true, true) => Ok("postgres: standby, has streamed".into()),
        (PgRole::Standby, true, false) => {
            Err("postgres: in recovery but has not streamed from a primary".into())
        }
        (PgRole::Standby, false, _) => Err("postgres: not in recovery (a primary)".into()),
    }
}

/// The server's message (with its SQLSTATE) or the client's, clipped.
fn pg_error(e: &tokio_postgres::Error) -> String {
    let s = match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    };
    clip(&s)
}
