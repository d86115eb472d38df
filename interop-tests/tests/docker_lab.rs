//! The NAT lab on Docker (`matrix --backend docker`): the same topology as
//! the namespace lab from containers and Docker networks, the same router
//! recipes and self-check, the same results.json. Three representative
//! cells (hole-punched, relayed, tcp-relay) run on both backends and must
//! agree cell by cell, over the expected path; and whatever a docker lab
//! made (containers, networks, DOCKER-USER rules) is gone when it is
//! dropped, also when the code using it panics.
//!
//! Needs root, a Docker engine and the binaries under test (NATTER_BIN_DIR,
//! else next to this crate's binary); the images are built from them with
//! deploy/build-images under a tag of this run (removed afterwards). Skips,
//! saying so, only where no Docker engine answers. About 2.5 minutes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Instant;

use common::images::{TestImages, leftovers};
use common::{bin_dir, one_lab_at_a_time};
use natter_interop_tests::docker::{self, DockerOptions};
use natter_interop_tests::lab::{Backend, Lab, LabConfig};
use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::{self, Binaries, MatrixOptions, MatrixReport};

fn no_engine(test: &str) -> bool {
    if docker::engine_available() {
        return false;
    }
    eprintln!(
        "SKIPPED {test}: no Docker engine answers (`docker version` failed); the docker lab was not exercised"
    );
    true
}

fn run(backend: Backend, image: &str, cells: &[(NatType, NatType)]) -> MatrixReport {
    let out = std::env::temp_dir().join(format!(
        "natter-docklab-{}-{}",
        backend.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let opts = MatrixOptions {
        backend,
        docker: DockerOptions {
            image: image.to_owned(),
            ..DockerOptions::default()
        },
        ..MatrixOptions::new(
            out.clone(),
            cells.to_vec(),
            Binaries::in_dir(&bin_dir()).expect("natter binaries"),
            env!("CARGO_BIN_EXE_natter-interop-tests").into(),
        )
    };
    let t0 = Instant::now();
    let report =
        scenario::run_matrix(&opts).unwrap_or_else(|e| panic!("{} matrix: {e}", backend.name()));
    eprintln!(
        "{} backend: {} cells in {:.0} s",
        backend.name(),
        cells.len(),
        t0.elapsed().as_secs_f64()
    );
    // the output is kept only when something is off
    if report.cells.iter().all(|c| c.passed() == c.trials) {
        let _ = std::fs::remove_dir_all(&out);
    } else {
        eprintln!("kept {}", out.display());
    }
    report
}

#[test]
fn three_cells_agree_on_the_namespace_and_the_docker_backend() {
    if no_engine("three_cells_agree_on_the_namespace_and_the_docker_backend") {
        return;
    }
    let _turn = one_lab_at_a_time();
    let images = TestImages::build("docklab");
    let cells = [
        (NatType::AddressRestricted, NatType::PortRestricted),
        (NatType::PortRestricted, NatType::Symmetric),
        (NatType::UdpBlocked, NatType::Open),
    ];
    let netns = run(Backend::Netns, "", &cells);
    let dock = run(Backend::Docker, &images.of("natter-router"), &cells);
    assert_eq!(netns.backend.as_deref(), Some("netns"));
    assert_eq!(dock.backend.as_deref(), Some("docker"));
    assert_eq!(
        netns.self_check_table, dock.self_check_table,
        "the routers classify alike"
    );
    for (n, d) in netns.cells.iter().zip(&dock.cells) {
        let (tn, td) = (&n.trial_results[0], &d.trial_results[0]);
        assert_eq!((n.a, n.b), (d.a, d.b));
        assert!(n.self_check && d.self_check, "{n:?}\n{d:?}");
        // each backend over the path theory expects, so the two agree
        for (name, c, t) in [("netns", n, tn), ("docker", d, td)] {
            assert_eq!(c.connected, 1, "{name} {} x {}: {t:?}", c.a, c.b);
            assert_eq!(
                c.final_path.get(&c.expected),
                Some(&1),
                "{name} {} x {}, expected {}: {t:?}",
                c.a,
                c.b,
                c.expected
            );
            assert!(
                t.audio_match.unwrap_or(0.0) > 0.5,
                "{name} {} x {}: B did not hear A's speech: {t:?}",
                c.a,
                c.b
            );
        }
        assert_eq!(n.final_path, d.final_path, "{} x {}", n.a, n.b);
        assert_eq!(n.side_paths, d.side_paths, "{} x {}", n.a, n.b);
    }
    let left = leftovers(std::process::id());
    assert!(left.is_empty(), "the docker lab left {left:?}");
}

#[test]
fn a_docker_lab_removes_what_it_made_even_when_its_user_panics() {
    if no_engine("a_docker_lab_removes_what_it_made_even_when_its_user_panics") {
        return;
    }
    let _turn = one_lab_at_a_time();
    let images = TestImages::build("docktear");
    let work = std::env::temp_dir().join(format!("natter-docktear-{}", std::process::id()));
    let result = std::panic::catch_unwind(|| {
        let mut cfg = LabConfig::new(env!("CARGO_BIN_EXE_natter-interop-tests"));
        cfg.backend = Backend::Docker;
        cfg.docker.image = images.of("natter-router");
        cfg.work_dir = work.clone();
        let mut lab = Lab::new(cfg).expect("docker lab");
        let c = lab.add_client(1, NatType::PortRestricted).expect("client");
        // the lab is really there (containers w, s1, s2, r1x0, h1x0, two
        // networks, their rules); the host reaches the probe reflector
        // through its router (a program by path runs inside the container)
        let left = leftovers(std::process::id());
        assert!(
            left.iter().filter(|l| l.starts_with("container")).count() == 5
                && left.iter().any(|l| l.starts_with("network"))
                && left.iter().any(|l| l.starts_with("rule")),
            "{left:?}"
        );
        let out = lab
            .exec(
                &c.host_ns,
                env!("CARGO_BIN_EXE_natter-interop-tests"),
                &["probe-client", "--wait-ms", "500"],
                &[],
                std::time::Duration::from_secs(30),
            )
            .expect("probe from behind the docker router");
        assert!(out.stdout.contains("\"verdict\""), "{}", out.stdout);
        panic!("the test's own panic, with the lab still up");
    });
    assert!(result.is_err(), "the closure panics");
    let left = leftovers(std::process::id());
    assert!(left.is_empty(), "left after the panic: {left:?}");
    let _ = std::fs::remove_dir_all(&work);
}
