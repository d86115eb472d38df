//! A throwaway PostgreSQL cluster for tests: Debian's `postgresql` package
//! (installed by `scripts/deps`), `initdb` into a temporary directory,
//! `postgres` listening only on a Unix socket in that directory (no TCP),
//! trust authentication, stopped and deleted when dropped.
//!
//! PostgreSQL refuses to run as root; as root the cluster runs as the
//! `postgres` system user (`runuser`), its directory chowned to it.
//!
//! One cluster serves a whole test binary ([`PgCluster::shared`]), one
//! database per test ([`PgCluster::create_database`]). A `static` is never
//! dropped, so every cluster also has a watcher: a shell holding the read end
//! of a pipe whose write end only this process has. When the process ends,
//! however it ends (a failed test, a panic, `SIGKILL`), the pipe closes and
//! the watcher stops the server and deletes the directory. [`Drop`] does the
//! same at once and waits for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The socket's port number (only names the socket file: no TCP).
const PORT: u16 = 5432;

pub struct PgCluster {
    /// The temporary directory: `data/`, the socket, `log`.
    root: PathBuf,
    bin: PathBuf,
    /// `Some("postgres")` when running as root.
    run_as: Option<String>,
    /// Its end closing tells the watcher to clean up.
    watcher_pipe: Option<ChildStdin>,
    watcher: Child,
    next_db: AtomicUsize,
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` (or `NATTER_PG_BIN`).
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("NATTER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/deps",
    )
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("runs id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

impl PgCluster {
    /// The cluster this test binary shares, started on first use.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    /// Makes and starts a new cluster (a few seconds).
    pub fn start() -> PgCluster {
        let bin = pg_bin();
        let root = tempfile::Builder::new()
            .prefix("natter-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args([&format!("{user}:"), root.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown {user} {}", root.display());
        }
        // The watcher first: from here on the directory goes away with us.
        let data = root.join("data");
        let pg_ctl = bin.join("pg_ctl");
        let runner = run_as
            .as_ref()
            .map_or_else(String::new, |u| format!("runuser -u {u} -- "));
        let script = format!(
            "cat >/dev/null; {runner}'{ctl}' -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{root}'",
            ctl = pg_ctl.display(),
            data = data.display(),
            root = root.display(),
        );
        let mut watcher = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C on the test run reaches the
            // tests, not the cleanup.
            .process_group(0)
            .spawn()
            .expect("starts the watcher shell");
        let watcher_pipe = watcher.stdin.take();
        let cluster = PgCluster {
            root,
            bin,
            run_as,
            watcher_pipe,
            watcher,
            next_db: AtomicUsize::new(0),
        };
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        let options = format!(
            "-k {sock} -h '' -p {PORT} -F -c max_connections=300 -c shared_buffers=16MB",
            sock = cluster.root.display()
        );
        cluster.run_ok(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                cluster.root.join("log").to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        cluster
    }

    /// Runs one of the cluster's programs as its user; panics with its
    /// output if it fails.
    fn run_ok(&self, program: &str, args: &[&str]) -> String {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        // The server must not share the test's process group either (a
        // Ctrl-C would kill it before the watcher stops it cleanly).
        let out = command
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .process_group(0)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        let log = std::fs::read_to_string(self.root.join("log")).unwrap_or_default();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\nserver log:\n{log}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The directory holding the socket.
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// The sqlx URL of database `name` over the Unix socket.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres:///{name}?host={}&port={PORT}&user=postgres",
            self.root.display()
        )
    }

    /// Runs `sql` in the `postgres` database with `psql`.
    pub fn psql(&self, sql: &str) -> String {
        let sock = self.root.to_str().unwrap().to_owned();
        let port = PORT.to_string();
        self.run_ok(
            "psql",
            &[
                "-h",
                &sock,
                "-p",
                &port,
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    /// A new empty database; returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql(&format!("CREATE DATABASE {name}"));
        self.url(&name)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Closing the pipe starts the watcher's cleanup; wait for it.
        if let Some(mut pipe) = self.watcher_pipe.take() {
            let _ = pipe.flush();
        }
        let _ = self.watcher.wait();
    }
}
