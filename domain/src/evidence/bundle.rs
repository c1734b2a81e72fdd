//! EvidenceBundle: a signed manifest of one job, kept in object storage forever; the event
//! records its digest and signer.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::decision::record_decision;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceBundleCreated {
    pub job_id: String,
    pub organization_id: String,
    /// SHA-256 (hex) of the signed manifest's canonical JSON, as stored.
    pub manifest_sha256: String,
    pub location: String,
    pub kid: String,
    /// The checkpoint the job's events are proven against.
    pub checkpoint_size: u64,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum EvidenceBundleEvent for "EvidenceBundle" {
        EvidenceBundleCreated(EvidenceBundleCreated),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("evidence bundle already exists")]
pub struct BundleExists;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceBundle {
    pub created: Option<EvidenceBundleCreated>,
}

impl EvidenceBundle {
    fn decide(
        &self,
        command: EvidenceBundleCreated,
    ) -> Result<Vec<EvidenceBundleEvent>, BundleExists> {
        if self.created.is_some() {
            return Err(BundleExists);
        }
        Ok(vec![EvidenceBundleEvent::EvidenceBundleCreated(command)])
    }
}

impl Aggregate for EvidenceBundle {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = EvidenceBundleCreated;
    type Event = EvidenceBundleEvent;
    type Error = BundleExists;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        record_decision(self.decide(command), self, sink).await
    }

    fn apply(&mut self, event: Self::Event) {
        let EvidenceBundleEvent::EvidenceBundleCreated(e) = event;
        self.created = Some(e);
    }
}
