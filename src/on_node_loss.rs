//! The opt-in that lets the node loss cleanup (src/node_loss) delete a
//! claim whose volume's node is gone: its names and values. Outside that
//! module, which only the `node-loss` feature builds, because the driver
//! checks the StorageClass parameter too.

/// The PVC annotation that says what to do with the claim when its volume's
/// node is gone: [`DELETE_CLAIM`] or [`KEEP_CLAIM`]. It wins over the class.
pub const CLAIM_ANNOTATION: &str = "hostpath-csi.dev/on-node-loss";
/// The StorageClass parameter with the same meaning, for every claim of the
/// class that has no annotation.
pub const CLASS_PARAMETER: &str = "onNodeLoss";
/// Opt-in value: delete the claim, so a StatefulSet makes a fresh one.
pub const DELETE_CLAIM: &str = "delete-claim";
/// Default value: keep the claim (an Event says why its pod cannot run).
pub const KEEP_CLAIM: &str = "keep";

/// Whether a claim opted in to deletion when its node is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNodeLoss {
    DeleteClaim,
    Keep,
}

impl OnNodeLoss {
    /// Parses an annotation or parameter value.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            DELETE_CLAIM => Ok(Self::DeleteClaim),
            KEEP_CLAIM => Ok(Self::Keep),
            other => Err(format!(
                "{other:?} is not a choice for {CLASS_PARAMETER}: use {DELETE_CLAIM} or {KEEP_CLAIM}"
            )),
        }
    }
}
