//! The lab's Docker backend: the same topology as the namespace backend
//! ([`crate::lab`]), built from containers and Docker networks.
//!
//! ```text
//!   docker network <p>-pub (--internal, 198.51.100.0/24, docker's own gateway .254;
//!   the routers' 203.0.113.0/24 on the same bridge, added by hand as in the namespace lab)
//!     +--------+--------+---------+---------+--------+-----------------+
//!   <p>-w    <p>-s1   <p>-s2    <p>-lg    <p>-n1   <p>-n2      <p>-r1xG ...
//!   .1 and 203.0.113.254 ("the internet": routes between the two subnets)
//!                                                          wan0 203.0.113.N
//!                                                          lan0 10.N.0.1 --- docker network
//!                                                                 <p>-l1xG (--internal, 10.N.0.0/24)
//!                                                          <p>-h1xG 10.N.0.2 (open: 192.0.2.N/32)
//! ```
//!
//! Every container runs the lab image (`--docker-image`, default
//! `natter-router:latest` from `deploy/build-images`: the Debian base with
//! nftables and iproute2) doing nothing (`sleep infinity`); a client host
//! can run another image ([`DockerOptions::host_images`], version interop).
//! Each container's network namespace is attached under the lab's name for
//! it (`ip netns attach`), so the lab configures it exactly as it configures
//! its own namespaces: addresses, routes, sysctls and the routers' nftables
//! recipes are the same commands, the self-check the same probe. Docker's
//! addresses are replaced where the lab's differ (a router's wan side, an
//! open host), and interfaces renamed to the lab's names (`wan0`, `lan0`).
//!
//! Processes: a program given by path (the Natter binaries, the lab's own
//! binary) runs *inside* the container, in its mount, UTS, IPC and network
//! namespaces (`nsenter`, like `docker exec` but a child of the lab, so exit
//! status and signals work as in the namespace backend): it sees the
//! image's file system and libraries. The host directories the run needs
//! (binaries, output) are bind-mounted at the same paths
//! ([`DockerOptions::mounts`]). A tool given by name (`ss`, `tcpdump`,
//! `nft`) runs from the host in the container's network namespace, as in the
//! namespace backend.
//!
//! Docker filters bridged traffic: its `DOCKER-ISOLATION` rules drop a frame
//! on an internal network whose destination is outside the network's subnet,
//! which is every routed packet of the lab. For each of its bridges the lab
//! inserts one rule in `DOCKER-USER`, `-i BR -o BR -j ACCEPT` (same bridge in
//! and out, nothing else), commented `natter-lab:<pid>:<prefix>`.
//!
//! Everything a run creates carries its prefix `nt<pid>-<k>` and the label
//! `natter.lab.owner=<pid>`: [`Engine`]'s `Drop` removes its containers,
//! networks and rules (also on error and panic), and [`cleanup_stale`]
//! removes those of dead processes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::exec;

/// The lab image when none is given: the router image of `deploy/build-images`.
pub const DEFAULT_IMAGE: &str = "natter-router:latest";

/// Where a client image (`natter` of deploy/build-images) has its client.
pub const IMAGE_CLIENT: &str = "/usr/local/bin/natter";

/// The label every container and network of a lab carries (value: the pid
/// of the process that made it).
const OWNER_LABEL: &str = "natter.lab.owner";
/// Comment of the lab's `DOCKER-USER` rules (followed by `<pid>:<prefix>`).
const RULE_COMMENT: &str = "natter-lab:";

const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);

/// The Docker backend's settings.
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// The image of every container (servers, routers, hosts).
    pub image: String,
    /// Host directories bind-mounted at the same path into every container
    /// (read-write): the binaries' directories, the run's output.
    pub mounts: Vec<PathBuf>,
    /// Client hosts that run another image, by client index (1 = caller A,
    /// 2 = callee B in a matrix trial): version interop.
    pub host_images: BTreeMap<u8, String>,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            image: DEFAULT_IMAGE.to_owned(),
            mounts: Vec::new(),
            host_images: BTreeMap::new(),
        }
    }
}

fn docker(args: &[&str]) -> Result<exec::Output> {
    let mut c = Command::new("docker");
    c.args(args);
    exec::run(c, None, DOCKER_TIMEOUT)
}

fn iptables(args: &[&str]) -> Result<exec::Output> {
    let mut c = Command::new("iptables");
    c.args(args);
    exec::run(c, None, Duration::from_secs(15))
}

/// Whether a Docker engine answers (`docker version`).
pub fn engine_available() -> bool {
    Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Checks that the Docker backend can run: an engine, `nsenter`,
/// `iptables` with Docker's `DOCKER-USER` chain, and the given images. The
/// error names what is missing and how to get it.
pub fn check_prereqs(images: &[&str]) -> Result<()> {
    if !engine_available() {
        return Err(LabError::Missing(
            "no Docker engine answers (`docker version`); the docker backend needs one".into(),
        ));
    }
    let mut missing = Vec::new();
    for tool in ["nsenter", "iptables"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            missing.push(format!("the `{tool}` command is not on PATH"));
        }
    }
    if iptables(&["-S", "DOCKER-USER"]).is_err() {
        missing.push(
            "iptables has no DOCKER-USER chain (is the Docker engine managing iptables?)".into(),
        );
    }
    for image in images {
        if docker(&["image", "inspect", "--format", "{{.Id}}", image]).is_err() {
            missing.push(format!(
                "no image `{image}` (build it with deploy/build-images; nothing is pulled)"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Missing(missing.join("; ")))
    }
}

/// Removes the containers, networks and `DOCKER-USER` rules of earlier lab
/// runs whose owning process is dead. Returns their names.
pub fn cleanup_stale() -> Result<Vec<String>> {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    let mut gone = Vec::new();
    let filter = format!("label={OWNER_LABEL}");
    let fmt = format!("{{{{.Names}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let out = docker(&["ps", "-a", "--filter", &filter, "--format", &fmt])?;
    for line in out.stdout.lines() {
        if let Some((name, pid)) = line.split_once(' ')
            && dead(pid)
        {
            docker(&["rm", "-f", "-v", name])?;
            gone.push(name.to_owned());
        }
    }
    let fmt = format!("{{{{.Name}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let out = docker(&["network", "ls", "--filter", &filter, "--format", &fmt])?;
    for line in out.stdout.lines() {
        if let Some((name, pid)) = line.split_once(' ')
            && dead(pid)
        {
            docker(&["network", "rm", name])?;
            gone.push(name.to_owned());
        }
    }
    if let Ok(out) = iptables(&["-S", "DOCKER-USER"]) {
        for rule in out.stdout.lines() {
            let Some(rest) = rule.split(RULE_COMMENT).nth(1) else {
                continue;
            };
            let owner = rest.split([':', '"', ' ']).next().unwrap_or_default();
            if dead(owner) {
                delete_rule(rule)?;
                gone.push(format!("DOCKER-USER rule of pid {owner}"));
            }
        }
    }
    Ok(gone)
}

/// Deletes a rule given as `iptables -S` prints it (`-A CHAIN ...`).
fn delete_rule(rule: &str) -> Result<()> {
    let spec = rule
        .strip_prefix("-A ")
        .ok_or_else(|| LabError::Other(format!("not a rule: {rule}")))?;
    // `iptables -S` quotes the comment; the words themselves hold no spaces
    let args: Vec<&str> = std::iter::once("-D")
        .chain(spec.split_whitespace().map(|w| w.trim_matches('"')))
        .collect();
    iptables(&args).map(|_| ())
}

/// What one lab made in the Docker engine; `Drop` removes all of it.
#[derive(Debug)]
pub struct Engine {
    prefix: String,
    opts: DockerOptions,
    /// Containers, in creation order.
    containers: Vec<String>,
    /// Each running container's first process and its image's environment.
    processes: BTreeMap<String, (u32, Vec<(String, String)>)>,
    /// Networks and their bridges, in creation order.
    networks: Vec<(String, String)>,
}

/// A network to create.
#[derive(Debug, Clone, Copy)]
pub struct NetworkSpec<'a> {
    /// Its subnet (CIDR).
    pub subnet: &'a str,
    /// Docker's gateway address (on the host's bridge; the lab routes
    /// through its own containers, so no lab address).
    pub gateway: &'a str,
}

impl Engine {
    /// An engine for the lab with this prefix; checks the prerequisites.
    pub fn new(prefix: &str, opts: DockerOptions) -> Result<Engine> {
        let mut images: Vec<&str> = vec![opts.image.as_str()];
        images.extend(opts.host_images.values().map(String::as_str));
        check_prereqs(&images)?;
        let stale = cleanup_stale()?;
        if !stale.is_empty() {
            eprintln!("natter lab: removed stale docker objects {stale:?}");
        }
        Ok(Engine {
            prefix: prefix.to_owned(),
            opts,
            containers: Vec::new(),
            processes: BTreeMap::new(),
            networks: Vec::new(),
        })
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule that lets frames between
    /// two ports of `bridge` through Docker's filter, and nothing else.
    fn same_bridge_rule(&self, op: &str, bridge: &str) -> Result<()> {
        let comment = format!("{RULE_COMMENT}{}:{}", std::process::id(), self.prefix);
        iptables(&[
            op,
            "DOCKER-USER",
            "-i",
            bridge,
            "-o",
            bridge,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "ACCEPT",
        ])
        .map(|_| ())
    }

    /// The backend's settings.
    pub fn options(&self) -> &DockerOptions {
        &self.opts
    }

    /// Creates an internal network `name` and lets frames between its own
    /// ports through Docker's filter. Returns its bridge's name.
    pub fn network(&mut self, name: &str, spec: NetworkSpec<'_>) -> Result<String> {
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let args = [
            "network",
            "create",
            "--driver",
            "bridge",
            "--internal",
            "--label",
            &owner,
            "--subnet",
            spec.subnet,
            "--gateway",
            spec.gateway,
            "-o",
            "com.docker.network.bridge.enable_icc=true",
            name,
        ];
        let out = docker(&args)?;
        let id = out.stdout.trim();
        let bridge = format!("br-{}", id.get(..12).unwrap_or(id));
        self.networks.push((name.to_owned(), bridge.clone()));
        self.same_bridge_rule("-I", &bridge)?;
        Ok(bridge)
    }

    /// Removes network `name` (after its containers) and its rule.
    pub fn remove_network(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.networks.iter().position(|(n, _)| n == name) else {
            return Ok(());
        };
        let (name, bridge) = self.networks.remove(i);
        let rule = self.same_bridge_rule("-D", &bridge);
        let net = docker(&["network", "rm", &name]);
        rule.and(net).map(|_| ())
    }

    /// Starts container `name` (doing nothing: `sleep infinity`) on
    /// `network` with address `ip`, from the lab image or `image`; its
    /// network namespace is attached as `ip netns` name `name`. Returns the
    /// pid of its first process.
    pub fn container(
        &mut self,
        name: &str,
        network: &str,
        ip: Option<&str>,
        image: Option<&str>,
    ) -> Result<u32> {
        let owner = format!("{OWNER_LABEL}={}", std::process::id());
        let host = name.rsplit('-').next().unwrap_or(name);
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            name,
            "--label",
            &owner,
            "--hostname",
            host,
            "--network",
            network,
            "--entrypoint",
            "sleep",
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(ip) = ip {
            args.extend(["--ip".to_owned(), ip.to_owned()]);
        }
        for m in &self.opts.mounts {
            args.extend(["-v".to_owned(), format!("{0}:{0}", m.display())]);
        }
        let image = image.unwrap_or(&self.opts.image).to_owned();
        args.extend([image, "infinity".to_owned()]);
        // registered first, so that a half-made container is removed too
        self.containers.push(name.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&args)?;
        let pid = docker(&["inspect", "--format", "{{.State.Pid}}", name])?;
        let pid: u32 = pid
            .stdout
            .trim()
            .parse()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                LabError::Other(format!("container {name} has no pid: {}", pid.stdout))
            })?;
        let mut c = Command::new("ip");
        c.args(["netns", "attach", name, &pid.to_string()]);
        exec::run(c, None, Duration::from_secs(15))?;
        let env = docker(&["inspect", "--format", "{{json .Config.Env}}", name])?;
        let env: Vec<String> = serde_json::from_str(env.stdout.trim()).map_err(|e| {
            LabError::Other(format!("container {name}: environment unreadable: {e}"))
        })?;
        let env = env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        self.processes.insert(name.to_owned(), (pid, env));
        drop_default_route(name)?;
        Ok(pid)
    }

    /// The first process of running container `name` (to enter its
    /// namespaces) and its image's environment (`ENV`), if the lab made it.
    pub fn process_of(&self, name: &str) -> Option<(u32, &[(String, String)])> {
        self.processes
            .get(name)
            .map(|(pid, env)| (*pid, env.as_slice()))
    }

    /// Connects running container `name` to `network` with address `ip`.
    pub fn connect(&self, name: &str, network: &str, ip: &str) -> Result<()> {
        docker(&["network", "connect", "--ip", ip, network, name])?;
        drop_default_route(name)
    }

    /// Removes container `name` (its processes killed) and its netns name.
    pub fn remove_container(&mut self, name: &str) -> Result<()> {
        let Some(i) = self.containers.iter().position(|n| n == name) else {
            return Ok(());
        };
        self.containers.remove(i);
        self.processes.remove(name);
        let rm = docker(&["rm", "-f", "-v", name]);
        // the name only: the namespace goes with its last process
        let mut c = Command::new("ip");
        c.args(["netns", "del", name]);
        let _ = exec::run_unchecked(c, None, Duration::from_secs(15));
        rm.map(|_| ())
    }

    /// The containers that exist now.
    pub fn containers(&self) -> &[String] {
        &self.containers
    }

    /// Removes everything (also done by `Drop`): containers, then networks
    /// and their rules. Returns the first error but tries everything.
    pub fn teardown(&mut self) -> Result<()> {
        let mut first_err = None;
        while let Some(c) = self.containers.last().cloned() {
            if let Err(e) = self.remove_container(&c) {
                first_err.get_or_insert(e);
            }
        }
        while let Some((n, _)) = self.networks.last().cloned() {
            if let Err(e) = self.remove_network(&n) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("natter lab {} (docker): teardown error: {e}", self.prefix);
        }
    }
}

/// Deletes the default route Docker gives a container (via its gateway on
/// the host's bridge, internal network or not): the lab's routes lead
/// through its own containers only.
fn drop_default_route(ns: &str) -> Result<()> {
    let mut c = Command::new("ip");
    c.args(["-n", ns, "-4", "route", "show", "default"]);
    let out = exec::run(c, None, Duration::from_secs(15))?;
    if !out.stdout.trim().is_empty() {
        let mut c = Command::new("ip");
        c.args(["-n", ns, "-4", "route", "del", "default"]);
        exec::run(c, None, Duration::from_secs(15))?;
    }
    Ok(())
}

/// The name of the interface that holds `addr` in namespace `ns`.
pub fn interface_with(ns: &str, addr: &str) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(["-n", ns, "-o", "-4", "addr", "show"]);
    let out = exec::run(c, None, Duration::from_secs(15))?;
    out.stdout
        .lines()
        .find(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.split('/').next() == Some(addr))
        })
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_owned)
        .ok_or_else(|| LabError::Other(format!("no interface with {addr} in {ns}")))
}
