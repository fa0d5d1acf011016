//! Two endpoints chatting over real UDP sockets on 127.0.0.1.
//!
//! ```text
//! cargo run -p mesh-rudp --example chat
//! ```
//!
//! Alice sends a few lines reliably; Bob answers each; both print what they get, with the
//! round-trip time of each acknowledged line, then close gracefully.
#![allow(clippy::print_stdout, reason = "an example talks to its user")]

use std::time::Instant;

use mesh_rudp::{Transport, TransportConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let alice = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    let bob = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
    println!(
        "alice on {}, bob on {}",
        alice.local_addr(),
        bob.local_addr()
    );

    let lines = ["hello bob", "how is the mesh?", "bye"];
    for line in lines {
        let t = Instant::now();
        alice
            .send(bob.local_addr(), line.as_bytes().to_vec())
            .await?;
        let acked = t.elapsed();
        let msg = bob.recv().await.ok_or("bob closed")?;
        println!(
            "bob   <- {}: {:?} (acknowledged in {acked:?})",
            msg.from,
            String::from_utf8_lossy(&msg.data)
        );
        let answer = format!("got {} bytes", msg.data.len());
        bob.send(msg.from, answer.into_bytes()).await?;
        let reply = alice.recv().await.ok_or("alice closed")?;
        println!(
            "alice <- {}: {:?}",
            reply.from,
            String::from_utf8_lossy(&reply.data)
        );
    }
    let s = alice.peer_stats(bob.local_addr()).ok_or("no peer state")?;
    println!(
        "alice's view of bob: srtt {:?}, cwnd {} bytes, {} frames sent, {} retransmitted",
        s.srtt, s.cwnd, s.frames_sent, s.retransmitted
    );
    let (a, b) = tokio::join!(alice.close(), bob.close());
    println!(
        "closed; undelivered: alice {}, bob {}",
        a.undelivered.len(),
        b.undelivered.len()
    );
    Ok(())
}
