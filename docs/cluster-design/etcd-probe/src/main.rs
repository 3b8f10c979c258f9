// Probe of etcd-client 0.21 against etcd 3.4: lease + keepalive, put with lease,
// election campaign/leader/observe, txn compare on create_revision.
use etcd_client::*;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let eps: Vec<String> = std::env::args().skip(1).flat_map(|a| a.split(',').map(String::from).collect::<Vec<_>>()).collect();
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(500))
        .with_timeout(Duration::from_millis(1000))
        .with_keep_alive(Duration::from_millis(500), Duration::from_millis(500))
        .with_require_leader(true);
    let mut c = Client::connect(eps, Some(opts)).await?;
    let st = c.status().await?;
    println!("server version {} leader {:x} raft_term {}", st.version(), st.leader(), st.raft_term());
    let lease = c.lease_grant(2, None).await?;
    println!("lease id {:x} ttl {}", lease.id(), lease.ttl());
    c.put("/failover/v1/lab/nodes/n1", "up", Some(PutOptions::new().with_lease(lease.id()))).await?;
    let (mut keeper, mut ka_stream) = c.lease_keep_alive(lease.id()).await?;
    // election
    let resp = c.campaign("/failover/v1/lab/leader", "n1", lease.id()).await?;
    let lk = resp.leader().unwrap().clone();
    println!("campaign won key {} rev {}", String::from_utf8_lossy(lk.key()), lk.rev());
    let l = c.leader("/failover/v1/lab/leader").await?;
    println!("leader kv value {:?}", l.kv().map(|kv| kv.value_str().unwrap().to_string()));
    // fenced write: only while our election key still has the same create_revision
    let txn = Txn::new()
        .when(vec![Compare::create_revision(lk.key(), CompareOp::Equal, lk.rev())])
        .and_then(vec![TxnOp::put("/failover/v1/lab/decision/web", "gen=1 tier=0", None)]);
    let r = c.txn(txn).await?;
    println!("fenced txn succeeded={}", r.succeeded());
    // keep alive for 3 s, then stop and watch the key vanish
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        keeper.keep_alive().await?;
        if let Some(m) = ka_stream.message().await? { print!("ka ttl={} ", m.ttl()); }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!();
    let t1 = Instant::now();
    loop {
        let g = c.get("/failover/v1/lab/nodes/n1", None).await?;
        if g.kvs().is_empty() { println!("key gone {} ms after last keepalive", t1.elapsed().as_millis()); break; }
        if t1.elapsed() > Duration::from_secs(6) { println!("key still there after 6 s"); break; }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
