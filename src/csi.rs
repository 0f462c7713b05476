//! The CSI v1 protocol types and service traits, generated from proto/csi.proto.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("csi.v1");
