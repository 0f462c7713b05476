//! The real binary as a child process: started on a scratch directory with
//! a pool and a socket, waited for, measured (/proc/<pid>/status) and
//! killed when the test ends, whatever happens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A driver process serving `socket`, with its log in `log`.
pub struct DriverProcess {
    child: Child,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl DriverProcess {
    /// Starts `hostpath-csi serve` with its socket and log in `dir`, the
    /// given pool and `extra` arguments, and waits until it serves.
    pub fn start(dir: &Path, pool: &Path, extra: &[String]) -> Self {
        let socket = dir.join("csi.sock");
        let log = dir.join("driver.log");
        let child = Command::new(env!("CARGO_BIN_EXE_hostpath-csi"))
            .arg("serve")
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .arg("--node-id=n1")
            .arg(format!("--pool=default={}", pool.display()))
            .arg(format!("--kubelet-dir={}", dir.display()))
            // The nearly-full check off (a flag in `extra` overrides it): how
            // full the machine's disk is must not show up as a pool problem.
            .env("HOSTPATH_CSI_POOL_NEARLY_FULL_PERCENT", "0")
            // Text, whatever the environment says: the start is read from it.
            .env("HOSTPATH_CSI_LOG_FORMAT", "text")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut driver = DriverProcess { child, socket, log };
        driver.wait_until_serving();
        driver
    }

    fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.logged().contains(" serving ")
                && std::os::unix::net::UnixStream::connect(&self.socket).is_ok()
            {
                return;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "driver exited early: {}",
                self.logged()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the driver never served: {}", self.logged());
    }

    /// What the driver logged so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/<pid>/status in its unit (kB for memory), e.g. "VmHWM".
    pub fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Peak resident memory so far, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.status("VmHWM") as f64 / 1024.0
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
