//! A tour of the API on a temporary embedded database: no server needed.
//!
//! ```text
//! cargo run -p kv-bolt --example quickstart
//! ```

use std::time::Duration;

use futures::StreamExt;
use kv_bolt::{BoltStore, Config};
use kv_core::{Error, LockOptions, ReadOptions, Store, WriteOptions};

#[tokio::main]
async fn main() -> kv_core::Result<()> {
    // A throw-away database in memory (gone when the last handle goes). For a real one:
    // `BoltStore::open(Config::new("/var/lib/myapp/kv"))` or `Config::from_url("bolt:///…")`.
    let store = BoltStore::open(Config::temporary()).await?;
    println!("opened a temporary database (in memory)");

    // put / get
    store
        .put("app/config/port", "8080".into(), WriteOptions::default())
        .await?;
    store
        .put(
            "app/config/host",
            "localhost".into(),
            WriteOptions::default(),
        )
        .await?;
    store
        .put(
            "app/session",
            "alive".into(),
            WriteOptions::with_ttl(Duration::from_secs(30)),
        )
        .await?;
    let port = store
        .get("app/config/port", ReadOptions::default())
        .await?
        .expect("just written");
    println!(
        "get   app/config/port = {} (last_index {})",
        text(&port.value),
        port.last_index
    );

    // list: every key below a directory, sorted
    for pair in store.list("app", ReadOptions::default()).await? {
        println!("list  {} = {}", pair.key, text(&pair.value));
    }

    // compare-and-swap: succeeds with the current version, fails with a stale one
    let updated = store
        .atomic_put(
            "app/config/port",
            "9090".into(),
            Some(&port),
            WriteOptions::default(),
        )
        .await?;
    println!(
        "cas   port 8080 -> 9090 (last_index {})",
        updated.last_index
    );
    match store
        .atomic_put(
            "app/config/port",
            "7070".into(),
            Some(&port),
            WriteOptions::default(),
        )
        .await
    {
        Err(Error::KeyModified { key }) => {
            println!("cas   with the stale version: KeyModified on {key}")
        }
        other => println!("cas   unexpected: {other:?}"),
    }

    // watch: the current state first, then one item per change (here from another handle)
    let writer = store.handle()?;
    let mut watch = store.watch("app/counter", ReadOptions::default()).await?;
    let task = tokio::spawn(async move {
        for i in 1..=3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer
                .put("app/counter", i.to_string().into(), WriteOptions::default())
                .await?;
        }
        writer.delete("app/counter").await?;
        writer.close().await
    });
    for _ in 0..5 {
        match watch.next().await {
            Some(Ok(Some(pair))) => println!(
                "watch app/counter = {} (last_index {})",
                text(&pair.value),
                pair.last_index
            ),
            Some(Ok(None)) => println!("watch app/counter is absent"),
            Some(Err(e)) => println!("watch ended: {e}"),
            None => break,
        }
    }
    drop(watch);
    task.await.expect("writer task")?;

    // lock: exclusive across handles (and processes sharing the database), renewed in the
    // background; the fencing token rises with every acquisition
    let mut lock = store
        .new_lock(
            "app/leader",
            LockOptions::default()
                .value("node-1")
                .ttl(Duration::from_secs(5)),
        )
        .await?;
    let lease = lock.lock().await?;
    let holder = store
        .get("app/leader", ReadOptions::default())
        .await?
        .expect("held");
    println!(
        "lock  app/leader held by {}, fencing token {}",
        text(&holder.value),
        lease.fencing_token()
    );
    lock.unlock().await?;
    println!(
        "lock  released: app/leader exists = {}",
        store.exists("app/leader", ReadOptions::default()).await?
    );

    store.close().await?;
    println!("closed");
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
