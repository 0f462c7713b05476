//! hostpath-csi: a CSI driver that serves node-local directories, image
//! files and tmpfs as Kubernetes volumes.

pub mod authority;
pub mod beneath;
pub mod btrfs;
pub mod capacity;
pub mod cli;
pub mod client;
pub mod copy;
pub mod csi;
pub mod demo;
pub mod driver;
pub mod error;
pub mod failpoint;
pub mod guard;
pub mod health;
pub mod heap;
pub mod host_path;
pub mod ids;
pub mod kind;
pub mod lifecycle;
pub mod loopdev;
pub mod metrics;
pub mod mounter;
pub mod mounts;
#[cfg(feature = "node-loss")]
pub mod node_loss;
pub mod on_node_loss;
pub mod pool;
pub mod project_quota;
pub mod publish;
pub mod record;
pub mod record_cache;
pub mod server;
pub mod service;
pub mod shared_sync;
pub mod snapshots;
pub mod startup;
pub mod status;
pub mod target;
#[cfg(test)]
mod testing;
pub mod usage_cache;
pub mod validate;
pub mod volumes;
pub mod work;
