//! A whole private network of real processes for end-to-end tests: the
//! `natter-login` and `natter-supernode` binaries (built by `cargo test
//! --workspace` next to `natter`) on loopback, optionally inside a network
//! namespace of the test's own with nftables packet loss on its loopback.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod call;
pub mod online;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery staple";

/// A binary of the workspace, next to the `natter` binary under test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let natter = PathBuf::from(env!("CARGO_BIN_EXE_natter"));
    let path = natter.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (or `cargo build -p natter-login -p natter-supernode`)",
        path.display()
    );
    path
}

/// A network namespace made by this test, deleted on drop.
pub struct Netns {
    pub name: String,
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} cannot run ({e}); this test needs root with iproute2 and nftables",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A namespace with only a loopback interface; `loss_percent` of the
    /// packets on it are dropped at random (nftables numgen, no netem here).
    pub fn new(tag: &str, loss_percent: u32) -> Self {
        let name = format!("natter-t{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        sh(&[
            "ip", "netns", "exec", &ns.name, "ip", "link", "set", "lo", "up",
        ]);
        if loss_percent > 0 {
            let rules = format!(
                "table inet loss {{\n  chain out {{\n    type filter hook output priority 0; policy accept;\n    \
                 meta l4proto udp numgen random mod 100 < {loss_percent} drop\n  }}\n}}\n"
            );
            nft(&ns.name, &rules);
        }
        ns
    }
}

/// Loads an nftables ruleset into namespace `ns`.
fn nft(ns: &str, rules: &str) {
    let mut nft = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft is needed: run scripts/deps");
    std::io::Write::write_all(&mut nft.stdin.take().unwrap(), rules.as_bytes()).unwrap();
    let out = nft.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Login server + supernodes as real processes, killed on drop.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub login_addr: SocketAddr,
    pub login_key: PathBuf,
    pub supernodes: Vec<SocketAddr>,
    /// Each supernode's Prometheus endpoint (`--metrics`), on the loopback
    /// of the cluster's namespace (read it with [`Cluster::scrape`]).
    pub metrics: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
    sn_children: Vec<Option<Child>>,
    pub netns: Option<Netns>,
    /// Extra environment of every `natter` process (e.g. `NATTER_KEYLOG`).
    pub natter_env: Vec<(String, PathBuf)>,
}

/// A free UDP port whose next two ports are free too (a supernode serves
/// STUN and its relay on port + 1, with an alternate port after it), and
/// free on TCP as well (servers listen for TLS on the same port number).
fn free_port() -> u16 {
    loop {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let next_free = (1..=2).all(|k| {
            port.checked_add(k)
                .is_some_and(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok())
        });
        if next_free && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

impl Cluster {
    /// Starts a login server and `supernodes` meshed supernodes.
    pub fn start(supernodes: usize, netns: Option<Netns>) -> Self {
        Self::start_with(supernodes, netns, &[])
    }

    /// [`Cluster::start`] with more options for `natter-login serve`.
    pub fn start_with(supernodes: usize, netns: Option<Netns>, login_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let login_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cluster = Self {
            login_key: dir.path().join("login/login-key.pub"),
            dir,
            login_addr,
            supernodes: Vec::new(),
            metrics: Vec::new(),
            children: Vec::new(),
            sn_children: Vec::new(),
            netns,
            natter_env: Vec::new(),
        };
        let login_dir = cluster.dir.path().join("login");
        let child = cluster
            .command(&workspace_bin("natter-login"))
            .args(["serve", "--listen", &login_addr.to_string()])
            .args(["--tcp-listen", &login_addr.to_string(), "--data-dir"])
            .arg(&login_dir)
            .args(["--argon2-m-kib", "1024", "--argon2-t", "1"])
            .args(login_args)
            .stderr(log_file(&cluster.dir.path().join("login.log")))
            .spawn()
            .unwrap();
        cluster.children.push(Some(child));
        wait_for(|| cluster.login_key.exists(), "login-key.pub");
        wait_for(
            || login_dir.join("natter-login.db").exists(),
            "the login database",
        );
        for i in 0..supernodes {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            // Each supernode enrols with a one-time token, as an operator
            // would hand out (`natter-login supernodes token`).
            let token = Command::new(workspace_bin("natter-login"))
                .args(["supernodes", "token", "--data-dir"])
                .arg(&login_dir)
                .output()
                .unwrap();
            assert!(token.status.success(), "{token:?}");
            let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
            let mut cmd = cluster.command(&workspace_bin("natter-supernode"));
            cmd.args(["--enrol", &token]);
            cmd.args([
                "--listen",
                &addr.to_string(),
                "--tcp-listen",
                &addr.to_string(),
                "--login",
                &login_addr.to_string(),
            ])
            .arg("--login-key")
            .arg(&cluster.login_key)
            .arg("--data-dir")
            .arg(cluster.dir.path().join(format!("sn{i}")));
            let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            cmd.arg(format!("--metrics={metrics}"));
            cluster.metrics.push(metrics);
            for peer in &cluster.supernodes {
                cmd.args(["--peer", &peer.to_string()]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(log_file(&cluster.dir.path().join(format!("sn{i}.log"))))
                .spawn()
                .unwrap();
            cluster.sn_children.push(Some(child));
            cluster.supernodes.push(addr);
        }
        // Ready when every supernode is certified and linked to every other
        // (each side logs a certified link once): host caches and searches
        // span the whole mesh from the first join on. (A fixed sleep here
        // was too short on a loaded machine: enrolment, certification and
        // the link hellos are RSA work.)
        for i in 0..supernodes {
            let log = cluster.dir.path().join(format!("sn{i}.log"));
            wait_for(
                || {
                    std::fs::read_to_string(&log)
                        .is_ok_and(|t| t.contains("supernode certificate installed"))
                        && linked_peers(&log) + 1 >= supernodes
                },
                &format!("supernode {i}'s certificate and links to the mesh"),
            );
        }
        cluster
    }

    /// A command run inside the cluster's namespace, if it has one.
    pub fn command(&self, program: &Path) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", &ns.name]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// Supernode `i`'s Prometheus page (`GET /metrics`, fetched with curl
    /// inside the cluster's namespace).
    pub fn scrape(&self, i: usize) -> String {
        let out = self
            .command(Path::new("curl"))
            .args(["-sS", "--fail", "--max-time", "10"])
            .arg(format!("http://{}/metrics", self.metrics[i]))
            .output()
            .expect("curl runs (scripts/deps installs it)");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Supernode `i`'s address, as a `--bootstrap` argument.
    pub fn sn(&self, i: usize) -> String {
        self.supernodes[i].to_string()
    }

    /// `user`'s session as its home holds it (certificate, keys).
    pub fn session(&self, user: &str) -> natter_client::Session {
        let key = natter_client::tls::read_login_key(&self.login_key).unwrap();
        natter_client::Home::open_or_default(Some(self.home(user)))
            .unwrap()
            .load(&key, natter_client::now_unix_secs())
            .unwrap()
    }

    pub fn home(&self, user: &str) -> PathBuf {
        self.dir.path().join(user)
    }

    /// `natter --home DIR/user --login .. --login-key ..` plus `args`.
    pub fn natter(&self, user: &str, args: &[&str]) -> Command {
        let mut cmd = self.command(Path::new(env!("CARGO_BIN_EXE_natter")));
        cmd.arg("--home")
            .arg(self.home(user))
            .args(["--login", &self.login_addr.to_string()])
            .arg("--login-key")
            .arg(&self.login_key)
            .args(args)
            .env("NATTER_PASSWORD", PASSWORD)
            .envs(self.natter_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `natter` to completion (at most `limit`).
    pub fn run(&self, user: &str, args: &[&str], limit: Duration) -> Output {
        let child = self
            .natter(user, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, limit)
    }

    /// Registers and logs in `user`, seeding its host cache with `bootstrap`.
    pub fn add_user(&self, user: &str) {
        for step in [["register", user], ["login", user]] {
            let out = self.run(user, &step, Duration::from_secs(30));
            assert!(
                out.status.success(),
                "{step:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Blocks UDP for every client in the cluster's namespace, as a
    /// firewall that lets out only TCP would: UDP passes only between the
    /// servers' own ports (supernode links, announces), so clients must
    /// fall back to TLS over TCP for everything.
    pub fn block_client_udp(&self) {
        let ns = self.netns.as_ref().expect("a namespace to firewall");
        let mut ports = vec![self.login_addr.port()];
        for sn in &self.supernodes {
            ports.extend([sn.port(), sn.port() + 1, sn.port() + 2]);
        }
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let rules = format!(
            "table inet fw {{\n  set servers {{ type inet_service; elements = {{ {} }} }}\n  \
             chain out {{\n    type filter hook output priority 0; policy accept;\n    \
             udp sport != @servers drop\n    udp dport != @servers drop\n  }}\n}}\n",
            ports.join(", ")
        );
        nft(&ns.name, &rules);
    }

    /// Kills supernode `i` at once (SIGKILL: no goodbye to anyone).
    pub fn kill_supernode(&mut self, i: usize) {
        if let Some(mut child) = self.sn_children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .children
            .iter_mut()
            .chain(self.sn_children.iter_mut())
            .flatten()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn log_file(path: &Path) -> Stdio {
    Stdio::from(std::fs::File::create(path).unwrap())
}

/// How many distinct peers a supernode's log says it linked to.
fn linked_peers(log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("supernode link up"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("peer=")))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

pub fn wait_for(mut ready: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit within `limit` (killing it otherwise) and
/// returns its output.
pub fn wait_output(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "timed out after {limit:?}; stdout: {}; stderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}
