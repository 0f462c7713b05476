//! hostpath-csi: a CSI driver that serves node-local directories as volumes.

pub mod csi;
pub mod error;
