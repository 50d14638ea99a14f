//! A software TPM (`swtpm`) on loopback ports, for the TPM key store tests.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One `swtpm socket` process; its state survives [`Swtpm::restart`].
pub struct Swtpm {
    child: Child,
    state: PathBuf,
    port: u16,
}

impl Swtpm {
    /// Starts a fresh TPM with its state in `dir`; `None` (after saying why) when `swtpm`
    /// is not installed.
    pub fn start(dir: &Path) -> Option<Self> {
        if Command::new("swtpm").arg("--version").output().is_err() {
            eprintln!("skipped: swtpm is not installed (Debian: apt-get install swtpm)");
            return None;
        }
        let state = dir.join("tpm");
        std::fs::create_dir_all(&state).unwrap();
        let port = free_port_pair();
        let child = spawn(&state, port);
        Some(Self { child, state, port })
    }

    /// The TCTI string the agent and the key store take.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Stops the TPM and starts it again on the same ports and state (a power cycle).
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.state, self.port);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port `p` with `p + 1` free too: swtpm's TCTI finds the control channel at `p + 1`.
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two adjacent free loopback ports");
}

fn spawn(state: &Path, port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.with_extension("log"))
        .unwrap();
    let child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "startup-clear"])
        .arg("--server")
        .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // Ready once both the control and the command channel accept connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    for listening in [port + 1, port] {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, listening));
        while TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "swtpm did not listen on {listening}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    child
}
