//! The original mesh-link 0.13.6's own mocha suite (`test/index.js`, with its server
//! `test/server/index.js`), run three times on one Redis of this test's own:
//! 1. the control: three Node servers, every case but the three that use shared objects;
//! 2. with server `three` replaced by a Rust node in node-compat mode (the
//!    `compat-test-server` binary), the nodes' start and the case that asks node `three` for a
//!    shared object: it fails there, saying node-compat mode does not offer them;
//! 3. the control's cases with the Rust node `three`: every one passes.
//!
//! The control leaves out the shared-object cases because the original fails them itself under
//! load: its counters are updated from two nodes without ordering and read at once (CI saw
//! `4 == 5` with three Node servers). They are not what this test is about.
//!
//! The suite's fixed ports (mesh 4000-4002, control 4100, 4101, 7102 and 4200) must be free.
//! Its Redis port (6379 in its server) is changed to this test's. Needs `node`, `npm` (and the
//! npm registry once) and `redis-server`; fails saying which is missing.

#![allow(clippy::print_stderr, reason = "the test says what it observed")]

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_benches::node_original::{install, node_script};
use mesh_discovery::testing::RedisServer;

/// The suite's cases that use the original's shared objects (node `three` serves some of them).
const SHARED_OBJECT_CASES: usize = 3;

/// What one run of the suite printed, read.
#[derive(Debug)]
struct Run {
    passed: Vec<String>,
    failing: usize,
    exit: Option<i32>,
    output: String,
}

/// A directory with the suite's test file and its server: the original server copied as
/// `server/original.js` (its package required by path, its Redis port made `redis_port`), and
/// `server/index.js` our launcher that runs the Rust stand-in for one name.
fn suite_dir(redis_port: u16) -> PathBuf {
    let package = node_script("node_modules/mesh-link");
    let dir = std::env::temp_dir().join(format!("mesh-node-suite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("server")).unwrap();
    std::fs::copy(package.join("test/index.js"), dir.join("index.js")).unwrap();
    let server = std::fs::read_to_string(package.join("test/server/index.js")).unwrap();
    let patched = server
        .replace(
            "require('../../')",
            &format!("require({:?})", package.display().to_string()),
        )
        .replace("port: 6379", &format!("port: {redis_port}"));
    assert_ne!(
        server, patched,
        "the original server's text changed: cannot patch it"
    );
    std::fs::write(dir.join("server/original.js"), patched).unwrap();
    std::fs::copy(node_script("suite-server.js"), dir.join("server/index.js")).unwrap();
    dir
}

fn run_suite(dir: &Path, redis_url: &str, rust_server: Option<&str>, grep: &[&str]) -> Run {
    let mocha = node_script("node_modules/mocha/bin/mocha");
    let mut cmd = Command::new("node");
    cmd.arg(mocha)
        .args(["index.js", "--exit", "-s", "10", "-R", "spec"])
        .args(grep)
        // The suite reads its timeout from its last argument.
        .args(["--timeout", "11000"])
        .current_dir(dir)
        .env("MESH_TEST_REDIS", redis_url)
        .env(
            "MESH_RUST_SERVER_BIN",
            env!("CARGO_BIN_EXE_compat-test-server"),
        );
    match rust_server {
        Some(name) => cmd.env("MESH_RUST_SERVER", name),
        None => cmd.env_remove("MESH_RUST_SERVER"),
    };
    let out = cmd.output().expect("node runs mocha");
    let output =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = output
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("✓ "))
        .map(|l| l.split(" (").next().unwrap_or(l).to_owned())
        .collect();
    let failing = output
        .lines()
        .find_map(|l| l.trim().strip_suffix(" failing"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Run {
        passed,
        failing,
        exit: out.status.code(),
        output,
    }
}

fn total_cases(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("index.js")).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("it('"))
        .count()
}

#[test]
fn the_originals_suite_passes_with_a_rust_server_but_for_shared_objects() {
    if let Err(e) = install() {
        panic!("the original's suite needs its package and mocha: {e}");
    }
    let redis = RedisServer::start();
    let redis_port: u16 = redis.url().rsplit(':').next().unwrap().parse().unwrap();
    let dir = suite_dir(redis_port);
    let total = total_cases(&dir);
    assert_eq!(total, 21, "the suite as this test knows it");

    let without_shared_objects = ["--grep", "shared object", "--invert"];
    let control = run_suite(&dir, &redis.url(), None, &without_shared_objects);
    eprintln!(
        "three Node servers, without the {SHARED_OBJECT_CASES} shared-object cases: {} of {} \
         pass (exit {:?})",
        control.passed.len(),
        total - SHARED_OBJECT_CASES,
        control.exit
    );
    assert_eq!(
        (control.passed.len(), control.failing),
        (total - SHARED_OBJECT_CASES, 0),
        "the original's suite against its own servers:\n{}",
        control.output
    );

    // The nodes' start and the one case that asks `three` for a shared object, then the stop.
    let asks_three = run_suite(
        &dir,
        &redis.url(),
        Some("three"),
        &["--grep", "Can start|Can wait|from another node|Can stop"],
    );
    eprintln!(
        "server three in Rust, asked for a shared object: {} cases pass (exit {:?})",
        asks_three.passed.len(),
        asks_three.exit
    );
    assert!(
        asks_three
            .output
            .contains(mesh_benches::node_original::NO_SHARED_OBJECTS),
        "three says it has no shared objects when the suite asks it for one:\n{}",
        asks_three.output
    );

    let rest = run_suite(&dir, &redis.url(), Some("three"), &without_shared_objects);
    eprintln!(
        "server three in Rust, without the {SHARED_OBJECT_CASES} shared-object cases: {} of {} \
         pass, {} fail",
        rest.passed.len(),
        total - SHARED_OBJECT_CASES,
        rest.failing
    );
    for p in &rest.passed {
        eprintln!("  passed: {p}");
    }
    assert_eq!(
        (rest.passed.len(), rest.failing),
        (total - SHARED_OBJECT_CASES, 0),
        "every case but the shared-object ones passes with a Rust server:\n{}",
        rest.output
    );
    let _ = std::fs::remove_dir_all(&dir);
}
