//! Typed messages on a real two-node mesh: a message of the wrong type is refused with a typed
//! error on both sides and never reaches the handler; old and new versions of a message work
//! side by side, or fail with that error, never with a wrong value.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mesh_link::{Context, HandlerError, MeshNode, Registry, RequestError, SendOptions};
use serde::{Deserialize, Serialize};

use crate::common::*;

async fn pair(prefix: &str, server: impl FnOnce(&MeshNode)) -> (MeshNode, MeshNode) {
    let registry = Registry::memory();
    let start = || {
        MeshNode::builder()
            .config(|c| *c = fast(prefix))
            .registry(registry.clone())
            .start()
    };
    let a = start().await.unwrap();
    let b = start().await.unwrap();
    server(&b);
    for n in [&a, &b] {
        wait_nodes(n, 2).await;
    }
    (a, b)
}

#[derive(Debug, Serialize, Deserialize)]
struct Add {
    a: i64,
    b: i64,
}
mesh_link::request!(Add = 1 => i64);

#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    from_account: i64,
    amount_cents: i64,
}
mesh_link::request!(Transfer = 1 => i64);

/// Two teams picked the same id: a `Transfer` sent to the `Add` handler used to decode as an
/// `Add` and answer `Ok(46)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_struct_of_another_type_is_refused_not_misread() {
    let ran = Arc::new(AtomicUsize::new(0));
    let (a, b) = pair("typed-struct", |b| {
        let ran = ran.clone();
        b.serve(move |m: Add, _c: Context| {
            ran.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, HandlerError>(m.a + m.b) }
        })
        .unwrap();
    })
    .await;
    assert_eq!(
        a.ask(b.local_key(), &Add { a: 40, b: 2 }).await.unwrap(),
        42
    );
    let t = Transfer {
        from_account: 7,
        amount_cents: 100,
    };
    let e = a.ask(b.local_key(), &t).await.unwrap_err();
    match &e {
        RequestError::TypeMismatch {
            node,
            handler,
            sent,
            served,
        } => {
            assert_eq!((*node, *handler), (b.local_key(), 1));
            assert_eq!(sent, "Transfer v1");
            assert_eq!(served, "Add v1");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("serves Add v1"), "{e}");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        1,
        "the handler never ran with a Transfer"
    );
    assert_eq!(
        b.stats().type_mismatch,
        1,
        "the receiving side counts it too"
    );
    // Untyped requests cannot be checked against a typed handler either.
    let e = a
        .request::<_, i64>(1, b.local_key(), &(40i64, 2i64))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, RequestError::TypeMismatch { sent, .. } if sent == "untyped"),
        "{e:?}"
    );
    // A one-way Transfer to the same handler is dropped and counted, never run.
    let report = a.tell([b.local_key()], &t).await.unwrap();
    assert_eq!(
        report.delivered,
        vec![b.local_key()],
        "the transport delivered it"
    );
    within("the receiver counts the refused message", 10, async {
        while b.stats().type_mismatch < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

mod client {
    use serde::{Deserialize, Serialize};

    /// What the client thinks handler 2 does: adds two bytes and answers a `String`.
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) struct Sum(pub(crate) u8, pub(crate) u8);
    mesh_link::request!(Sum = 2 => String);
}

mod server {
    use serde::{Deserialize, Serialize};

    /// What handler 2 really does: adds two bytes and answers a `u8`.
    #[derive(Debug, Serialize, Deserialize)]
    pub(crate) struct Sum(pub(crate) u8, pub(crate) u8);
    mesh_link::request!(Sum = 2 => u8);
}

/// The same request, a different answer type: `(3u8, 4u8)` expecting a `String` used to
/// return `Ok("")`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_of_another_type_is_refused_not_misread() {
    let (a, b) = pair("typed-answer", |b| {
        b.serve(|m: server::Sum, _c: Context| async move { Ok::<_, HandlerError>(m.0 + m.1) })
            .unwrap();
    })
    .await;
    let e = a.ask(b.local_key(), &client::Sum(3, 4)).await.unwrap_err();
    assert!(
        matches!(&e, RequestError::TypeMismatch { served, .. } if served == "Sum v1"),
        "{e:?}"
    );
    assert_eq!(a.ask(b.local_key(), &server::Sum(3, 4)).await.unwrap(), 7);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// A typed message to an untyped handler is refused too: nothing vouches for its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_and_untyped_do_not_mix() {
    let (a, b) = pair("typed-untyped", |b| {
        b.on_request(1, |m: (i64, i64), _c: Context| async move {
            Ok::<_, HandlerError>(m.0 + m.1)
        })
        .unwrap();
    })
    .await;
    let e = a.ask(b.local_key(), &Add { a: 1, b: 2 }).await.unwrap_err();
    assert!(
        matches!(&e, RequestError::TypeMismatch { served, .. } if served.contains("untyped")),
        "{e:?}"
    );
    let r: i64 = a.request(1, b.local_key(), &(1i64, 2i64)).await.unwrap();
    assert_eq!(r, 3);
    let _ = a.stop().await;
    let _ = b.stop().await;
}

/// Evolving in place: MessagePack with named fields, a field added with a default. Old and new
/// nodes ask each other and both get answers.
mod evolve {
    pub(crate) mod v1 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Serialize, Deserialize)]
        pub(crate) struct GetScore {
            pub(crate) player: String,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub(crate) struct Score {
            pub(crate) points: u64,
        }
        mesh_link::request!(GetScore = 10 => Score, name = "game.GetScore", codec = MessagePack);
    }

    pub(crate) mod v2 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Serialize, Deserialize)]
        pub(crate) struct GetScore {
            pub(crate) player: String,
            #[serde(default)]
            pub(crate) season: Option<u32>,
        }
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        pub(crate) struct Score {
            pub(crate) points: u64,
            #[serde(default)]
            pub(crate) rank: Option<u32>,
        }
        mesh_link::request!(GetScore = 10 => Score, name = "game.GetScore", codec = MessagePack);
    }
}

/// Versioning: bincode cannot skip a field, so v2 bumps the version; the new node serves both.
mod versioned {
    pub(crate) mod v1 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Serialize, Deserialize)]
        pub(crate) struct GetLevel {
            pub(crate) player: String,
        }
        mesh_link::request!(GetLevel = 11 => u32, name = "game.GetLevel");
    }

    pub(crate) mod v2 {
        use serde::{Deserialize, Serialize};

        #[derive(Debug, Serialize, Deserialize)]
        pub(crate) struct GetLevel {
            pub(crate) player: String,
            pub(crate) world: u16,
        }
        mesh_link::request!(GetLevel = 11 => u32, name = "game.GetLevel", version = 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_versions_run_side_by_side() {
    use evolve::{v1 as e1, v2 as e2};
    use versioned::{v1 as l1, v2 as l2};
    let registry = Registry::memory();
    let config = || fast("typed-versions");
    // The old node: v1 of both messages.
    let old = MeshNode::builder()
        .config(|c| *c = config())
        .registry(registry.clone())
        .serve(|r: e1::GetScore, _c: Context| async move {
            Ok::<_, HandlerError>(e1::Score {
                points: r.player.len() as u64,
            })
        })
        .serve(|r: l1::GetLevel, _c: Context| async move {
            Ok::<_, HandlerError>(r.player.len() as u32)
        })
        .start()
        .await
        .unwrap();
    // The new node: v2 of the evolving message; both versions of the versioned one.
    let new = MeshNode::builder()
        .config(|c| *c = config())
        .registry(registry)
        .serve(|r: e2::GetScore, _c: Context| async move {
            Ok::<_, HandlerError>(e2::Score {
                points: r.player.len() as u64 * 100,
                rank: r.season,
            })
        })
        .serve(|r: l1::GetLevel, _c: Context| async move {
            Ok::<_, HandlerError>(r.player.len() as u32)
        })
        .serve(|r: l2::GetLevel, _c: Context| async move {
            Ok::<_, HandlerError>(r.player.len() as u32 + u32::from(r.world) * 1000)
        })
        .start()
        .await
        .unwrap();
    for n in [&old, &new] {
        wait_nodes(n, 2).await;
    }

    // Evolving in place: both directions answer; the field one side lacks is defaulted or
    // ignored.
    let from_old = old
        .ask(
            new.local_key(),
            &e1::GetScore {
                player: "ada".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(from_old, e1::Score { points: 300 });
    let from_new = new
        .ask(
            old.local_key(),
            &e2::GetScore {
                player: "grace".into(),
                season: Some(4),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        from_new,
        e2::Score {
            points: 5,
            rank: None
        }
    );

    // Versioned: the old node asks in v1 and the new one serves it; the new node's v2 is
    // refused by the old node with the typed error (never decoded as v1), and v1 then works.
    let level = old
        .ask(
            new.local_key(),
            &l1::GetLevel {
                player: "ada".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(level, 3);
    let v2 = l2::GetLevel {
        player: "ada".into(),
        world: 2,
    };
    assert_eq!(new.ask(new.local_key(), &v2).await.unwrap(), 2003);
    let e = new.ask(old.local_key(), &v2).await.unwrap_err();
    assert!(
        matches!(&e, RequestError::TypeMismatch { sent, served, .. }
            if sent == "game.GetLevel v2" && served == "game.GetLevel v1"),
        "{e:?}"
    );
    let v1 = l1::GetLevel {
        player: v2.player.clone(),
    };
    assert_eq!(new.ask(old.local_key(), &v1).await.unwrap(), 3);
    let _ = old.stop().await;
    let _ = new.stop().await;
}

#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    text: String,
}
mesh_link::message!(Hello = 20, name = "chat.Hello");

/// Typed one-way messages reach typed handlers directly and through a relay tree (whose
/// relays carry the fingerprint too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_travel_directly_and_through_relays() {
    let registry = Registry::memory();
    let got = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for _ in 0..5 {
        let got = got.clone();
        nodes.push(
            MeshNode::builder()
                .config(|c| *c = fast("typed-relay"))
                .registry(registry.clone())
                .listen(move |m: Hello, _c: Context| {
                    assert_eq!(m.text, "hi");
                    got.fetch_add(1, Ordering::SeqCst);
                    async {}
                })
                .start()
                .await
                .unwrap(),
        );
    }
    for n in &nodes {
        wait_nodes(n, 5).await;
    }
    let keys: Vec<_> = nodes.iter().map(MeshNode::local_key).collect();
    let hello = Hello { text: "hi".into() };
    let report = nodes[0].tell(&keys, &hello).await.unwrap();
    assert_eq!(report.delivered.len(), 5);
    let report = nodes[0]
        .tell_each(&keys[1..], &hello, SendOptions::default().relay_limit(2))
        .await
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    within("every handler ran", 10, async {
        while got.load(Ordering::SeqCst) < 9 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(got.load(Ordering::SeqCst), 9);
    for n in nodes {
        let _ = n.stop().await;
    }
}
