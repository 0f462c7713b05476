//! Leadership over a coordination.k8s.io Lease, so that of several
//! controller replicas only one acts. As client-go does, a lease held by
//! another counts as expired only once its record has stayed unchanged for a
//! whole lease duration by this replica's own clock (no clock skew matters).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// One replica's claim on a Lease.
pub struct Leadership {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The holder and renew time last read, and when this replica read them
    /// first.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// Until when this replica may act, after its last successful renewal.
    leading_until: Option<Instant>,
    /// When this replica last read the lease: it does so at most every
    /// third of a lease duration, however often it looks.
    last_read: Option<Instant>,
}

impl Leadership {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
            leading_until: None,
            last_read: None,
        }
    }

    /// Whether this replica holds the lease at `now`.
    pub fn leading(&self, now: Instant) -> bool {
        self.leading_until.is_some_and(|until| now < until)
    }

    /// Until when this replica may act, if it leads.
    pub fn leading_until(&self) -> Option<Instant> {
        self.leading_until
    }

    /// Takes or renews the lease if it is free, ours or expired; answers
    /// whether this replica leads at `now`. The lease is read (and renewed)
    /// at most every third of its duration; in between the last answer
    /// stands. A lost race (conflict) answers false.
    pub async fn renew(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let due = self
            .last_read
            .is_none_or(|last| now.saturating_duration_since(last) >= self.duration / 3);
        if !due {
            return Ok(self.leading(now));
        }
        self.last_read = Some(now);
        let held = match self.api.get_opt(&self.name).await? {
            None => self.create().await?,
            Some(lease) => self.take(lease, now).await?,
        };
        // `now` was taken before the read: counting from it, and stopping
        // a third of a duration early, this replica stops acting well
        // before another could see the lease unrenewed for a whole duration.
        self.leading_until = held.then(|| now + self.duration * 2 / 3);
        Ok(held)
    }

    async fn create(&mut self) -> Result<bool, kube::Error> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec(None, 0)),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    async fn take(&mut self, mut lease: Lease, now: Instant) -> Result<bool, kube::Error> {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let record = (holder.clone(), spec.renew_time.clone());
        let first_seen = match &self.observed {
            Some((h, r, at)) if (h, r) == (&record.0, &record.1) => *at,
            _ => now,
        };
        self.observed = Some((record.0, record.1, first_seen));
        let lease_for = spec
            .lease_duration_seconds
            .map_or(self.duration, |s| Duration::from_secs(s.max(0) as u64));
        let expired = now.saturating_duration_since(first_seen) >= lease_for;
        if !(ours || holder.is_none() || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(acquired, transitions));
        // The read's resourceVersion rides along: a replace after someone
        // else's write is a conflict, and this replica does not lead.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}
