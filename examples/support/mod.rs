//! What the benchmarks share: medians and quantiles, how durations and
//! memory are shown, and taking down what a run mounted.
#![allow(dead_code)] // each benchmark uses a part of it

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::process::{Command, Stdio};

use hostpath_csi::loopdev::{self, Lifetime};

/// A duration in µs below a millisecond, else in ms.
pub fn shown(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

/// KiB (as /proc/<pid>/status counts) in MiB.
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The median of `values` (the upper one of an even count); the default
/// when there are none.
pub fn median<T: Ord + Copy + Default>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// [`median`] of floating-point values (NaN when there are none).
pub fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median and 99th percentile.
pub fn quantiles(took: &[Duration]) -> (Duration, Duration) {
    let mut sorted = took.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let at = |q: f64| sorted[((sorted.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
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

/// An 8 GiB (sparse) image made by `mkfs` (program, then its arguments) and
/// mounted through a loop device at `<scratch>/<name>` with `options`; the
/// filesystem type is `name`.
pub fn loop_pool(
    scratch: &Path,
    name: &str,
    mkfs: &[&str],
    options: &str,
) -> Result<PathBuf, Box<dyn std::error::Error + Send + Sync>> {
    let image = scratch.join(format!("{name}.img"));
    std::fs::File::create(&image)?.set_len(8 << 30)?;
    let made = Command::new(mkfs[0])
        .args(&mkfs[1..])
        .arg(&image)
        .stdout(Stdio::null())
        .status()?;
    if !made.success() {
        return Err(format!("{} failed", mkfs[0]).into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)?;
    let device = loopdev::attach(&file.into(), &image, Lifetime::UntilDetached, false)?.device;
    let mount_point = scratch.join(name);
    std::fs::create_dir(&mount_point)?;
    nix::mount::mount(
        Some(&device.path),
        &mount_point,
        Some(name),
        nix::mount::MsFlags::empty(),
        Some(options),
    )?;
    Ok(mount_point)
}
