//! Version interop on the docker lab (`matrix --backend docker --image-a
//! IMAGE`): the caller runs the `natter` of another image, the servers and
//! the callee this build.
//!
//! 1. The caller from this build's own `natter` image: the same protocol,
//!    the call connects over the expected path (the image plumbing works).
//! 2. The caller from a deliberately changed build: that image with the
//!    client's test hook set (`ENV NATTER_TEST_WIRE_VERSION=3`: the client
//!    speaks protocol version 3). The login server refuses its first
//!    envelope; the matrix must report the cell INCOMPATIBLE, naming the
//!    refusal, and not as a NAT traversal failure.
//!
//! Needs root, a Docker engine and the binaries under test (NATTER_BIN_DIR,
//! else next to this crate's binary); images built with deploy/build-images
//! under a tag of this run and removed afterwards. Skips, saying so, only
//! where no Docker engine answers. About 80 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::images::{TestImages, leftovers};
use common::{bin_dir, one_lab_at_a_time};
use natter_interop_tests::docker::{self, DockerOptions, IMAGE_CLIENT};
use natter_interop_tests::lab::Backend;
use natter_interop_tests::nat::NatType;
use natter_interop_tests::scenario::{
    self, Binaries, MatrixOptions, MatrixReport, VERSION_REFUSED,
};

fn run_with_caller_image(tag: &str, router: &str, caller: &str) -> MatrixReport {
    let out = std::env::temp_dir().join(format!("natter-vi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut docker = DockerOptions {
        image: router.to_owned(),
        ..DockerOptions::default()
    };
    docker.host_images.insert(1, caller.to_owned());
    let opts = MatrixOptions {
        backend: Backend::Docker,
        docker,
        client_a: Some(IMAGE_CLIENT.into()),
        ..MatrixOptions::new(
            out.clone(),
            vec![(NatType::FullCone, NatType::PortRestricted)],
            Binaries::in_dir(&bin_dir()).expect("natter binaries"),
            env!("CARGO_BIN_EXE_natter-interop-tests").into(),
        )
    };
    let report = scenario::run_matrix(&opts).unwrap_or_else(|e| panic!("matrix ({tag}): {e}"));
    let md = std::fs::read_to_string(out.join("matrix.md")).unwrap();
    assert!(
        md.contains(caller),
        "matrix.md names the caller's image: {md}"
    );
    if tag == "bumped" {
        assert!(md.contains("INCOMPATIBLE"), "{md}");
    }
    let _ = std::fs::remove_dir_all(&out);
    report
}

#[test]
fn a_build_speaking_another_protocol_version_is_reported_incompatible() {
    if !docker::engine_available() {
        eprintln!(
            "SKIPPED version interop: no Docker engine answers (`docker version` failed); \
             the docker lab was not exercised"
        );
        return;
    }
    let _turn = one_lab_at_a_time();
    let mut images = TestImages::build("vi");
    let router = images.of("natter-router");
    let same = images.of("natter");
    let bumped = images.derive("natter-bumped", "natter", "ENV NATTER_TEST_WIRE_VERSION=3");

    // 1. the same build from its image: compatible, connects
    let r = run_with_caller_image("same", &router, &same);
    let c = &r.cells[0];
    let t = &c.trial_results[0];
    assert_eq!(c.connected, 1, "{t:?}");
    assert_eq!(c.passed(), 1, "{t:?}");
    assert_eq!(c.incompatible(), 0, "{t:?}");
    assert!(
        r.clients.as_ref().unwrap()[0].contains(&same),
        "{:?}",
        r.clients
    );

    // 2. the bumped build: refused at its first envelope, reported as such
    let r = run_with_caller_image("bumped", &router, &bumped);
    let c = &r.cells[0];
    let t = &c.trial_results[0];
    assert!(c.self_check, "the NATs are fine: {c:?}");
    assert_eq!(c.connected, 0, "{t:?}");
    assert_eq!(c.passed(), 0, "{t:?}");
    assert_eq!(
        c.incompatible(),
        1,
        "not reported as an incompatibility: {t:?}"
    );
    let why = t.incompatible.as_deref().unwrap();
    assert!(
        why.contains(VERSION_REFUSED) && why.contains("version 3"),
        "the refusal names the version: {why}"
    );

    let left = leftovers(std::process::id());
    assert!(left.is_empty(), "the docker lab left {left:?}");
}
