//! Publish targets: only where kubelet puts them, only this volume's mounts
//! taken down, every step through fds (a parent swapped for a symlink leads
//! nowhere).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TestDriver, assert_code, mount_options};
use tonic::Code;

#[tokio::test]
async fn kubelets_own_files_and_other_volumes_are_never_targets() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-a", 0).await;
    let kubelet = d.scratch.path().to_path_buf();
    // kubelet's config, its pki directory and another pod's token volume.
    std::fs::write(kubelet.join("config.yaml"), b"kubelet config").unwrap();
    std::fs::create_dir(kubelet.join("pki")).unwrap();
    std::fs::write(kubelet.join("pki/kubelet.key"), b"secret").unwrap();
    let token = kubelet.join("pods/p2/volumes/kubernetes.io~projected/kube-api-access");
    d.scratch.mount_tmpfs(&token, "1m");
    std::fs::write(token.join("token"), b"jwt").unwrap();
    let data_json = kubelet.join("pods/p3/volumes/kubernetes.io~csi/pv/vol_data.json");
    std::fs::create_dir_all(data_json.parent().unwrap()).unwrap();
    std::fs::write(&data_json, b"{}").unwrap();
    for path in [
        kubelet.join("config.yaml"),
        kubelet.join("pki"),
        token.clone(),
        data_json.clone(),
    ] {
        let shown = path.to_string_lossy().into_owned();
        assert_code(
            d.publish(&id, &shown, false).await,
            Code::InvalidArgument,
            "not where kubelet publishes",
        );
        assert_code(
            d.unpublish(&id, &shown).await,
            Code::InvalidArgument,
            "not where kubelet publishes",
        );
    }
    assert_eq!(
        std::fs::read(kubelet.join("config.yaml")).unwrap(),
        b"kubelet config"
    );
    assert_eq!(
        std::fs::read(kubelet.join("pki/kubelet.key")).unwrap(),
        b"secret"
    );
    assert_eq!(std::fs::read(token.join("token")).unwrap(), b"jwt");
    assert_eq!(std::fs::read(&data_json).unwrap(), b"{}");
    assert!(
        mount_options(&token).is_some(),
        "the token volume stays mounted"
    );
    nix::mount::umount2(&token, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

#[tokio::test]
async fn an_unpublish_for_another_volume_leaves_the_mount_alone() {
    let mut d = TestDriver::start().await;
    let a = d.create("pvc-a", 0).await;
    let b = d.create("pvc-b", 0).await;
    let target = d.target("pod-a");
    d.publish(&a, &target, false).await.unwrap();
    std::fs::write(Path::new(&target).join("mine"), b"a's").unwrap();
    assert_code(
        d.unpublish(&b, &target).await,
        Code::FailedPrecondition,
        "not this volume's",
    );
    // An unknown volume does not take it down either.
    assert_code(
        d.unpublish("vol-unknown", &target).await,
        Code::FailedPrecondition,
        "not this volume's",
    );
    assert_eq!(
        std::fs::read(Path::new(&target).join("mine")).unwrap(),
        b"a's"
    );
    d.unpublish(&a, &target).await.unwrap();
    assert!(!Path::new(&target).exists());
}

/// A file open in the target keeps it busy. Unpublish waits a moment for
/// it to be let go (a process being started holds its parent's fds until it
/// execs); one still held after that is refused and the mount left as it
/// was, for kubelet to retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_target_busy_for_a_moment_is_unmounted_and_one_kept_busy_is_refused() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-a", 0).await;
    let target = d.target("pod-a");
    d.publish(&id, &target, false).await.unwrap();
    let held = std::fs::File::create(Path::new(&target).join("open")).unwrap();
    assert_code(d.unpublish(&id, &target).await, Code::Internal, "EBUSY");
    assert!(mount_options(Path::new(&target)).is_some());
    // Let go 100 ms into the next unpublish.
    let letting_go = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
    });
    d.unpublish(&id, &target).await.unwrap();
    letting_go.join().unwrap();
    assert!(!Path::new(&target).exists());
}

/// Publishes and unpublishes while another thread keeps swapping the
/// target's parent between a directory and a symlink to a directory
/// outside the kubelet directory: nothing is ever mounted or made there.
#[tokio::test(flavor = "multi_thread")]
async fn a_parent_swapped_for_a_symlink_never_leads_the_mount_out() {
    let mut d = TestDriver::start().await;
    let id = d.create("pvc-race", 0).await;
    let outside = common::Scratch::new();
    let target = d.target("pod-race");
    let parent = Path::new(&target).parent().unwrap().to_path_buf();
    let real = parent.with_file_name("pv-real");
    let link = parent.with_file_name("pv-link");
    std::fs::rename(&parent, &real).unwrap();
    symlink(outside.path(), &link).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let swapping = {
        let (stop, parent, real, link) = (
            Arc::clone(&stop),
            parent.clone(),
            real.clone(),
            link.clone(),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // The parent is the real directory, then the symlink.
                std::fs::rename(&real, &parent).unwrap();
                std::fs::rename(&parent, &real).unwrap();
                std::fs::rename(&link, &parent).unwrap();
                std::fs::rename(&parent, &link).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let (mut served, mut refused) = (0, 0);
    for _ in 0..300 {
        match d.publish(&id, &target, false).await {
            Ok(()) => served += 1,
            Err(_) => refused += 1,
        }
        // Whatever happened, take it down (again) while the swaps go on.
        d.unpublish(&id, &target).await.ok();
        assert!(
            outside.mounts().is_empty(),
            "a mount was made outside: {:?}",
            outside.mounts()
        );
        let made: Vec<_> = std::fs::read_dir(outside.path()).unwrap().collect();
        assert!(made.is_empty(), "something was made outside: {made:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapping.join().unwrap();
    println!("{served} publishes served, {refused} refused, {swaps} swaps");
    assert!(swaps > 0);
    // Left as kubelet would have it: the real directory in place.
    if !parent.exists() {
        std::fs::rename(&real, &parent).unwrap();
    }
    d.unpublish(&id, &target).await.unwrap();
    assert!(d.scratch.mounts().is_empty(), "{:?}", d.scratch.mounts());
}
