//! Usage: what an organization consumed in a calendar month, metered against its quotas.
//!
//! One `UsageMeter` per organization and month (aggregate id `<org>.<YYYY-MM>`). Admitting a
//! job and recording its consumption happen on the meter, so two concurrent submissions can
//! never both take the last unit of a hard quota (the store's optimistic concurrency orders
//! them). Each source (a job) is counted once per metric.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::commercial::contract::{Enforcement, Quota};
use crate::decision::record_decision;

/// The metric counting job submissions.
pub const JOBS: &str = "jobs";

/// A calendar month in UTC: the period of quotas and invoices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i32,
    pub month: u32,
}

impl Period {
    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("period {text:?} must be YYYY-MM");
        let (y, m) = text.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let p = Self {
            year: y.parse().map_err(|_| bad())?,
            month: m.parse().map_err(|_| bad())?,
        };
        if !(1..=12).contains(&p.month) || !(2000..=9998).contains(&p.year) {
            return Err(bad());
        }
        Ok(p)
    }

    pub fn starts_at(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .expect("the first of a month exists")
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(self) -> Self {
        if self.month == 1 {
            Self {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Self {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    pub fn ends_at(self) -> DateTime<Utc> {
        self.next().starts_at()
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The meter's aggregate id.
pub fn meter_id(organization_id: &str, period: Period) -> String {
    format!("{organization_id}.{period}")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageRecorded {
    pub organization_id: String,
    /// `YYYY-MM`.
    pub period: String,
    pub metric: String,
    pub amount: i64,
    /// What consumed it (a job id); counted once per metric.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaExceeded {
    pub organization_id: String,
    pub period: String,
    pub metric: String,
    pub quota: i64,
    pub enforcement: Enforcement,
    /// Usage after the consumption that crossed the quota.
    pub used: i64,
}

crate::events! {
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum UsageEvent for "UsageMeter" {
        UsageRecorded(UsageRecorded),
        QuotaExceeded(QuotaExceeded),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageCommand {
    /// Admits a job: refused when a hard quota is used up; otherwise counts one job.
    AdmitJob {
        organization_id: String,
        period: Period,
        job_id: String,
        quotas: BTreeMap<String, Quota>,
    },
    /// Records consumption that already happened (a finished job's metrics): never refused,
    /// but crossing a quota is recorded.
    Record {
        organization_id: String,
        period: Period,
        metric: String,
        amount: i64,
        source: String,
        quota: Option<Quota>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("{0}")]
    Invalid(String),
    #[error("the hard quota of {quota} {metric} for {period} is used up ({used} used)")]
    QuotaExhausted {
        metric: String,
        quota: i64,
        used: i64,
        period: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageMeter {
    pub used: BTreeMap<String, i64>,
    /// `metric/source` pairs already counted.
    pub counted: BTreeSet<String>,
}

impl UsageMeter {
    pub fn used(&self, metric: &str) -> i64 {
        self.used.get(metric).copied().unwrap_or(0)
    }

    fn record(
        &self,
        organization_id: String,
        period: Period,
        metric: String,
        amount: i64,
        source: String,
        quota: Option<Quota>,
    ) -> Result<Vec<UsageEvent>, UsageError> {
        if !(0..=crate::licensing::license::MAX_LIMIT).contains(&amount) {
            return Err(UsageError::Invalid(format!(
                "usage of {metric} must be between 0 and {}",
                crate::licensing::license::MAX_LIMIT
            )));
        }
        if amount == 0 || self.counted.contains(&format!("{metric}/{source}")) {
            return Ok(vec![]);
        }
        let before = self.used(&metric);
        let after = crate::commercial::money::sum([before, amount], &metric)
            .map_err(UsageError::Invalid)?;
        let mut events = vec![UsageEvent::UsageRecorded(UsageRecorded {
            organization_id: organization_id.clone(),
            period: period.to_string(),
            metric: metric.clone(),
            amount,
            source,
        })];
        if let Some(q) = quota {
            if before <= q.amount && after > q.amount {
                events.push(UsageEvent::QuotaExceeded(QuotaExceeded {
                    organization_id,
                    period: period.to_string(),
                    metric,
                    quota: q.amount,
                    enforcement: q.enforcement,
                    used: after,
                }));
            }
        }
        Ok(events)
    }

    fn decide(&self, command: UsageCommand) -> Result<Vec<UsageEvent>, UsageError> {
        match command {
            UsageCommand::AdmitJob {
                organization_id,
                period,
                job_id,
                quotas,
            } => {
                if self.counted.contains(&format!("{JOBS}/{job_id}")) {
                    return Ok(vec![]); // a retried submission of the same job
                }
                for (metric, q) in quotas
                    .iter()
                    .filter(|(_, q)| q.enforcement == Enforcement::Hard)
                {
                    let used = self.used(metric);
                    // The job itself takes one `jobs`; other metrics are known only when it
                    // ends, so a job is admitted while any of them is left.
                    let exhausted = if metric == JOBS {
                        used + 1 > q.amount
                    } else {
                        used >= q.amount
                    };
                    if exhausted {
                        return Err(UsageError::QuotaExhausted {
                            metric: metric.clone(),
                            quota: q.amount,
                            used,
                            period: period.to_string(),
                        });
                    }
                }
                self.record(
                    organization_id,
                    period,
                    JOBS.to_owned(),
                    1,
                    job_id,
                    quotas.get(JOBS).copied(),
                )
            }
            UsageCommand::Record {
                organization_id,
                period,
                metric,
                amount,
                source,
                quota,
            } => self.record(organization_id, period, metric, amount, source, quota),
        }
    }
}

impl Aggregate for UsageMeter {
    const TYPE: &'static str = <Self::Event as crate::events::EventEnum>::AGGREGATE;
    type Command = UsageCommand;
    type Event = UsageEvent;
    type Error = UsageError;
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
        if let UsageEvent::UsageRecorded(e) = event {
            *self.used.entry(e.metric.clone()).or_default() += e.amount;
            self.counted.insert(format!("{}/{}", e.metric, e.source));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type Spec = TestFramework<UsageMeter>;

    const NOV: Period = Period {
        year: 2026,
        month: 11,
    };

    fn quota(amount: i64, enforcement: Enforcement) -> BTreeMap<String, Quota> {
        [(
            JOBS.to_owned(),
            Quota {
                amount,
                enforcement,
            },
        )]
        .into()
    }

    fn job(id: &str) -> UsageEvent {
        UsageEvent::UsageRecorded(UsageRecorded {
            organization_id: "org".into(),
            period: "2026-11".into(),
            metric: JOBS.into(),
            amount: 1,
            source: id.into(),
        })
    }

    fn admit(id: &str, quotas: BTreeMap<String, Quota>) -> UsageCommand {
        UsageCommand::AdmitJob {
            organization_id: "org".into(),
            period: NOV,
            job_id: id.into(),
            quotas,
        }
    }

    #[test]
    fn a_hard_quota_admits_up_to_its_amount_and_refuses_the_next_job() {
        Spec::with(())
            .given(vec![job("j1")])
            .when(admit("j2", quota(2, Enforcement::Hard)))
            .then_expect_events(vec![job("j2")]);
        Spec::with(())
            .given(vec![job("j1"), job("j2")])
            .when(admit("j3", quota(2, Enforcement::Hard)))
            .then_expect_error(UsageError::QuotaExhausted {
                metric: JOBS.into(),
                quota: 2,
                used: 2,
                period: "2026-11".into(),
            });
    }

    #[test]
    fn a_soft_quota_admits_and_records_the_crossing_once() {
        let exceeded = UsageEvent::QuotaExceeded(QuotaExceeded {
            organization_id: "org".into(),
            period: "2026-11".into(),
            metric: JOBS.into(),
            quota: 1,
            enforcement: Enforcement::Soft,
            used: 2,
        });
        Spec::with(())
            .given(vec![job("j1")])
            .when(admit("j2", quota(1, Enforcement::Soft)))
            .then_expect_events(vec![job("j2"), exceeded.clone()]);
        Spec::with(())
            .given(vec![job("j1"), job("j2"), exceeded])
            .when(admit("j3", quota(1, Enforcement::Soft)))
            .then_expect_events(vec![job("j3")]);
    }

    #[test]
    fn a_job_is_counted_once() {
        Spec::with(())
            .given(vec![job("j1")])
            .when(admit("j1", quota(1, Enforcement::Hard)))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_used_up_hard_metric_quota_refuses_new_jobs() {
        let quotas: BTreeMap<String, Quota> = [(
            "qpu_seconds".to_owned(),
            Quota {
                amount: 100,
                enforcement: Enforcement::Hard,
            },
        )]
        .into();
        let used = UsageEvent::UsageRecorded(UsageRecorded {
            organization_id: "org".into(),
            period: "2026-11".into(),
            metric: "qpu_seconds".into(),
            amount: 120,
            source: "j1".into(),
        });
        Spec::with(())
            .given(vec![used])
            .when(admit("j2", quotas))
            .then_expect_error(UsageError::QuotaExhausted {
                metric: "qpu_seconds".into(),
                quota: 100,
                used: 120,
                period: "2026-11".into(),
            });
    }

    #[test]
    fn periods_parse_and_bound_a_month() {
        let p = Period::parse("2026-12").unwrap();
        assert_eq!(p.to_string(), "2026-12");
        assert_eq!(p.starts_at().to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(p.ends_at().to_rfc3339(), "2027-01-01T00:00:00+00:00");
        assert_eq!(
            Period::parse("2026-01").unwrap().previous().to_string(),
            "2025-12"
        );
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "x"] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
    }
}
