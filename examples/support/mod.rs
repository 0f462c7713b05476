//! What the benchmarks share: how durations are shown, and taking down what
//! a run mounted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hostpath_csi::loopdev;

/// A duration in µs below a millisecond, else in ms.
pub fn shown(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

/// Takes down every mount under the scratch directory and the loop devices
/// of its files, deepest first.
pub fn cleanup(scratch: &Path) {
    let mut mounts: Vec<PathBuf> = hostpath_csi::mounts::mount_table()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(scratch))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    for m in mounts {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).ok();
    }
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for entry in entries.flatten() {
        let backing =
            std::fs::read_to_string(entry.path().join("loop/backing_file")).unwrap_or_default();
        if Path::new(backing.trim_end()).starts_with(scratch) {
            let path = PathBuf::from("/dev").join(entry.file_name());
            loopdev::detach(&loopdev::LoopDevice {
                path,
                read_only: false,
            })
            .ok();
        }
    }
}
