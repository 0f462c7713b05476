//! One operation at a time per volume id or create name.
//!
//! The CSI spec lets a plugin answer ABORTED when an operation is already
//! pending for a volume; callers (the sidecars, kubelet) retry with backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// The set of keys with an operation in flight.
#[derive(Clone, Debug, Default)]
pub struct OperationGuards {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// Held while an operation runs; dropping it frees the key.
#[derive(Debug)]
pub struct Held {
    busy: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl OperationGuards {
    /// Claims `key` (`volume <id>`; a create claims the id its name mints,
    /// so one key covers both), or ABORTED naming it when another operation
    /// holds it.
    pub fn claim(&self, key: String) -> Result<Held> {
        let mut busy = self.busy.lock().expect("guard set poisoned");
        if !busy.insert(key.clone()) {
            return Err(Error::Aborted(format!(
                "an operation on {key} is already in progress; retry later"
            )));
        }
        Ok(Held {
            busy: Arc::clone(&self.busy),
            key,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.busy
            .lock()
            .expect("guard set poisoned")
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_aborted_until_the_first_is_dropped() {
        let guards = OperationGuards::default();
        let first = guards.claim("volume a".into()).unwrap();
        assert!(matches!(
            guards.claim("volume a".into()),
            Err(Error::Aborted(_))
        ));
        let _other = guards.claim("volume b".into()).unwrap();
        drop(first);
        guards.claim("volume a".into()).unwrap();
    }
}
