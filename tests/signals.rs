//! The real binary: socket handling at start and a clean stop on SIGTERM/SIGINT.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A driver process, killed if a failed test leaves it running (it would
/// otherwise hold the test runner's output open).
struct Running(Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}

fn start(dir: &Path) -> Running {
    std::fs::create_dir_all(dir.join("pool")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_hostpath-csi"))
        .arg("serve")
        .arg("--endpoint")
        .arg(format!("unix://{}", dir.join("csi.sock").display()))
        .arg("--node-id=n1")
        .arg(format!("--pool=default={}", dir.join("pool").display()))
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("driver.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    Running(child)
}

/// What the drivers started in `dir` logged, for a failure's message.
fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("driver.log")).unwrap_or_default()
}

/// Waits until the driver started in `dir` says it serves and its socket
/// takes connections. (A stale socket file may be there first, and may even
/// accept for a moment while a process another test thread is spawning
/// still holds a copy of its listening fd: only the log tells.)
fn wait_until_serving(dir: &Path, child: &mut Child) {
    let path = dir.join("csi.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if log(dir).contains(" serving ") && std::os::unix::net::UnixStream::connect(&path).is_ok()
        {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "driver exited early: {}",
            log(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("socket {} never appeared: {}", path.display(), log(dir));
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    panic!("driver did not stop");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_remove_the_socket() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let mut child = start(dir.path());
        wait_until_serving(dir.path(), &mut child);
        let mode = socket.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "socket mode");
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let status = wait_exit(&mut child);
        assert!(status.success(), "{signal}: {status}: {}", log(dir.path()));
        assert!(!socket.exists(), "socket left after {signal}");
        assert!(
            dir.path().join("pool/records.snapshot").is_file(),
            "no snapshot of the records after {signal}"
        );
    }
}

#[test]
fn a_stale_socket_is_replaced_but_a_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let mut child = start(dir.path());
    wait_until_serving(dir.path(), &mut child);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}: {}", log(dir.path()));

    std::fs::write(&socket, b"not a socket").unwrap();
    let mut child = start(dir.path());
    assert!(
        !wait_exit(&mut child).success(),
        "started over a regular file"
    );
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
}

#[test]
fn a_client_that_keeps_its_connection_open_does_not_hold_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("csi.sock");
    let mut child = start(dir.path());
    wait_until_serving(dir.path(), &mut child);
    // A client that connects and then says nothing, ever.
    let _silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}: {}", log(dir.path()));
    assert!(!socket.exists(), "socket left");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "stopping took {:?}",
        asked.elapsed()
    );
}
