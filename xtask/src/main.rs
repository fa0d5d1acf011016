//! The project's own checks, run by `.ci/run` from `cargo metadata` (no second toolchain, no
//! tool to install):
//!
//! - `cargo run -p xtask -- msrv`: every package the lockfile resolves for this platform
//!   declares a `rust-version` no higher than the workspace's; fails naming those that do.
//! - `cargo run -p xtask -- deny`: every package's licence expression is satisfied by the
//!   licences `deny.toml` allows, and crates resolved at several versions are listed (an error
//!   when `[bans] multiple-versions = "deny"`, except those in `skip`). `deny.toml` keeps
//!   cargo-deny's format, so `cargo deny check licenses bans` reads the same policy.

#![forbid(unsafe_code)]
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line check reports on stdout and stderr"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, ExitCode};

use serde_json::Value;

/// A `major.minor.patch` version (missing parts are 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Version(u64, u64, u64);

impl Version {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.').map(|p| p.parse::<u64>());
        let major = parts.next()?.ok()?;
        let minor = parts.next().unwrap_or(Ok(0)).ok()?;
        let patch = parts.next().unwrap_or(Ok(0)).ok()?;
        Some(Self(major, minor, patch))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The packages of the resolve (`cargo metadata`'s `resolve.nodes`), by id.
fn resolved(meta: &Value) -> Vec<&Value> {
    let ids: BTreeSet<&str> = meta["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["id"].as_str())
        .collect();
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_str().is_some_and(|id| ids.contains(id)))
        .collect()
}

fn is_member(meta: &Value, package: &Value) -> bool {
    meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| *m == package["id"])
}

/// The workspace's declared minimum Rust version: the lowest any member declares.
fn ours(meta: &Value) -> Result<Version, String> {
    resolved(meta)
        .into_iter()
        .filter(|p| is_member(meta, p))
        .filter_map(|p| p["rust_version"].as_str().and_then(Version::parse))
        .min()
        .ok_or_else(|| "no workspace member declares a rust-version".to_owned())
}

/// The dependencies that declare a higher `rust-version` than `ours`: (name, version, theirs).
fn msrv_offenders(meta: &Value, ours: Version) -> Vec<(String, String, Version)> {
    let mut v: Vec<(String, String, Version)> = resolved(meta)
        .into_iter()
        .filter(|p| !is_member(meta, p))
        .filter_map(|p| {
            let theirs = Version::parse(p["rust_version"].as_str()?)?;
            (theirs > ours).then(|| {
                (
                    p["name"].as_str().unwrap_or("?").to_owned(),
                    p["version"].as_str().unwrap_or("?").to_owned(),
                    theirs,
                )
            })
        })
        .collect();
    v.sort();
    v
}

/// Whether an SPDX licence expression is satisfied by `allowed`: `OR` needs one side, `AND`
/// both, `WITH` an exception is judged by its licence, parentheses group; the old `A/B` form
/// reads as `A OR B`.
fn license_ok(expr: &str, allowed: &BTreeSet<String>) -> bool {
    let spaced = expr
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let ok = or_expr(&tokens, &mut pos, allowed);
    ok == Some(true) && pos == tokens.len()
}

fn or_expr(t: &[&str], pos: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    let mut any = and_expr(t, pos, allowed)?;
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        any |= and_expr(t, pos, allowed)?;
    }
    Some(any)
}

fn and_expr(t: &[&str], pos: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    let mut all = term(t, pos, allowed)?;
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        all &= term(t, pos, allowed)?;
    }
    Some(all)
}

fn term(t: &[&str], pos: &mut usize, allowed: &BTreeSet<String>) -> Option<bool> {
    let tok = *t.get(*pos)?;
    *pos += 1;
    if tok == "(" {
        let v = or_expr(t, pos, allowed)?;
        (t.get(*pos) == Some(&")")).then_some(())?;
        *pos += 1;
        return Some(v);
    }
    if matches!(tok, ")" | "OR" | "AND" | "WITH") {
        return None;
    }
    if t.get(*pos) == Some(&"WITH") {
        // The exception only grants more; the licence decides.
        *pos += 2;
    }
    Some(allowed.contains(tok))
}

/// The policy of `deny.toml` this checker reads.
#[derive(Debug)]
struct Policy {
    allow: BTreeSet<String>,
    deny_duplicates: bool,
    skip: BTreeSet<String>,
}

fn policy(text: &str) -> Result<Policy, String> {
    let v: toml::Value = toml::from_str(text).map_err(|e| format!("deny.toml: {e}"))?;
    let strings = |a: Option<&toml::Value>| -> BTreeSet<String> {
        a.and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .filter_map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .or_else(|| x.get("crate").and_then(|c| c.as_str()).map(str::to_owned))
                    // cargo-deny's `name@version`: the name is what this checker matches.
                    .map(|s| s.split('@').next().unwrap_or_default().to_owned())
                    .or_else(|| x.get("name").and_then(|c| c.as_str()).map(str::to_owned))
            })
            .collect()
    };
    let allow = strings(v.get("licenses").and_then(|l| l.get("allow")));
    if allow.is_empty() {
        return Err("deny.toml: [licenses] allow is empty".into());
    }
    let bans = v.get("bans");
    Ok(Policy {
        allow,
        deny_duplicates: bans
            .and_then(|b| b.get("multiple-versions"))
            .and_then(|m| m.as_str())
            == Some("deny"),
        skip: strings(bans.and_then(|b| b.get("skip"))),
    })
}

/// A package whose licence is not allowed: name, version, licence.
type BadLicence = (String, String, String);

/// What `deny` found: packages whose licence is not allowed, and crates resolved at more than
/// one version (name to versions).
fn deny_findings(meta: &Value, p: &Policy) -> (Vec<BadLicence>, BTreeMap<String, Vec<String>>) {
    let mut bad = Vec::new();
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pkg in resolved(meta) {
        let name = pkg["name"].as_str().unwrap_or("?").to_owned();
        let version = pkg["version"].as_str().unwrap_or("?").to_owned();
        if !is_member(meta, pkg) {
            let lic = pkg["license"].as_str().unwrap_or("(none)");
            if !license_ok(lic, &p.allow) {
                bad.push((name.clone(), version.clone(), lic.to_owned()));
            }
        }
        versions.entry(name).or_default().push(version);
    }
    versions.retain(|name, v| v.len() > 1 && !p.skip.contains(name));
    bad.sort();
    (bad, versions)
}

fn host_target() -> Result<String, String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or_else(|| "rustc -vV names no host".to_owned())
}

/// `cargo metadata` of the workspace, resolved for this platform, from the lockfile as it is.
fn metadata() -> Result<Value, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", &host_target()?])
        .output()
        .map_err(|e| format!("cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))
}

fn msrv() -> Result<(), String> {
    let meta = metadata()?;
    let ours = ours(&meta)?;
    let over = msrv_offenders(&meta, ours);
    let count = resolved(&meta).len();
    if over.is_empty() {
        println!("msrv: {count} packages resolved; none needs more than Rust {ours}");
        return Ok(());
    }
    for (name, version, theirs) in &over {
        eprintln!("  {name} {version} declares rust-version {theirs}");
    }
    Err(format!(
        "the workspace declares rust-version {ours}, but {} dependencies need more: raise it \
         in Cargo.toml's [workspace.package] or pin them lower",
        over.len()
    ))
}

fn deny() -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deny.toml");
    let text = std::fs::read_to_string(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let policy = policy(&text)?;
    let meta = metadata()?;
    let (bad, dups) = deny_findings(&meta, &policy);
    for (name, versions) in &dups {
        println!("duplicate: {name} {}", versions.join(", "));
    }
    for (name, version, lic) in &bad {
        eprintln!("  {name} {version}: licence {lic:?} is not allowed by deny.toml");
    }
    if !bad.is_empty() {
        return Err(format!(
            "{} packages have licences deny.toml does not allow",
            bad.len()
        ));
    }
    if policy.deny_duplicates && !dups.is_empty() {
        return Err(format!(
            "{} crates resolved at several versions",
            dups.len()
        ));
    }
    println!(
        "deny: {} packages, every licence allowed; {} crates at several versions",
        resolved(&meta).len(),
        dups.len()
    );
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("msrv") => msrv(),
        Some("deny") => deny(),
        _ => Err("usage: cargo run -p xtask -- msrv|deny".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Metadata of a workspace member `app` (rust-version 1.88) depending on `dep`.
    fn meta(dep_rust_version: Option<&str>, dep_license: &str) -> Value {
        json!({
            "packages": [
                {"id": "app 0.1.0", "name": "app", "version": "0.1.0",
                 "rust_version": "1.88", "license": "MIT"},
                {"id": "dep 2.0.0", "name": "dep", "version": "2.0.0",
                 "rust_version": dep_rust_version, "license": dep_license},
                {"id": "dep 1.0.0", "name": "dep", "version": "1.0.0",
                 "rust_version": null, "license": "MIT"},
                {"id": "unused 1.0.0", "name": "unused", "version": "1.0.0",
                 "rust_version": "1.99", "license": "GPL-3.0"}
            ],
            "workspace_members": ["app 0.1.0"],
            "resolve": {"nodes": [{"id": "app 0.1.0"}, {"id": "dep 2.0.0"}, {"id": "dep 1.0.0"}]}
        })
    }

    #[test]
    fn a_dependency_needing_a_newer_rust_is_named() {
        let m = meta(Some("1.90.1"), "MIT");
        let ours = ours(&m).unwrap();
        assert_eq!(ours, Version(1, 88, 0));
        assert_eq!(
            msrv_offenders(&m, ours),
            vec![("dep".into(), "2.0.0".into(), Version(1, 90, 1))]
        );
        // At or below ours, or undeclared: fine. A package outside the resolve is not ours.
        for rv in [Some("1.88.0"), Some("1.70"), None] {
            assert!(msrv_offenders(&meta(rv, "MIT"), ours).is_empty(), "{rv:?}");
        }
    }

    #[test]
    fn licence_expressions() {
        let allowed: BTreeSet<String> = ["MIT", "Apache-2.0", "Unicode-3.0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for ok in [
            "MIT",
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 WITH LLVM-exception OR MIT",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "GPL-3.0 OR MIT",
        ] {
            assert!(license_ok(ok, &allowed), "{ok}");
        }
        for bad in [
            "GPL-3.0",
            "MIT AND GPL-3.0",
            "(MIT OR Apache-2.0) AND LGPL-2.1",
            "",
            "MIT OR",
            "(MIT",
        ] {
            assert!(!license_ok(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn deny_finds_licences_and_duplicates() {
        let p = policy(
            "[licenses]\nallow = [\"MIT\"]\n[bans]\nmultiple-versions = \"deny\"\nskip = []\n",
        )
        .unwrap();
        assert!(p.deny_duplicates);
        let (bad, dups) = deny_findings(&meta(None, "GPL-3.0"), &p);
        assert_eq!(bad, vec![("dep".into(), "2.0.0".into(), "GPL-3.0".into())]);
        assert_eq!(dups["dep"].len(), 2);
        let p = policy("[licenses]\nallow = [\"MIT\"]\n[bans]\nskip = [{ crate = \"dep\" }]\n")
            .unwrap();
        let (bad, dups) = deny_findings(&meta(None, "MIT"), &p);
        assert!(bad.is_empty() && dups.is_empty(), "{bad:?} {dups:?}");
        assert!(policy("[licenses]\nallow = []\n").is_err());
    }

    #[test]
    fn the_workspace_passes_its_own_checks() {
        let meta = metadata().expect("cargo metadata");
        let ours = ours(&meta).expect("a rust-version");
        assert_eq!(msrv_offenders(&meta, ours), vec![]);
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deny.toml");
        let p = policy(&std::fs::read_to_string(root).unwrap()).unwrap();
        assert_eq!(deny_findings(&meta, &p).0, vec![]);
    }
}
