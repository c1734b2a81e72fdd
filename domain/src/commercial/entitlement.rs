//! Entitlements: what an organization may use now, derived from its contracts in force.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::commercial::contract::{Enforcement, LineItem, Quota};

/// The union of the line items of an organization's contracts in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub features: BTreeSet<String>,
    /// Per month; amounts of several contracts add up, and a quota is hard when any of them is.
    pub quotas: BTreeMap<String, Quota>,
    /// The largest value any contract grants.
    pub limits: BTreeMap<String, i64>,
}

impl Entitlements {
    pub fn from_line_items<'a>(items: impl IntoIterator<Item = &'a LineItem>) -> Self {
        let mut e = Self::default();
        for item in items {
            e.features.extend(item.features.iter().cloned());
            for (name, q) in &item.quotas {
                let entry = e.quotas.entry(name.clone()).or_insert(Quota {
                    amount: 0,
                    enforcement: Enforcement::Soft,
                });
                entry.amount = entry.amount.saturating_add(q.amount);
                if q.enforcement == Enforcement::Hard {
                    entry.enforcement = Enforcement::Hard;
                }
            }
            for (name, v) in &item.limits {
                let entry = e.limits.entry(name.clone()).or_insert(*v);
                *entry = (*entry).max(*v);
            }
        }
        e
    }

    /// Whether `amount` of `name` (a feature, a quota's metric or a limit) is allowed, given
    /// this month's `used` amounts.
    pub fn check(&self, name: &str, amount: i64, used: &BTreeMap<String, i64>) -> Decision {
        if amount < 0 {
            return Decision::denied(format!("amount must not be negative (got {amount})"));
        }
        if let Some(q) = self.quotas.get(name) {
            let used = used.get(name).copied().unwrap_or(0);
            let remaining = q.amount.saturating_sub(used).max(0);
            let within = used.saturating_add(amount) <= q.amount;
            return match (within, q.enforcement) {
                (true, _) => Decision {
                    allowed: true,
                    reason: format!("{amount} of {remaining} {name} left this month"),
                    remaining: Some(remaining),
                },
                (false, Enforcement::Soft) => Decision {
                    allowed: true,
                    reason: format!(
                        "over the soft quota of {} {name} ({used} used); the overage is recorded",
                        q.amount
                    ),
                    remaining: Some(remaining),
                },
                (false, Enforcement::Hard) => Decision {
                    allowed: false,
                    reason: format!(
                        "the hard quota of {} {name} this month allows {remaining} more ({used} used)",
                        q.amount
                    ),
                    remaining: Some(remaining),
                },
            };
        }
        if let Some(limit) = self.limits.get(name) {
            return if amount <= *limit {
                Decision {
                    allowed: true,
                    reason: format!("within the limit of {limit} {name}"),
                    remaining: Some(*limit),
                }
            } else {
                Decision {
                    allowed: false,
                    reason: format!("{amount} exceeds the limit of {limit} {name}"),
                    remaining: Some(*limit),
                }
            };
        }
        if self.features.contains(name) {
            return Decision {
                allowed: true,
                reason: format!("feature {name} is part of a contract in force"),
                remaining: None,
            };
        }
        Decision::denied(format!(
            "no contract in force grants {name:?} to this organization"
        ))
    }
}

/// The answer of an entitlement check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
    /// For quotas: what is left this month; for limits: the limit.
    pub remaining: Option<i64>,
}

impl Decision {
    fn denied(reason: String) -> Self {
        Self {
            allowed: false,
            reason,
            remaining: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(features: &[&str], jobs: i64, enforcement: Enforcement, qubits: i64) -> LineItem {
        LineItem {
            id: "a".into(),
            product: "p".into(),
            edition: "e".into(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            quotas: [(
                "jobs".to_owned(),
                Quota {
                    amount: jobs,
                    enforcement,
                },
            )]
            .into(),
            limits: [("qubits".to_owned(), qubits)].into(),
            quantity: 1,
            unit_price: 0,
            usage_prices: BTreeMap::new(),
            max_activations: 1,
        }
    }

    #[test]
    fn contracts_add_quotas_union_features_and_take_the_largest_limit() {
        let a = item(&["sim"], 10, Enforcement::Soft, 32);
        let b = item(&["qpu"], 5, Enforcement::Hard, 64);
        let e = Entitlements::from_line_items([&a, &b]);
        assert_eq!(e.features, ["qpu".to_owned(), "sim".to_owned()].into());
        assert_eq!(
            e.quotas["jobs"],
            Quota {
                amount: 15,
                enforcement: Enforcement::Hard
            }
        );
        assert_eq!(e.limits["qubits"], 64);
    }

    #[test]
    fn checks_answer_with_a_reason() {
        let e = Entitlements::from_line_items([&item(&["sim"], 10, Enforcement::Hard, 64)]);
        let used: BTreeMap<String, i64> = [("jobs".to_owned(), 8)].into();
        assert!(e.check("jobs", 2, &used).allowed);
        let over = e.check("jobs", 3, &used);
        assert!(!over.allowed);
        assert_eq!(
            over.reason,
            "the hard quota of 10 jobs this month allows 2 more (8 used)"
        );
        assert!(e.check("qubits", 64, &used).allowed);
        assert!(!e.check("qubits", 65, &used).allowed);
        assert!(e.check("sim", 1, &used).allowed);
        let none = e.check("annealer", 1, &used);
        assert!(!none.allowed);
        assert!(none.reason.contains("no contract in force"));
        assert!(!e.check("jobs", -1, &used).allowed);
    }

    #[test]
    fn a_soft_quota_allows_overage_and_says_so() {
        let e = Entitlements::from_line_items([&item(&[], 1, Enforcement::Soft, 1)]);
        let used: BTreeMap<String, i64> = [("jobs".to_owned(), 1)].into();
        let d = e.check("jobs", 1, &used);
        assert!(d.allowed);
        assert!(d.reason.contains("soft quota"));
    }
}
