//! One operation at a time per volume id or create name, and none once the
//! driver is stopping.
//!
//! The CSI spec lets a plugin answer ABORTED when an operation is already
//! pending for a volume; callers (the sidecars, kubelet) retry with backoff.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The keys with an operation in flight.
#[derive(Clone, Debug, Default)]
pub struct OperationGuards {
    busy: Arc<Mutex<Busy>>,
}

#[derive(Debug, Default)]
struct Busy {
    keys: HashSet<String>,
    /// Set by [`OperationGuards::close`]: no operation starts any more.
    closed: bool,
    /// Claims made so far: a sign of activity.
    claims: u64,
}

/// Held while an operation runs; dropping it frees the key.
#[derive(Debug)]
pub struct Held {
    busy: Arc<Mutex<Busy>>,
    key: String,
}

impl OperationGuards {
    /// Claims `key` (`volume <id>`; a create claims the id its name mints,
    /// so one key covers both), or ABORTED naming it when another operation
    /// holds it.
    pub fn claim(&self, key: String) -> Result<Held> {
        let mut busy = self.busy.lock().expect("guard set poisoned");
        if busy.closed {
            return Err(Error::Busy(format!(
                "the driver is stopping; {key} was not touched, retry later"
            )));
        }
        busy.claims += 1;
        if !busy.keys.insert(key.clone()) {
            return Err(Error::Busy(format!(
                "an operation on {key} is already in progress; retry later"
            )));
        }
        Ok(Held {
            busy: Arc::clone(&self.busy),
            key,
        })
    }

    /// How many claims have been made (whether granted or not).
    pub fn claims(&self) -> u64 {
        self.busy.lock().expect("guard set poisoned").claims
    }

    /// Refuses every new claim from now on and waits, up to `patience`, for
    /// the operations in flight to end (a call whose client went away still
    /// runs to its end). Returns whether they all did.
    pub fn close(&self, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        self.busy.lock().expect("guard set poisoned").closed = true;
        loop {
            if self
                .busy
                .lock()
                .expect("guard set poisoned")
                .keys
                .is_empty()
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.busy
            .lock()
            .expect("guard set poisoned")
            .keys
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
            Err(Error::Busy(_))
        ));
        let _other = guards.claim("volume b".into()).unwrap();
        drop(first);
        guards.claim("volume a".into()).unwrap();
        assert_eq!(guards.claims(), 4);
    }

    #[test]
    fn close_refuses_new_claims_and_waits_for_held_ones() {
        let guards = OperationGuards::default();
        let held = guards.claim("volume a".into()).unwrap();
        assert!(!guards.close(Duration::from_millis(30)), "a claim is held");
        assert!(matches!(
            guards.claim("volume b".into()),
            Err(Error::Busy(_))
        ));
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        assert!(guards.close(Duration::from_secs(10)));
        releasing.join().unwrap();
    }
}
