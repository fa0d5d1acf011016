//! Relay trees: every node gets the message exactly once, the sender's report covers every
//! node, a dead branch head's share is re-routed, and strangers cannot use the mesh to spread.

use std::net::UdpSocket;
use std::time::Duration;

use mesh_discovery::{MemoryRegistry, NodeRecord};
use mesh_link::{
    system, Bytes, DeliveryError, MeshNode, NodeKey, Registry, RequestError, SendOptions,
};

use crate::common::*;

async fn mesh(registry: &Registry, n: usize, prefix: &str) -> Vec<(MeshNode, Shared)> {
    let mut nodes = Vec::new();
    for i in 0..n {
        nodes.push(suite_node(registry, fast(prefix), &format!("n{i}")).await);
    }
    for (node, _) in &nodes {
        wait_nodes(node, n).await;
    }
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trees_of_any_shape_deliver_exactly_once() {
    let registry = Registry::memory();
    let nodes = mesh(&registry, 12, "tree").await;
    let mut all: Vec<NodeKey> = nodes.iter().map(|(n, _)| n.local_key()).collect();
    all.sort();
    let sender = &nodes[0].0;
    for (round, limit) in [0usize, 1, 2, 3, 11, 50].into_iter().enumerate() {
        let report = within(
            "fan-out",
            30,
            sender.send_with(
                7,
                &all,
                &msg(&format!("r{round}")),
                SendOptions::default().relay_limit(limit),
            ),
        )
        .await
        .unwrap();
        assert!(report.is_ok(), "limit {limit}: {report:?}");
        let mut got = report.delivered.clone();
        got.sort();
        assert_eq!(got, all, "limit {limit}: the report names every node once");
        for (i, (_, mem)) in nodes.iter().enumerate() {
            assert_eq!(
                runs(mem, 7),
                round + 1,
                "limit {limit}: node {i} ran the handler once"
            );
        }
    }
    // Relayed messages name their origin, and the relay that brought them.
    let info_of = |mem: &Shared| mem.lock().remembered.clone();
    assert!(nodes.iter().all(|(_, m)| info_of(m) == Some(msg("r5"))));
    for (n, _) in nodes {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_branch_head_is_routed_around() {
    let memory = MemoryRegistry::new();
    let registry = Registry::Memory(memory.clone());
    let nodes = mesh(&registry, 7, "dead-head").await;
    // A member that died without a word: its record is live, its socket never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = NodeKey::from(silent.local_addr().unwrap());
    memory.insert_raw(
        dead,
        NodeRecord::new(dead, "TypeTest", 1, 0).encode(),
        Duration::from_secs(3600),
    );
    let sender = &nodes[0].0;
    within(
        "the dead member is seen",
        10,
        sender.wait_for(|n| n.node_exists(dead)),
    )
    .await;
    // The dead node first, so it heads a branch; with limit 2 it heads half the mesh.
    let mut targets = vec![dead];
    targets.extend(nodes.iter().skip(1).map(|(n, _)| n.local_key()));
    let report = within(
        "fan-out around a dead head",
        30,
        sender.send_each(
            7,
            &targets,
            &msg("around"),
            SendOptions::default().relay_limit(2),
        ),
    )
    .await
    .unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].0, dead);
    assert_eq!(report.delivered.len(), 6, "{report:?}");
    for (_, mem) in nodes.iter().skip(1) {
        wait_runs(mem, 7, 1).await;
    }
    for (n, _) in nodes {
        let _ = n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_make_the_mesh_relay() {
    let registry = Registry::memory();
    let nodes = mesh(&registry, 3, "strangers").await;
    // A node of another mesh (its own registry) forges a relay naming every member.
    let (stranger, _) = suite_node(&Registry::memory(), fast("elsewhere"), "x").await;
    let members: Vec<NodeKey> = nodes.iter().map(|(n, _)| n.local_key()).collect();
    let body = forged_relay(stranger.local_key(), &members[1..]);
    let e = stranger
        .request_bytes(
            system::RELAY,
            members[0],
            body,
            Duration::from_secs(5),
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::BadRequest { .. }), "{e:?}");
    for (_, mem) in &nodes {
        assert_eq!(runs(mem, 7), 0, "no member ran the handler");
    }
    // Garbage in a relay from a member is refused too, and the member keeps serving.
    let e = nodes[1]
        .0
        .request_bytes(
            system::RELAY,
            members[0],
            Bytes::from_static(b"\xff\xff\xff\xffjunk"),
            Duration::from_secs(5),
            true,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, RequestError::BadRequest { .. }), "{e:?}");
    let r: Msg = nodes[1].0.request(1, members[0], &msg("ok")).await.unwrap();
    assert_eq!(r.message, "ok world");
    let _ = stranger.stop().await;
    for (n, _) in nodes {
        let _ = n.stop().await;
    }
}

/// A relay body as a member would send it (the format is internal; this mirrors it).
fn forged_relay(origin: NodeKey, nodes: &[NodeKey]) -> Bytes {
    #[derive(serde::Serialize)]
    struct Header {
        fanout: u64,
        origin: NodeKey,
        handler: u16,
        limit: u16,
        budget_ms: u32,
        nodes: Vec<NodeKey>,
    }
    let h = mesh_wire::codec::encode(&Header {
        fanout: 1,
        origin,
        handler: 7,
        limit: 1,
        budget_ms: 1000,
        nodes: nodes.to_vec(),
    })
    .unwrap();
    let data = mesh_wire::codec::encode(&msg("forged")).unwrap();
    let mut out = (h.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Bytes::from(out)
}

#[test]
fn delivery_errors_print_clearly() {
    assert_eq!(
        DeliveryError::NotMember.to_string(),
        "not a live member of the mesh"
    );
}
