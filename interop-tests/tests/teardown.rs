//! Teardown leaves no namespace (and no process) behind: normal drop, panic,
//! timeout, and stale namespaces of dead runs (needs root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use natter_interop_tests::LabError;
use natter_interop_tests::lab::{self, Lab, LabConfig};
use natter_interop_tests::nat::NatType;

fn config() -> LabConfig {
    LabConfig::new(env!("CARGO_BIN_EXE_natter-interop-tests"))
}

fn lab_namespaces(prefix: &str) -> Vec<String> {
    let want = format!("{prefix}-");
    lab::list_namespaces()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&want))
        .collect()
}

fn alive(pid: u32) -> bool {
    // a zombie still has /proc/PID; its state is Z
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn drop_removes_namespaces_and_processes() {
    let mut lab = Lab::new(config()).unwrap();
    let prefix = lab.prefix().to_owned();
    let c = lab.add_client(1, NatType::Symmetric).unwrap();
    let id = lab
        .spawn(&c.host_ns, "sleeper", "sleep", &["300"], &[])
        .unwrap();
    let pid = lab.pid_of(id).unwrap();
    // a process started behind the lab's back is killed too
    let wan = lab.namespaces()[0].clone();
    let n = lab_namespaces(&prefix);
    assert!(n.len() >= 5, "{n:?}");
    // nothing leaves the lab: the internet namespace has no default route
    let routes = lab
        .exec(
            &wan,
            "ip",
            &["route", "show", "default"],
            &[],
            Duration::from_secs(5),
        )
        .unwrap()
        .stdout;
    assert!(routes.trim().is_empty(), "{routes}");
    drop(lab);
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
    assert!(!alive(pid), "process {pid} survived teardown");
}

#[test]
fn panic_inside_a_trial_still_tears_down() {
    let prefix = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let mut lab = Lab::new(config()).unwrap();
        *prefix.lock().unwrap() = lab.prefix().to_owned();
        let c = lab.add_client(2, NatType::FullCone).unwrap();
        lab.spawn(&c.router_ns, "sleeper", "sleep", &["300"], &[])
            .unwrap();
        panic!("trial panicked on purpose");
    });
    assert!(r.is_err());
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
}

#[test]
fn a_process_that_times_out_is_killed_and_the_lab_still_cleans_up() {
    let mut lab = Lab::new(LabConfig {
        reflectors: false,
        ..config()
    })
    .unwrap();
    let prefix = lab.prefix().to_owned();
    let c = lab.add_client(3, NatType::Open).unwrap();
    let id = lab
        .spawn(&c.host_ns, "hang", "sleep", &["300"], &[])
        .unwrap();
    let pid = lab.pid_of(id).unwrap();
    let err = lab.wait(id, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, LabError::Timeout { .. }), "{err}");
    assert!(!alive(pid));
    // a foreground command that hangs is bounded too
    let err = lab
        .exec(
            &c.host_ns,
            "sleep",
            &["300"],
            &[],
            Duration::from_millis(300),
        )
        .unwrap_err();
    assert!(matches!(err, LabError::Timeout { .. }), "{err}");
    drop(lab);
    assert_eq!(lab_namespaces(&prefix), Vec::<String>::new());
}

#[test]
fn removing_and_rebuilding_a_client_works_at_once() {
    // caveat 4: `ip netns del` is asynchronous; rebuilds must not collide
    let mut lab = Lab::new(LabConfig {
        reflectors: false,
        ..config()
    })
    .unwrap();
    for t in [NatType::PortRestricted, NatType::FullCone, NatType::Open] {
        let c = lab.add_client(4, t).unwrap();
        lab.remove_client(&c).unwrap();
    }
}

#[test]
fn cleanup_stale_removes_namespaces_of_dead_runs_only() {
    lab::check_prereqs(&[]).unwrap();
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // a pid above pid_max can never be alive: this namespace is "stale"
    let dead = pid_max + 7;
    assert!(!Path::new(&format!("/proc/{dead}")).exists());
    let stale = format!("nt{dead}-0-w");
    let live = format!("nt{}-999-w", std::process::id());
    for ns in [&stale, &live] {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", ns])
            .status()
            .unwrap();
        assert!(st.success());
    }
    let gone = lab::cleanup_stale().unwrap();
    let names = lab::list_namespaces().unwrap();
    let live_still_there = names.contains(&live);
    lab::delete_namespace(&live).unwrap();
    // (a parallel test's Lab::new may have removed it first)
    let _ = gone;
    assert!(!names.contains(&stale));
    assert!(live_still_there, "a live run's namespace was removed");
    assert_eq!(lab::owner_pid("nt123-4-w"), Some(123));
    assert_eq!(lab::owner_pid("ntx-4-w"), None);
    assert_eq!(lab::owner_pid("other"), None);
}
