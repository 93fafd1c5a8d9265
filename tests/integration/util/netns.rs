//! Other hosts for the tests: a network namespace joined to this host by a veth pair
//! (`10.231.N.1` and `fd31:N::1` on this side, addresses of the test's choosing on the other),
//! and TCP forwarders running inside it (a NAT or a load balancer in front of this nginx).
//! Removed, with its forwarders, when dropped.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A network namespace standing for other hosts.
pub struct NetNs {
    pub name: String,
    host_if: String,
    ns_if: String,
    /// The subnet number N of `10.231.N.0/24` and `fd31:N::/64`.
    pub net: u8,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Creates the namespace and its veth pair (unique per process and `net`).
    pub fn create(net: u8) -> NetNs {
        let tag = format!("{}{net}", std::process::id() % 100_000);
        let name = format!("acmenx{tag}");
        let (host_if, ns_if) = (format!("anh{tag}"), format!("ann{tag}"));
        ip(&["netns", "add", &name]);
        let ns = NetNs {
            name,
            host_if,
            ns_if,
            net,
        };
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ]);
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name]);
        ip(&[
            "addr",
            "add",
            &format!("10.231.{net}.1/24"),
            "dev",
            &ns.host_if,
        ]);
        ip(&[
            "-6",
            "addr",
            "add",
            &format!("fd31:{net}::1/64"),
            "dev",
            &ns.host_if,
            "nodad",
        ]);
        ip(&["link", "set", &ns.host_if, "up"]);
        ip(&["netns", "exec", &ns.name, "ip", "link", "set", "lo", "up"]);
        ip(&[
            "netns", "exec", &ns.name, "ip", "link", "set", &ns.ns_if, "up",
        ]);
        ns
    }

    /// This host's address on the pair.
    pub fn host_v4(&self) -> IpAddr {
        format!("10.231.{}.1", self.net).parse().unwrap()
    }

    /// Adds `10.231.N.LAST` (and `fd31:N::LAST`) to the other side; returns both.
    pub fn add_host(&self, last: u8) -> (IpAddr, IpAddr) {
        let (v4, v6) = (
            format!("10.231.{}.{last}", self.net),
            format!("fd31:{}::{last}", self.net),
        );
        let ns_if = &self.ns_if;
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            ns_if,
        ]);
        ip(&[
            "netns",
            "exec",
            &self.name,
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            ns_if,
            "nodad",
        ]);
        (v4.parse().unwrap(), v6.parse().unwrap())
    }

    /// A TCP forwarder listening on `listen` inside the namespace, to `to` (reached from
    /// inside it), until dropped.
    pub fn forward(&self, listen: SocketAddr, to: SocketAddr) -> Forwarder {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // Only this thread (and the threads it starts) enter the namespace.
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind(listen).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                        else {
                            continue;
                        };
                        pipe(inbound, outbound);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("forwarder on {listen}: {e}"),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the forwarder listens");
        Forwarder {
            stop,
            thread: Some(thread),
        }
    }
}

/// Copies both ways between two connections, each direction in its own thread.
fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    std::thread::spawn(move || {
        let (mut from, mut to) = (a, b2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let (mut from, mut to) = (b, a2);
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A forwarder inside a namespace; stopped when dropped.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
