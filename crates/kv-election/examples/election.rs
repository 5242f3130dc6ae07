//! Three candidates and an observer on a temporary embedded database: no server needed.
//!
//! ```text
//! cargo run -p kv-election --example election
//! ```
//!
//! Each candidate campaigns, leads for a moment (proclaiming what it is doing), and resigns;
//! then the last leader's lock key is deleted behind its back: its `lost()` fires and its
//! `proclaim` is refused. The observer prints every transition, "no leader" included. The
//! same code runs on any store: replace the `BoltStore` with `kv_etcd::EtcdStore`,
//! `kv_consul::ConsulStore`… (the election only sees an `Arc<dyn Store>`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kv_bolt::{BoltStore, Config};
use kv_core::Store;
use kv_election::{Election, ElectionError, ElectionOptions, LeaderState};
use tokio::time::{Instant, sleep};

const ELECTION: &str = "services/scheduler/leader";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = BoltStore::open(Config::temporary()).await?;
    let start = Instant::now();
    let at = move || format!("{:>5} ms", start.elapsed().as_millis());
    let options = ElectionOptions::default().ttl(Duration::from_secs(5));
    println!(
        "election {ELECTION}: lock TTL {:?}, renewed every {:?}",
        options.ttl,
        options.renew_interval()
    );

    // The observer, on its own handle.
    let observer_store: Arc<dyn Store> = Arc::new(db.handle()?);
    let observer = Election::with_options(observer_store.clone(), ELECTION, options.clone())?;
    let mut states = observer.observe().await?;
    let observing = tokio::spawn(async move {
        while let Some(state) = states.next().await {
            match state {
                Ok(LeaderState::Leader(leader)) => println!(
                    "{} observer: leader {:?} (term {})",
                    at(),
                    String::from_utf8_lossy(&leader.value),
                    leader.term
                ),
                Ok(LeaderState::NoLeader) => println!("{} observer: no leader", at()),
                Err(error) => {
                    println!("{} observer: ended with {error}", at());
                    break;
                }
            }
        }
    });

    // Three candidates, each on its own handle; each leads twice at most.
    let mut candidates = Vec::new();
    for id in 1..=3 {
        let store: Arc<dyn Store> = Arc::new(db.handle()?);
        let election = Election::with_options(store, ELECTION, options.clone())?;
        candidates.push(tokio::spawn(async move {
            for round in 1..=2 {
                let mut leadership = election.campaign(format!("node-{id}")).await?;
                println!("{}   node-{id}: elected, term {}", at(), leadership.term());
                sleep(Duration::from_millis(200)).await;
                leadership
                    .proclaim(format!("node-{id} (batch {round})"))
                    .await?;
                sleep(Duration::from_millis(200)).await;
                let resigned = leadership.resign().await?;
                println!("{}   node-{id}: resigned ({resigned:?})", at());
                // Let the others have a turn.
                sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, ElectionError>(())
        }));
    }
    for candidate in candidates {
        candidate.await??;
    }

    // A leader whose lock key disappears behind its back (an operator, a bug) steps down at
    // once, and can no longer publish anything.
    let store: Arc<dyn Store> = Arc::new(db.handle()?);
    let election = Election::with_options(store.clone(), ELECTION, options)?;
    let mut leadership = election.campaign("node-4").await?;
    println!("{}   node-4: elected, term {}", at(), leadership.term());
    sleep(Duration::from_millis(200)).await;
    store.delete(election.lock_key()).await?;
    println!("{}   operator: deleted {}", at(), election.lock_key());
    let status = leadership.lost().await;
    println!("{}   node-4: lost() fired: {status:?}", at());
    match leadership.proclaim("node-4 (still here?)").await {
        Err(error @ ElectionError::NotLeader { .. }) => {
            println!("{}   node-4: proclaim refused: {error}", at())
        }
        other => println!("{}   node-4: proclaim gave {other:?}", at()),
    }
    println!(
        "{}   node-4: resign after the loss: {:?}",
        at(),
        leadership.resign().await?
    );

    // Closing the observer's handle ends its stream with an error item: never silently.
    sleep(Duration::from_millis(200)).await;
    observer_store.close().await?;
    observing.await?;
    db.close().await?;
    Ok(())
}
