#![allow(clippy::expect_used)]
//! The container images of this build, for the docker lab's tests:
//! `deploy/build-images --bin-dir <the binaries under test> --tag TAG` (no
//! registry, nothing pulled), tagged for one test run only and removed
//! (those tags) when dropped, also when the test fails.

use std::path::Path;
use std::process::Command;

use super::bin_dir;

/// The images deploy/build-images makes.
pub const IMAGES: [&str; 4] = [
    "natter-login",
    "natter-supernode",
    "natter",
    "natter-router",
];

/// This build's images under a tag of their own, and images derived from
/// them; `rmi` of all of them on drop.
#[derive(Debug)]
pub struct TestImages {
    /// The tag.
    pub tag: String,
    extra: Vec<String>,
}

impl TestImages {
    /// Builds the images of the binaries under test, tagged `<name>-<pid>`.
    pub fn build(name: &str) -> TestImages {
        let images = TestImages {
            tag: format!("{name}-{}", std::process::id()),
            extra: Vec::new(),
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let out = Command::new(root.join("deploy/build-images"))
            .arg("--bin-dir")
            .arg(bin_dir())
            .args(["--tag", &images.tag])
            .output()
            .expect("run deploy/build-images");
        assert!(
            out.status.success(),
            "deploy/build-images failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        images
    }

    /// `image:tag`.
    pub fn of(&self, image: &str) -> String {
        format!("{image}:{}", self.tag)
    }

    /// Builds image `name:tag` from the Dockerfile lines after `FROM
    /// <base>:tag` (a local image: nothing is pulled).
    pub fn derive(&mut self, name: &str, base: &str, lines: &str) -> String {
        let image = self.of(name);
        let dockerfile = format!("FROM {}\n{lines}\n", self.of(base));
        let mut child = Command::new("docker")
            .args(["build", "-q", "-t", &image, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run docker build");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dockerfile.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker build of {image} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.extra.push(image.clone());
        image
    }
}

impl Drop for TestImages {
    fn drop(&mut self) {
        let tags: Vec<String> = self
            .extra
            .iter()
            .cloned()
            .chain(IMAGES.iter().map(|i| self.of(i)))
            .collect();
        let _ = Command::new("docker").arg("rmi").args(&tags).output();
    }
}

/// What the lab of process `pid` left in the Docker engine: containers,
/// networks (by their owner label) and DOCKER-USER rules (by their
/// comment), one line each.
pub fn leftovers(pid: u32) -> Vec<String> {
    let label = format!("label=natter.lab.owner={pid}");
    let mut left = Vec::new();
    for args in [
        vec![
            "ps",
            "-a",
            "--filter",
            &label,
            "--format",
            "container {{.Names}}",
        ],
        vec![
            "network",
            "ls",
            "--filter",
            &label,
            "--format",
            "network {{.Name}}",
        ],
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        left.extend(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        );
    }
    let rules = Command::new("iptables")
        .args(["-S", "DOCKER-USER"])
        .output()
        .unwrap();
    let mine = format!("natter-lab:{pid}:");
    left.extend(
        String::from_utf8_lossy(&rules.stdout)
            .lines()
            .filter(|l| l.contains(&mine))
            .map(|l| format!("rule {l}")),
    );
    left
}
