//! The network lock: while TCP connections are dumped and restored, their
//! packets are dropped by netfilter, so that the kernel, finding no socket
//! (between the dumped task's death and the restore) or a socket in repair
//! mode, never answers the peer with a reset. The peer only sees silence
//! and retransmits; once the connection is restored and the lock removed,
//! it carries on.
//!
//! Like upstream criu's `--network-lock nftables`, the lock is one
//! nftables table (see nft(8)) per dump, holding one rule per direction of
//! each locked connection, in the `inet` family so IPv4 and IPv6 share it.
//! It is taken before a connection is put in repair mode, and removed at
//! the end of a dump that leaves the task running or fails; a dump that
//! kills the task leaves it in place (its name is in the inventory) for the
//! restore, which removes it whether it succeeds or fails.

use crate::error::{Error, Result};
use crate::fdkind::inet::Addr;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

/// How connections are locked (`--network-lock`, upstream's spelling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Method {
    /// An nftables table (needs the `nft` program and CAP_NET_ADMIN).
    #[default]
    Nftables,
    /// No lock: the peer may get a reset if it sends while the connection
    /// is down.
    Skip,
}

/// A taken lock; removed when dropped unless [`NetLock::keep`] was called.
#[derive(Debug)]
pub struct NetLock {
    table: String,
    created: bool,
    kept: bool,
}

impl NetLock {
    /// A lock named `table` (an nftables table in the `inet` family, e.g.
    /// `criu-lock-1234`), taken when the first connection is added.
    pub fn new(table: impl Into<String>) -> NetLock {
        NetLock {
            table: table.into(),
            created: false,
            kept: false,
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether any connection is locked.
    pub fn is_taken(&self) -> bool {
        self.created
    }

    /// Drop every packet of the TCP connection between `local` and `peer`
    /// (both directions), from now on.
    ///
    /// Errors: `nft` missing or failing (its message), naming the table.
    pub fn add(&mut self, local: Addr, peer: Addr) -> Result<()> {
        let mut script = String::new();
        if !self.created {
            script.push_str(&format!(
                "table inet {t}\nadd chain inet {t} input {{ type filter hook input priority -150; policy accept; }}\nadd chain inet {t} output {{ type filter hook output priority -150; policy accept; }}\n",
                t = self.table
            ));
        }
        for (chain, src, dst) in [("input", peer, local), ("output", local, peer)] {
            script.push_str(&format!(
                "add rule inet {} {chain} {} tcp sport {} tcp dport {} drop\n",
                self.table,
                addrs(src.ip, dst.ip),
                src.port,
                dst.port
            ));
        }
        nft(
            &script,
            &format!("locking the connection {local} -> {peer}"),
        )?;
        self.created = true;
        Ok(())
    }

    /// Leave the lock in place after this process exits (a dump that
    /// killed its tasks: the restore removes it with [`unlock_table`]).
    pub fn keep(mut self) -> String {
        self.kept = true;
        std::mem::take(&mut self.table)
    }

    /// Remove the lock now.
    ///
    /// Errors: `nft` failing.
    pub fn unlock(mut self) -> Result<()> {
        self.kept = true;
        if self.created {
            unlock_table(&self.table)?;
        }
        Ok(())
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if self.created && !self.kept {
            if let Err(e) = unlock_table(&self.table) {
                crate::warn!("{e}");
            }
        }
    }
}

/// Remove the lock table `table` left by a dump. A table that is not there
/// is not an error.
///
/// Errors: `nft` missing or failing.
pub fn unlock_table(table: &str) -> Result<()> {
    // "destroy" (nft 1.0.8+) ignores a missing table; "add" then "delete"
    // works on every version.
    nft(
        &format!("add table inet {table}\ndelete table inet {table}\n"),
        &format!("removing the network lock (nftables table inet {table})"),
    )
}

/// Match of the addresses of one direction, in nft's syntax; a v4-mapped
/// IPv6 address is matched as the IPv4 packet it is on the wire.
fn addrs(src: IpAddr, dst: IpAddr) -> String {
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match (canon(src), canon(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!("ip saddr {s} ip daddr {d}"),
        (s, d) => format!("ip6 saddr {s} ip6 daddr {d}"),
    }
}

fn nft(script: &str, what: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::Unsupported(format!(
                "{what}: cannot run nft: {e} (install nftables, or pass --network-lock skip)"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| Error::Unsupported(format!("{what}: writing to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Unsupported(format!("{what}: waiting for nft: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        let first = msg.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::Unsupported(format!(
            "{what}: nft failed ({}): {first}",
            out.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    fn netns() -> bool {
        if nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
            eprintln!("skipped: needs root");
            return false;
        }
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipped: no nft (package nftables)");
            return false;
        }
        Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success()
    }

    fn addr(s: std::net::SocketAddr) -> Addr {
        Addr {
            ip: s.ip(),
            port: s.port(),
            flowinfo: 0,
            scope_id: 0,
        }
    }

    fn tables() -> String {
        let o = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn locked_connection_is_silent_until_unlocked() {
        if !netns() {
            return;
        }
        for ip in ["127.0.0.1", "::1"] {
            let l = TcpListener::bind((ip, 0)).unwrap();
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut lock = NetLock::new("criu-lock-test");
            lock.add(addr(s.local_addr().unwrap()), addr(s.peer_addr().unwrap()))
                .unwrap();
            assert!(tables().contains("criu-lock-test"));
            c.write_all(b"held").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut b = [0u8; 4];
            assert!(s.read(&mut b).is_err(), "a packet passed the lock");
            lock.unlock().unwrap();
            assert!(!tables().contains("criu-lock-test"));
            // TCP retransmits what was dropped.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"held");
        }
    }

    #[test]
    fn dropped_lock_is_removed_kept_lock_stays() {
        if !netns() {
            return;
        }
        let a = addr("127.0.0.1:1000".parse().unwrap());
        let p = addr("[::ffff:127.0.0.1]:2000".parse().unwrap());
        {
            let mut lock = NetLock::new("criu-lock-a");
            lock.add(a, p).unwrap();
            assert!(tables().contains("criu-lock-a"));
        }
        assert!(
            !tables().contains("criu-lock-a"),
            "dropped lock left behind"
        );
        let mut lock = NetLock::new("criu-lock-b");
        lock.add(a, p).unwrap();
        let name = lock.keep();
        assert!(tables().contains("criu-lock-b"));
        unlock_table(&name).unwrap();
        assert!(!tables().contains("criu-lock-b"));
        // Removing a lock that is not there is fine.
        unlock_table(&name).unwrap();
    }
}
