//! The topology builder: network namespaces, veths, a bridge "internet",
//! NAT routers, and the processes started inside them.
//!
//! ```text
//!                      <p>-w  ("the internet": bridge br0, routes between
//!                        br0    198.51.100.1/24 and 203.0.113.254/24)
//!     +--------+--------+---------+---------+--------+--------+
//!   <p>-s1   <p>-s2   <p>-lg    <p>-n1    <p>-n2   <p>-r1xG  <p>-r2xG ...
//!   .10 .11  .20      .5        .30 .31   .40 .41  wan0 203.0.113.N
//!   (probe reflector) (login)   (supernodes)       lan0 10.N.0.1/24
//!                                                    |
//!                                                  <p>-h1xG 10.N.0.2 (default via router)
//!                                                  (open: 192.0.2.N/32, routed)
//! ```
//!
//! Every namespace of one lab starts with a prefix `nt<pid>-<k>` (`pid` = the
//! owning process, `k` = a per-process counter), so concurrent labs (other
//! processes, or parallel tests in one process) never collide, and
//! [`cleanup_stale`] can tell the namespaces of a dead process. Interfaces
//! inside namespaces have fixed short names (`wan0`, `lan0`, `eth0`, `br0`);
//! bridge ports in the internet namespace are `p<role>` (at most 15 chars).
//! Only veths between the lab's own namespaces exist: no namespace has a
//! route to the machine's own network, traffic never leaves the lab.
//!
//! Teardown always happens: [`Lab`]'s `Drop` kills the processes it started
//! (and anything else still running in its namespaces), deletes the veths
//! (synchronous, unlike `ip netns del`: caveat 4) and then the namespaces.
//!
//! [`Backend::Docker`] builds the same topology from containers and Docker
//! networks ([`crate::docker`]): each container's network namespace is
//! attached under the name above, so everything after creating a node (its
//! addresses, routes, the routers' nftables recipes, the processes) is the
//! same code for both backends; [`Lab::command`] starts a program given by
//! path inside its container.

use std::collections::BTreeMap;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::docker::{self, DockerOptions, Engine, NetworkSpec};
use crate::error::{LabError, Result};
use crate::exec;
use crate::nat::{self, Impairment, NatType};

/// Probe reflector s1, first address.
pub const S1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// Probe reflector s1, second address (address-dependence tests).
pub const S1B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
/// Probe reflector s2 (another host).
pub const S2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The login server.
pub const LOGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 5);
/// Supernode 1 (and its second address).
pub const SN1: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 30),
    Ipv4Addr::new(198, 51, 100, 31),
];
/// Supernode 2 (and its second address).
pub const SN2: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 40),
    Ipv4Addr::new(198, 51, 100, 41),
];
/// The internet's address on the server subnet (servers' default gateway).
pub const SERVER_GW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The internet's address on the router subnet (routers' default gateway).
pub const ROUTER_GW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The reflector's two UDP ports.
pub const PROBE_PORTS: [u16; 2] = [3478, 3479];
/// The reflector's TCP ports (80 and 443 pass a udp-blocked firewall, 8080 does not).
pub const PROBE_TCP_PORTS: [u16; 3] = [80, 443, 8080];

const CMD_TIMEOUT: Duration = Duration::from_secs(15);
/// Docker's own address on the public network (its bridge on the host;
/// no lab address, and no lab route leads there).
const DOCKER_PUB_GATEWAY: &str = "198.51.100.254";
/// Lifetime of a reflector process that nobody stops (it stops by itself).
const REFLECTOR_MAX_SECS: u32 = 6 * 3600;

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// What the lab is built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// Network namespaces and veths (the default, and CI's).
    #[default]
    Netns,
    /// Docker containers and networks ([`crate::docker`]).
    Docker,
}

impl Backend {
    /// The backend's name as the command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Netns => "netns",
            Backend::Docker => "docker",
        }
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// The `natter-interop-tests` binary (its hidden `probe-*` subcommands
    /// run inside the namespaces).
    pub probe_exe: PathBuf,
    /// Where logs of the lab's processes go (created if missing).
    pub work_dir: PathBuf,
    /// Lifetime of the routers' dynamic NAT state (map/set timeouts), seconds.
    pub map_timeout_s: u32,
    /// Start the probe reflectors s1 and s2.
    pub reflectors: bool,
    /// Seed of the impairment links' RNGs (client N's link uses
    /// `wire_seed + 2 * N`, see [`Lab::set_impairment`]).
    pub wire_seed: u64,
    /// Namespaces or containers.
    pub backend: Backend,
    /// The Docker backend's settings (image, mounts); the lab adds its own
    /// work dir and the probe binary's directory to the mounts.
    pub docker: DockerOptions,
}

impl LabConfig {
    /// A config whose probe binary is `probe_exe` and whose logs go to a
    /// fresh directory under the system temp dir.
    pub fn new(probe_exe: impl Into<PathBuf>) -> Self {
        LabConfig {
            probe_exe: probe_exe.into(),
            work_dir: std::env::temp_dir().join(format!(
                "natter-lab-{}-{}",
                std::process::id(),
                LAB_COUNTER.load(Ordering::Relaxed)
            )),
            map_timeout_s: 300,
            reflectors: true,
            wire_seed: 1,
            backend: Backend::Netns,
            docker: DockerOptions::default(),
        }
    }
}

/// A client side of the lab: a router namespace and the host behind it.
#[derive(Debug, Clone)]
pub struct Client {
    /// The router number N (wan 203.0.113.N, lan 10.N.0.0/24).
    pub index: u8,
    /// The declared NAT type.
    pub nat: NatType,
    /// The router's namespace.
    pub router_ns: String,
    /// The host's namespace.
    pub host_ns: String,
    /// The router's public address.
    pub wan_ip: Ipv4Addr,
    /// The host's own address (10.N.0.2, or the public 192.0.2.N for `open`).
    pub host_ip: Ipv4Addr,
    /// The bridge port in the internet namespace (netns backend).
    port: String,
    /// The LAN's Docker network (docker backend).
    lan_net: String,
}

/// Handle of a process started with [`Lab::spawn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcId(usize);

#[derive(Debug)]
struct Proc {
    name: String,
    ns: String,
    child: Option<Child>,
}

/// A running lab. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    cfg: LabConfig,
    wan_ns: String,
    /// Namespaces in creation order (deleted in reverse).
    namespaces: Vec<String>,
    servers: BTreeMap<String, String>,
    procs: Vec<Proc>,
    generation: u32,
    /// Impairment links, by the router namespace they serve.
    wires: BTreeMap<String, Wire>,
    /// The Docker backend's containers and networks (their network
    /// namespaces are attached under the same names).
    docker: Option<Engine>,
}

/// A client's impairment link: its namespace, the bridge port facing it
/// and the wire process (if running).
#[derive(Debug)]
struct Wire {
    ns: String,
    bridge_port: String,
    proc: Option<ProcId>,
}

fn ip() -> Command {
    Command::new("ip")
}

fn run_ip(args: &[&str]) -> Result<exec::Output> {
    let mut c = ip();
    c.args(args);
    exec::run(c, None, CMD_TIMEOUT)
}

/// `ip netns exec NS PROGRAM` as a command.
pub fn netns_command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = ip();
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// Checks that the lab can run here: root, and the given tools on PATH
/// (`ip` and `nft` always). The error names exactly what is missing.
pub fn check_prereqs(extra_tools: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .unwrap_or_default();
    if uid != "0" {
        missing.push(format!(
            "root privileges (effective uid is {uid}; network namespaces and nftables need root)"
        ));
    }
    for tool in ["ip", "nft", "sysctl", "kill"].iter().chain(extra_tools) {
        if which(tool).is_none() {
            let pkg = match *tool {
                "ip" | "ss" => " (package iproute2)",
                "nft" => " (package nftables)",
                "sysctl" => " (package procps)",
                "espeak-ng" => " (package espeak-ng)",
                "turnserver" => " (package coturn)",
                _ => "",
            };
            missing.push(format!("the `{tool}` command{pkg} is not on PATH"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Missing(missing.join("; ")))
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Names of all network namespaces on the machine.
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run_ip(&["netns", "list"])?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect())
}

/// The pid encoded in a lab namespace name (`nt<pid>-...`), if it is one.
pub fn owner_pid(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix("nt")?;
    let (pid, tail) = rest.split_once('-')?;
    if tail.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes the namespaces of earlier lab runs whose owning process is dead
/// (crashed or killed runs), and the processes still running in them.
/// Returns the names it deleted.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let mut gone = Vec::new();
    for ns in list_namespaces()? {
        let Some(pid) = owner_pid(&ns) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Err(e) = delete_namespace(&ns) {
            // another lab (e.g. a parallel test) may have removed it meanwhile
            if list_namespaces()?.contains(&ns) {
                return Err(e);
            }
        }
        gone.push(ns);
    }
    Ok(gone)
}

/// Kills everything in `ns`, deletes its interfaces (synchronously, so their
/// veth peers vanish at once), then the namespace.
pub fn delete_namespace(ns: &str) -> Result<()> {
    let pids = |ns: &str| -> Vec<u32> {
        run_ip(&["netns", "pids", ns])
            .map(|o| {
                o.stdout
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids(ns);
    if !first.is_empty() {
        for p in &first {
            exec::signal(*p, "TERM");
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && !pids(ns).is_empty() {
            thread::sleep(Duration::from_millis(25));
        }
        for p in pids(ns) {
            exec::signal(p, "KILL");
        }
    }
    if let Ok(out) = run_ip(&["-n", ns, "-o", "link", "show"]) {
        for line in out.stdout.lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if name != "lo" {
                // a veth may already be gone with its peer: ignore errors
                let _ = run_ip(&["-n", ns, "link", "del", name]);
            }
        }
    }
    run_ip(&["netns", "del", ns])?;
    Ok(())
}

impl Lab {
    /// Builds the internet namespace and, if configured, the probe reflector
    /// hosts s1 (two addresses) and s2 with their reflectors running.
    /// Checks prerequisites and removes stale namespaces of dead runs first.
    pub fn new(mut cfg: LabConfig) -> Result<Lab> {
        check_prereqs(&[])?;
        let stale = cleanup_stale()?;
        if !stale.is_empty() {
            eprintln!("natter lab: removed stale namespaces {stale:?}");
        }
        fs::create_dir_all(&cfg.work_dir)
            .map_err(|e| LabError::io(format!("create {}", cfg.work_dir.display()), e))?;
        let k = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nt{}-{k}", std::process::id());
        let wan_ns = format!("{prefix}-w");
        let engine = match cfg.backend {
            Backend::Netns => None,
            Backend::Docker => {
                let mut opts = cfg.docker.clone();
                let exe_dir = cfg.probe_exe.parent().map(Path::to_path_buf);
                opts.mounts.extend(exe_dir);
                opts.mounts.push(cfg.work_dir.clone());
                opts.mounts.sort();
                opts.mounts.dedup();
                cfg.docker = opts.clone();
                Some(Engine::new(&prefix, opts)?)
            }
        };
        let mut lab = Lab {
            prefix,
            cfg,
            wan_ns: wan_ns.clone(),
            namespaces: Vec::new(),
            servers: BTreeMap::new(),
            procs: Vec::new(),
            generation: 0,
            wires: BTreeMap::new(),
            docker: engine,
        };
        // On any error below, dropping `lab` removes what was built.
        if lab.docker.is_some() {
            lab.docker_internet()?;
        } else {
            lab.netns_internet()?;
        }
        if lab.cfg.reflectors {
            lab.add_server("s1", &[S1, S1B])?;
            lab.add_server("s2", &[S2])?;
            lab.start_reflectors()?;
        }
        Ok(lab)
    }

    /// The internet of the netns backend: namespace `<p>-w` with bridge br0.
    fn netns_internet(&mut self) -> Result<()> {
        let wan_ns = self.wan_ns.clone();
        let lab = self;
        lab.new_ns(&wan_ns)?;
        let w = wan_ns.as_str();
        run_ip(&["-n", w, "link", "add", "br0", "type", "bridge"])?;
        run_ip(&["-n", w, "link", "set", "br0", "up"])?;
        run_ip(&[
            "-n",
            w,
            "addr",
            "add",
            &format!("{SERVER_GW}/24"),
            "dev",
            "br0",
        ])?;
        run_ip(&[
            "-n",
            w,
            "addr",
            "add",
            &format!("{ROUTER_GW}/24"),
            "dev",
            "br0",
        ])?;
        // routes between the two public subnets on the same bridge: no redirects
        lab.sysctl(
            w,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.br0.send_redirects=0",
            ],
        )?;
        // bridged frames must not be seen by netfilter here (may not exist: ignore)
        let _ = exec::run_unchecked(
            {
                let mut c = netns_command(w, "sysctl");
                c.args(["-qw", "net.bridge.bridge-nf-call-iptables=0"]);
                c
            },
            None,
            CMD_TIMEOUT,
        );
        Ok(())
    }

    /// The internet of the docker backend: network `<p>-pub` and container
    /// `<p>-w` on it with both gateway addresses, forwarding between them.
    fn docker_internet(&mut self) -> Result<()> {
        let net = format!("{}-pub", self.prefix);
        let w = self.wan_ns.clone();
        let engine = self.engine()?;
        engine.network(
            &net,
            NetworkSpec {
                subnet: "198.51.100.0/24",
                gateway: DOCKER_PUB_GATEWAY,
            },
        )?;
        engine.container(&w, &net, Some(&SERVER_GW.to_string()), None)?;
        let eth = docker::interface_with(&w, &SERVER_GW.to_string())?;
        run_ip(&[
            "-n",
            &w,
            "addr",
            "add",
            &format!("{ROUTER_GW}/24"),
            "dev",
            &eth,
        ])?;
        self.quiet_ipv6(&w)?;
        self.sysctl(
            &w,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                &format!("net.ipv4.conf.{eth}.send_redirects=0"),
            ],
        )
    }

    fn engine(&mut self) -> Result<&mut Engine> {
        self.docker
            .as_mut()
            .ok_or_else(|| LabError::Other("not a docker lab".into()))
    }

    /// The backend this lab runs on.
    pub fn backend(&self) -> Backend {
        self.cfg.backend
    }

    /// The command that runs `program` in `ns` (a namespace, or a container
    /// of the docker backend). In a container, a program given by path runs
    /// inside it (its file system, the image's environment: `nsenter`); a
    /// tool given by name runs from the host in its network namespace, as in
    /// the namespace backend.
    pub fn command(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let program = program.as_ref();
        if let Some((pid, env)) = self.docker.as_ref().and_then(|d| d.process_of(ns))
            && Path::new(program).is_absolute()
        {
            let mut c = Command::new("nsenter");
            c.arg("--target")
                .arg(pid.to_string())
                .args(["--mount", "--uts", "--ipc", "--net", "--"])
                .arg(program);
            for (k, v) in env {
                c.env(k, v);
            }
            return c;
        }
        netns_command(ns, program)
    }

    fn ns_command(
        &self,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let mut c = self.command(ns, program);
        c.args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// The prefix of every namespace name of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's configuration.
    pub fn config(&self) -> &LabConfig {
        &self.cfg
    }

    /// The lab's namespaces that exist now (docker backend: the containers,
    /// whose network namespaces are attached under the same names).
    pub fn namespaces(&self) -> &[String] {
        match &self.docker {
            Some(d) => d.containers(),
            None => &self.namespaces,
        }
    }

    /// The namespace of server `role` (see [`Lab::add_server`]).
    pub fn server_ns(&self, role: &str) -> Option<&str> {
        self.servers.get(role).map(String::as_str)
    }

    fn new_ns(&mut self, ns: &str) -> Result<()> {
        run_ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_owned());
        run_ip(&["-n", ns, "link", "set", "lo", "up"])?;
        self.quiet_ipv6(ns)
    }

    /// IPv4 only, quiet (no IPv6 RS/DAD chatter).
    fn quiet_ipv6(&self, ns: &str) -> Result<()> {
        self.sysctl(
            ns,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )
    }

    fn sysctl(&self, ns: &str, settings: &[&str]) -> Result<()> {
        let mut c = netns_command(ns, "sysctl");
        c.arg("-qw").args(settings);
        exec::run(c, None, CMD_TIMEOUT).map(|_| ())
    }

    /// A veth from `ns` (interface `ifname`) to bridge port `port` on br0.
    fn attach_wan(&self, ns: &str, ifname: &str, port: &str) -> Result<()> {
        let w = self.wan_ns.as_str();
        run_ip(&[
            "link", "add", ifname, "netns", ns, "type", "veth", "peer", "name", port, "netns", w,
        ])?;
        run_ip(&["-n", w, "link", "set", port, "master", "br0", "up"])?;
        run_ip(&["-n", ns, "link", "set", ifname, "up"])?;
        Ok(())
    }

    /// Adds a server host `role` (short: at most 6 chars) on the public server
    /// subnet with the given addresses (198.51.100.0/24); returns its namespace.
    pub fn add_server(&mut self, role: &str, addrs: &[Ipv4Addr]) -> Result<String> {
        if role.len() > 6 || self.servers.contains_key(role) {
            return Err(LabError::Other(format!(
                "server role `{role}` is too long or already exists"
            )));
        }
        let ns = format!("{}-{role}", self.prefix);
        let Some(first) = addrs.first() else {
            return Err(LabError::Other(format!("server `{role}` has no address")));
        };
        let extra = if self.docker.is_some() {
            let net = format!("{}-pub", self.prefix);
            self.engine()?
                .container(&ns, &net, Some(&first.to_string()), None)?;
            let eth = docker::interface_with(&ns, &first.to_string())?;
            if eth != "eth0" {
                return Err(LabError::Other(format!(
                    "server {ns}: docker named its interface {eth}, not eth0"
                )));
            }
            self.quiet_ipv6(&ns)?;
            &addrs[1..]
        } else {
            self.new_ns(&ns)?;
            self.attach_wan(&ns, "eth0", &format!("p{role}"))?;
            addrs
        };
        for a in extra {
            run_ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", "eth0"])?;
        }
        run_ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &SERVER_GW.to_string(),
        ])?;
        self.servers.insert(role.to_owned(), ns.clone());
        Ok(ns)
    }

    fn start_reflectors(&mut self) -> Result<()> {
        let ports = PROBE_PORTS.map(|p| p.to_string()).join(",");
        let tcp = PROBE_TCP_PORTS.map(|p| p.to_string()).join(",");
        let max = REFLECTOR_MAX_SECS.to_string();
        let s1 = format!("{S1},{S1B}");
        let relay = format!("{S2}:{}", PROBE_PORTS[0]);
        let s2 = S2.to_string();
        let p0 = PROBE_PORTS[0].to_string();
        let exe = self.cfg.probe_exe.clone();
        let ns1 = self.servers["s1"].clone();
        let ns2 = self.servers["s2"].clone();
        let a = self.spawn(
            &ns1,
            "reflector-s1",
            &exe,
            &[
                "probe-reflector",
                "--ips",
                &s1,
                "--ports",
                &ports,
                "--tcp",
                &tcp,
                "--relay",
                &relay,
                "--trust",
                &s2,
                "--max-secs",
                &max,
            ],
            &[],
        )?;
        let b = self.spawn(
            &ns2,
            "reflector-s2",
            &exe,
            &[
                "probe-reflector",
                "--ips",
                &s2,
                "--ports",
                &p0,
                "--tcp",
                &tcp,
                "--trust",
                &s1,
                "--max-secs",
                &max,
            ],
            &[],
        )?;
        for id in [a, b] {
            self.wait_for_log(id, "reflector up", Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Adds client side `index` (1..=99): a router of type `nat` and a host
    /// behind it. Namespace names carry a generation number, so a rebuilt
    /// client never reuses the name of one being deleted (caveat 4).
    pub fn add_client(&mut self, index: u8, nat: NatType) -> Result<Client> {
        if !(1..=99).contains(&index) {
            return Err(LabError::Other(format!(
                "client index {index} not in 1..=99"
            )));
        }
        let g = self.generation;
        self.generation += 1;
        let r = format!("{}-r{index}x{g}", self.prefix);
        let h = format!("{}-h{index}x{g}", self.prefix);
        let port = format!("pr{index}x{g}");
        if port.len() > 15 {
            return Err(LabError::Other(format!("interface name {port} too long")));
        }
        let wan_ip = Ipv4Addr::new(203, 0, 113, index);
        let lan_gw = Ipv4Addr::new(10, index, 0, 1);
        let host_ip = if nat == NatType::Open {
            // TEST-NET-1, off the routers' on-link 203.0.113.0/24 (a router
            // would ARP for an on-link address instead of using its gateway)
            Ipv4Addr::new(192, 0, 2, index)
        } else {
            Ipv4Addr::new(10, index, 0, 2)
        };
        let lan_net = format!("{}-l{index}x{g}", self.prefix);
        if self.docker.is_some() {
            self.docker_client_links(index, &r, &h, &lan_net)?;
        } else {
            self.new_ns(&r)?;
            self.new_ns(&h)?;
            self.attach_wan(&r, "wan0", &port)?;
        }
        run_ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{wan_ip}/24"),
            "dev",
            "wan0",
        ])?;
        run_ip(&[
            "-n",
            &r,
            "route",
            "add",
            "default",
            "via",
            &ROUTER_GW.to_string(),
        ])?;
        if self.docker.is_none() {
            run_ip(&[
                "link", "add", "lan0", "netns", &r, "type", "veth", "peer", "name", "eth0",
                "netns", &h,
            ])?;
            run_ip(&["-n", &r, "link", "set", "lan0", "up"])?;
            run_ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("{lan_gw}/24"),
                "dev",
                "lan0",
            ])?;
            run_ip(&["-n", &h, "link", "set", "eth0", "up"])?;
        }
        let gw = lan_gw.to_string();
        if nat == NatType::Open {
            // The router routes a public /32 to its host; the internet knows
            // the way to it. The host's only address is public.
            let host32 = format!("{host_ip}/32");
            if self.docker.is_some() {
                // docker's 10.N.0.2 goes: the host has the public address only
                run_ip(&["-n", &h, "addr", "flush", "dev", "eth0"])?;
            }
            run_ip(&["-n", &h, "addr", "add", &host32, "dev", "eth0"])?;
            run_ip(&["-n", &h, "route", "add", &gw, "dev", "eth0"])?;
            run_ip(&[
                "-n", &h, "route", "add", "default", "via", &gw, "dev", "eth0",
            ])?;
            run_ip(&["-n", &r, "route", "add", &host32, "dev", "lan0"])?;
            run_ip(&[
                "-n",
                &self.wan_ns,
                "route",
                "add",
                &host32,
                "via",
                &wan_ip.to_string(),
            ])?;
        } else {
            if self.docker.is_none() {
                run_ip(&[
                    "-n",
                    &h,
                    "addr",
                    "add",
                    &format!("{host_ip}/24"),
                    "dev",
                    "eth0",
                ])?;
            }
            run_ip(&["-n", &h, "route", "add", "default", "via", &gw])?;
        }
        // forward, and no ICMP redirects when hairpinning lan0 -> lan0
        self.sysctl(
            &r,
            &[
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.lan0.send_redirects=0",
            ],
        )?;
        let lan = format!("10.{index}.0.0/24");
        if let Some(script) = nat::ruleset(nat, &wan_ip.to_string(), &lan, self.cfg.map_timeout_s) {
            self.nft(&r, &script)?;
        }
        Ok(Client {
            index,
            nat,
            router_ns: r,
            host_ns: h,
            wan_ip,
            host_ip,
            port,
            lan_net,
        })
    }

    /// The docker backend's part of [`Lab::add_client`]: the LAN network,
    /// the router container on the public network and the LAN (interfaces
    /// renamed `wan0`, without docker's public address, and `lan0`,
    /// 10.N.0.1), the host container on the LAN (`eth0`, 10.N.0.2), both
    /// namespaces quiet on IPv6.
    fn docker_client_links(&mut self, index: u8, r: &str, h: &str, lan_net: &str) -> Result<()> {
        let pub_net = format!("{}-pub", self.prefix);
        let pub_ip = Ipv4Addr::new(198, 51, 100, 100 + index).to_string();
        let lan_gw = Ipv4Addr::new(10, index, 0, 1).to_string();
        let host_ip = Ipv4Addr::new(10, index, 0, 2).to_string();
        let host_image = self.cfg.docker.host_images.get(&index).cloned();
        let engine = self.engine()?;
        engine.network(
            lan_net,
            NetworkSpec {
                subnet: &format!("10.{index}.0.0/24"),
                gateway: &format!("10.{index}.0.254"),
            },
        )?;
        engine.container(r, &pub_net, Some(&pub_ip), None)?;
        engine.connect(r, lan_net, &lan_gw)?;
        engine.container(h, lan_net, Some(&host_ip), host_image.as_deref())?;
        let wan = docker::interface_with(r, &pub_ip)?;
        let lan = docker::interface_with(r, &lan_gw)?;
        run_ip(&["-n", r, "addr", "flush", "dev", &wan])?;
        for (from, to) in [(wan.as_str(), "wan0"), (lan.as_str(), "lan0")] {
            run_ip(&["-n", r, "link", "set", from, "down"])?;
            run_ip(&["-n", r, "link", "set", from, "name", to])?;
            run_ip(&["-n", r, "link", "set", to, "up"])?;
        }
        let eth = docker::interface_with(h, &host_ip)?;
        if eth != "eth0" {
            return Err(LabError::Other(format!(
                "host {h}: docker named its interface {eth}, not eth0"
            )));
        }
        self.quiet_ipv6(r)?;
        self.quiet_ipv6(h)
    }

    /// Loads an nft script into namespace `ns` (`nft -f -`).
    pub fn nft(&self, ns: &str, script: &str) -> Result<()> {
        let mut c = netns_command(ns, "nft");
        c.args(["-f", "-"]);
        exec::run(c, Some(script), CMD_TIMEOUT).map(|_| ())
    }

    /// Sets (or clears) the impairment of a client's router link.
    ///
    /// Random loss alone is an nft rule in the router. Delay, jitter or
    /// bursty loss go through the userspace wire ([`crate::wire`]): the
    /// first time, the router's bridge port moves into a namespace of its
    /// own (`<router ns>w`) and a new veth joins it to the bridge, so the
    /// router keeps its interface, address, routes and NAT rules; the wire
    /// process forwards between the two and is restarted with the new
    /// parameters on every call (a clean profile leaves it passing frames
    /// through unchanged). Its log is `wire-<router ns>.log`.
    ///
    /// The docker backend has no wire (a router's link is a port of a
    /// Docker bridge): profiles that need one fail there.
    pub fn set_impairment(&mut self, client: &Client, imp: &Impairment) -> Result<()> {
        if self.docker.is_some() && imp.needs_wire() {
            return Err(LabError::Missing(
                "the docker backend has no impairment wire: delay and jitter profiles (wifi, 4g, bad) run on the namespace backend only".into(),
            ));
        }
        self.nft(&client.router_ns, &imp.nft_script())?;
        if !imp.needs_wire() && !self.wires.contains_key(&client.router_ns) {
            return Ok(());
        }
        if !self.wires.contains_key(&client.router_ns) {
            self.build_wire(client)?;
        }
        let params = imp.link_params();
        let seed = self.cfg.wire_seed.wrapping_add(2 * u64::from(client.index));
        let (ns, old) = match self.wires.get_mut(&client.router_ns) {
            Some(w) => (w.ns.clone(), w.proc.take()),
            None => return Err(LabError::Other("wire vanished".into())),
        };
        if let Some(id) = old {
            self.stop(id, "TERM", Duration::from_millis(500));
        }
        let exe = self.cfg.probe_exe.clone();
        let name = format!("wire-{}", client.router_ns);
        let args = [
            "probe-wire".to_owned(),
            "--a".to_owned(),
            client.port.clone(),
            "--b".to_owned(),
            "b0".to_owned(),
            "--delay-us".to_owned(),
            params.delay_us.to_string(),
            "--jitter-us".to_owned(),
            params.jitter_us.to_string(),
            "--loss".to_owned(),
            params.loss.to_string(),
            "--burst".to_owned(),
            params.burst.to_string(),
            "--seed".to_owned(),
            seed.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.spawn(&ns, &name, &exe, &args, &[])?;
        if let Some(w) = self.wires.get_mut(&client.router_ns) {
            w.proc = Some(id);
        }
        self.wait_for_log(id, "wire up", Duration::from_secs(10))
    }

    /// Puts a wire namespace between a client's router and the bridge.
    fn build_wire(&mut self, client: &Client) -> Result<()> {
        let ns = format!("{}w", client.router_ns);
        // q<N>x<G>: same length as the router's port name p r<N>x<G>
        let bridge_port = format!("q{}", &client.port[1..]);
        self.new_ns(&ns)?;
        // registered before anything else can fail, so removal finds it
        self.wires.insert(
            client.router_ns.clone(),
            Wire {
                ns: ns.clone(),
                bridge_port: bridge_port.clone(),
                proc: None,
            },
        );
        let w = self.wan_ns.clone();
        run_ip(&["-n", &w, "link", "set", &client.port, "nomaster"])?;
        run_ip(&["-n", &w, "link", "set", &client.port, "netns", &ns])?;
        run_ip(&[
            "link",
            "add",
            "b0",
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &bridge_port,
            "netns",
            &w,
        ])?;
        run_ip(&["-n", &w, "link", "set", &bridge_port, "master", "br0", "up"])?;
        for dev in [client.port.as_str(), "b0"] {
            run_ip(&["-n", &ns, "link", "set", dev, "promisc", "on", "up"])?;
        }
        // The wire forwards frames of at most one MTU: the two senders into
        // it segment GSO packets (TCP) before they leave (best effort: an
        // older iproute2 may not know the setting; the wire counts oversize
        // frames it had to drop).
        let _ = run_ip(&[
            "-n",
            &client.router_ns,
            "link",
            "set",
            "wan0",
            "gso_max_segs",
            "1",
        ]);
        let _ = run_ip(&["-n", &w, "link", "set", &bridge_port, "gso_max_segs", "1"]);
        Ok(())
    }

    /// Removes a client (its processes, router and host).
    pub fn remove_client(&mut self, client: &Client) -> Result<()> {
        if self.docker.is_some() {
            self.stop_procs_in(&[&client.host_ns, &client.router_ns]);
            if client.nat == NatType::Open {
                let host32 = format!("{}/32", client.host_ip);
                let _ = run_ip(&["-n", &self.wan_ns, "route", "del", &host32]);
            }
            let engine = self.engine()?;
            let h = engine.remove_container(&client.host_ns);
            let r = engine.remove_container(&client.router_ns);
            let n = engine.remove_network(&client.lan_net);
            return h.and(r).and(n);
        }
        let wire = self.wires.remove(&client.router_ns);
        let wire_ns = wire.as_ref().map(|x| x.ns.clone()).unwrap_or_default();
        self.stop_procs_in(&[&client.host_ns, &client.router_ns, &wire_ns]);
        let w = self.wan_ns.clone();
        if let Some(x) = &wire {
            let _ = run_ip(&["-n", &w, "link", "del", &x.bridge_port]);
        }
        if client.nat == NatType::Open {
            let host32 = format!("{}/32", client.host_ip);
            let _ = run_ip(&["-n", &w, "route", "del", &host32]);
        }
        let _ = run_ip(&["-n", &w, "link", "del", &client.port]);
        let mut first_err = None;
        let nss = [&client.host_ns, &client.router_ns, &wire_ns];
        for ns in nss.into_iter().filter(|n| !n.is_empty()) {
            if let Err(e) = delete_namespace(ns) {
                first_err.get_or_insert(e);
            }
            self.namespaces.retain(|n| n != ns);
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Runs `program args` inside `ns` to completion (bounded by `timeout`)
    /// without checking its status.
    pub fn exec_unchecked(
        &self,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<exec::Output> {
        exec::run_unchecked(self.ns_command(ns, program, args, env), None, timeout)
    }

    /// Like [`Lab::exec_unchecked`] but fails unless the command exits 0.
    pub fn exec(
        &self,
        ns: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<exec::Output> {
        exec::run(self.ns_command(ns, program, args, env), None, timeout)
    }

    /// The log file of a process named `name` (stdout and stderr).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.cfg.work_dir.join(format!("{name}.log"))
    }

    /// Starts `program args` in `ns` in the background, stdout+stderr to
    /// [`Lab::log_path`]`(name)`. The lab kills it at teardown at the latest.
    pub fn spawn(
        &mut self,
        ns: &str,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<ProcId> {
        let log = self.log_path(name);
        let f = fs::File::create(&log)
            .map_err(|e| LabError::io(format!("create {}", log.display()), e))?;
        let f2 = f
            .try_clone()
            .map_err(|e| LabError::io(format!("dup {}", log.display()), e))?;
        let mut c = self.ns_command(ns, program, args, env);
        c.stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2));
        let line = exec::describe(&c);
        let child = c
            .spawn()
            .map_err(|source| LabError::Spawn { cmd: line, source })?;
        self.procs.push(Proc {
            name: name.to_owned(),
            ns: ns.to_owned(),
            child: Some(child),
        });
        Ok(ProcId(self.procs.len() - 1))
    }

    /// The log of a spawned process so far.
    pub fn log_of(&self, id: ProcId) -> String {
        self.procs
            .get(id.0)
            .and_then(|p| fs::read_to_string(self.log_path(&p.name)).ok())
            .unwrap_or_default()
    }

    /// The pid of a spawned process (while it runs).
    pub fn pid_of(&self, id: ProcId) -> Option<u32> {
        self.procs
            .get(id.0)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// Waits until the log of `id` contains `needle`; fails if the process
    /// exits first or `timeout` passes.
    pub fn wait_for_log(&mut self, id: ProcId, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_of(id);
            if log.contains(needle) {
                return Ok(());
            }
            let name = self.procs[id.0].name.clone();
            if let Some(st) = self.try_wait(id) {
                return Err(LabError::Other(format!(
                    "{name} exited ({st}) before printing `{needle}`; its log:\n{log}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Other(format!(
                    "{name} did not print `{needle}` within {timeout:?}; its log:\n{log}"
                )));
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// The exit status of `id` if it has exited.
    pub fn try_wait(&mut self, id: ProcId) -> Option<ExitStatus> {
        self.procs
            .get_mut(id.0)
            .and_then(|p| p.child.as_mut())
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for `id` to exit; on timeout it is killed and
    /// [`LabError::Timeout`] returned.
    pub fn wait(&mut self, id: ProcId, timeout: Duration) -> Result<ExitStatus> {
        let Some(p) = self.procs.get_mut(id.0) else {
            return Err(LabError::Other("no such process".into()));
        };
        let Some(child) = p.child.as_mut() else {
            return Err(LabError::Other(format!("{} was already stopped", p.name)));
        };
        match exec::wait_timeout(child, timeout) {
            Some(s) => Ok(s),
            None => {
                exec::kill(child);
                Err(LabError::Timeout {
                    cmd: p.name.clone(),
                    timeout,
                })
            }
        }
    }

    /// Stops `id`: SIGTERM (SIGINT for tcpdump-like tools: pass `signal`),
    /// up to `grace`, then SIGKILL.
    pub fn stop(&mut self, id: ProcId, signal: &str, grace: Duration) -> Option<ExitStatus> {
        let child = self.procs.get_mut(id.0)?.child.as_mut()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        exec::signal(child.id(), signal);
        if let Some(s) = exec::wait_timeout(child, grace) {
            return Some(s);
        }
        exec::kill(child);
        None
    }

    fn stop_procs_in(&mut self, nss: &[&str]) {
        for p in self.procs.iter_mut().rev() {
            if nss.contains(&p.ns.as_str())
                && let Some(mut c) = p.child.take()
            {
                exec::stop(&mut c, Duration::from_millis(500));
            }
        }
    }

    /// Tears the lab down (also done by `Drop`): stops every process it
    /// started, then deletes every namespace. Returns the first error but
    /// always tries everything.
    pub fn teardown(&mut self) -> Result<()> {
        for p in self.procs.iter_mut().rev() {
            if let Some(mut c) = p.child.take() {
                exec::stop(&mut c, Duration::from_millis(500));
            }
        }
        let mut first_err = None;
        while let Some(ns) = self.namespaces.pop() {
            if let Err(e) = delete_namespace(&ns) {
                first_err.get_or_insert(e);
            }
        }
        if let Some(engine) = self.docker.as_mut()
            && let Err(e) = engine.teardown()
        {
            first_err.get_or_insert(e);
        }
        self.servers.clear();
        self.wires.clear();
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("natter lab {}: teardown error: {e}", self.prefix);
        }
    }
}
