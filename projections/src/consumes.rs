//! Which events each read model consumes: its `CONSUMES`, declared beside its `apply`, for the
//! event index (`docs/events.md`, `quantus docs events`). A test reads each model's source and
//! fails when a variant it handles is not listed, or a listed one is not handled.

use crate::commercial::CommercialView;
use crate::groups::GroupsView;
use crate::jobs::JobsView;
use crate::licenses::LicensesView;
use crate::organizations::OrganizationsView;
use crate::users::UsersView;

/// The wire names of the listed event-enum variants. Each must be a variant of its enum: a
/// misspelt or removed one is a compile error (the variant's name is its wire name, see
/// `quantus_domain::events!`).
macro_rules! consumed {
    ($($enum:ident :: $variant:ident),+ $(,)?) => {{
        $(const _: fn($enum) -> bool = |e| matches!(e, $enum::$variant(..));)+
        &[$(stringify!($variant)),+]
    }};
}
pub(crate) use consumed;

/// Every read model's name with the event types it consumes, in `crate::all` order.
pub fn read_models() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        (OrganizationsView::NAME, OrganizationsView::CONSUMES),
        (LicensesView::NAME, LicensesView::CONSUMES),
        (UsersView::NAME, UsersView::CONSUMES),
        (GroupsView::NAME, GroupsView::CONSUMES),
        (JobsView::NAME, JobsView::CONSUMES),
        (CommercialView::NAME, CommercialView::CONSUMES),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use quantus_domain::commercial::{
        contract::ContractEvent, customer::CustomerEvent, invoice::InvoiceEvent, usage::UsageEvent,
    };
    use quantus_domain::events::EventEnum;
    use quantus_domain::evidence::{bundle::EvidenceBundleEvent, job::JobEvent};
    use quantus_domain::identity::{group::GroupEvent, user::UserEvent};
    use quantus_domain::licensing::license::LicenseEvent;
    use quantus_domain::organization::OrganizationEvent;
    use std::collections::BTreeSet;

    /// An enum's Rust name and its variants (wire names).
    type Variants = (&'static str, &'static [&'static str]);

    /// The [`Variants`] of `E`, from the enum itself.
    fn variants<E: EventEnum>() -> Variants {
        let path = std::any::type_name::<E>();
        (path.rsplit("::").next().unwrap_or(path), E::NAMES)
    }

    /// The variants `source` (a model's code, tests cut off) handles: named at least once
    /// other than in an arm that does nothing (`Variant(_) => {}`, `=> Ok(Vec::new())`).
    fn handled(source: &str, enums: &[Variants]) -> BTreeSet<String> {
        let code = source.split("#[cfg(test)]").next().unwrap_or(source);
        // The list itself names every variant it lists: only the code around it counts.
        let code = match code.split_once("pub const CONSUMES") {
            Some((before, list)) => {
                format!(
                    "{before}{}",
                    list.split_once("];").map_or("", |(_, after)| after)
                )
            }
            None => code.to_owned(),
        };
        let mut out = BTreeSet::new();
        for (name, variants) in enums {
            for variant in *variants {
                let path = format!("{name}::{variant}");
                let acts = code.match_indices(&path).any(|(at, _)| {
                    let after: String = code[at + path.len()..]
                        .chars()
                        .take(60)
                        .filter(|c| !c.is_whitespace())
                        .collect();
                    !(after.starts_with("(_)=>{}") || after.starts_with("(_)=>Ok(Vec::new())"))
                });
                if acts {
                    out.insert((*variant).to_owned());
                }
            }
        }
        out
    }

    /// Each model: its name, `CONSUMES`, source and the enums it decodes.
    fn models() -> Vec<(
        &'static str,
        &'static [&'static str],
        &'static str,
        Vec<Variants>,
    )> {
        vec![
            (
                OrganizationsView::NAME,
                OrganizationsView::CONSUMES,
                include_str!("organizations.rs"),
                vec![variants::<OrganizationEvent>()],
            ),
            (
                LicensesView::NAME,
                LicensesView::CONSUMES,
                include_str!("licenses.rs"),
                vec![variants::<LicenseEvent>()],
            ),
            (
                UsersView::NAME,
                UsersView::CONSUMES,
                include_str!("users.rs"),
                vec![variants::<UserEvent>()],
            ),
            (
                GroupsView::NAME,
                GroupsView::CONSUMES,
                include_str!("groups.rs"),
                vec![variants::<GroupEvent>()],
            ),
            (
                JobsView::NAME,
                JobsView::CONSUMES,
                include_str!("jobs.rs"),
                vec![variants::<JobEvent>(), variants::<EvidenceBundleEvent>()],
            ),
            (
                CommercialView::NAME,
                CommercialView::CONSUMES,
                include_str!("commercial.rs"),
                vec![
                    variants::<CustomerEvent>(),
                    variants::<ContractEvent>(),
                    variants::<UsageEvent>(),
                    variants::<InvoiceEvent>(),
                ],
            ),
        ]
    }

    #[test]
    fn each_read_model_lists_exactly_the_events_its_code_handles() {
        let listed_models: Vec<&str> = read_models().iter().map(|(n, _)| *n).collect();
        let checked: Vec<&str> = models().iter().map(|(n, ..)| *n).collect();
        assert_eq!(listed_models, checked, "a read model is not checked here");
        for (model, consumes, source, enums) in models() {
            let listed: BTreeSet<String> = consumes.iter().map(|s| (*s).to_owned()).collect();
            let code = handled(source, &enums);
            assert_eq!(
                listed.difference(&code).collect::<Vec<_>>(),
                Vec::<&String>::new(),
                "{model}: CONSUMES lists events its code does not handle"
            );
            assert_eq!(
                code.difference(&listed).collect::<Vec<_>>(),
                Vec::<&String>::new(),
                "{model}: its code handles events CONSUMES does not list"
            );
        }
    }

    #[test]
    fn an_arm_that_does_nothing_is_not_handling() {
        let enums = [("UsageEvent", &["UsageRecorded", "QuotaExceeded"][..])];
        let source =
            "match e { UsageEvent::UsageRecorded(p) => f(p), UsageEvent::QuotaExceeded(_) => {} }";
        assert_eq!(
            handled(source, &enums),
            BTreeSet::from(["UsageRecorded".to_owned()])
        );
        let source = "UsageEvent::QuotaExceeded(_) => Ok(Vec::new()), #[cfg(test)] UsageEvent::UsageRecorded";
        assert!(handled(source, &enums).is_empty());
        let source =
            "pub const CONSUMES: &[&str] = consumed![UsageEvent::QuotaExceeded]; fn f() {}";
        assert!(
            handled(source, &enums).is_empty(),
            "the list is not the code"
        );
    }
}
