//! The Admin console's evidence retention page of a customer: how many days the artifacts of
//! each job class are kept (set one rule at a time), and the legal hold that keeps them all
//! whatever the rules say (placed with a reason, released; each after a confirmation page).
//! Every page is `/v1/retention` calls with the operator's token.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use super::admin::{correctable, operator, Admin, Operator, INFO};
use super::api::segment;
use super::session::{redirect, Posted};
use super::{render, Layout};
use super::{PageError, SignedIn};
use crate::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/admin/customers/{id}/retention",
            get(retention).post(set_rule),
        )
        .route(
            "/admin/customers/{id}/retention/hold/{action}",
            get(confirm_hold).post(hold),
        )
}

/// The job class a rule for every class without one of its own names.
const ANY_CLASS: &str = "*";

/// The navigation entry: retention is a customer's.
const NAV: &str = "/";

/// `GET /v1/retention/{org}`.
#[derive(Debug, Deserialize)]
struct Policy {
    rules: BTreeMap<String, u32>,
    legal_hold: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CustomerName {
    name: String,
}

/// The customer's name and retention policy.
async fn load(op: &Operator, org: &str) -> Result<(String, Policy), PageError> {
    let api = op.0.api();
    let c: CustomerName = api.get(&format!("/customers/{org}")).await?;
    let policy: Policy = api.get(&format!("/retention/{org}")).await?;
    Ok((c.name, policy))
}

/// The rule form as typed, kept when the API refuses it.
#[derive(Debug, Default, Deserialize)]
struct RuleForm {
    #[serde(default)]
    job_class: String,
    #[serde(default)]
    days: String,
}

#[derive(Template)]
#[template(path = "admin/retention.html")]
struct RetentionPage {
    layout: Layout,
    org: String,
    customer: String,
    rules: Vec<(String, u32)>,
    legal_hold: Option<String>,
    csrf: String,
    form: RuleForm,
    /// Why the rule was refused (the API's problem `detail`).
    refused: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Done {
    done: Option<String>,
}

async fn retention(
    me: SignedIn<Admin>,
    Path(id): Path<String>,
    Query(p): Query<Done>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let notice = match p.done.as_deref() {
        Some("rule") => Some("The retention rule was set."),
        Some("place") => Some("The legal hold was placed."),
        Some("release") => Some("The legal hold was released."),
        _ => None,
    };
    page(&op, &id, RuleForm::default(), None, notice).await
}

async fn page(
    op: &Operator,
    id: &str,
    form: RuleForm,
    refused: Option<String>,
    notice: Option<&str>,
) -> Result<Response, PageError> {
    let org = segment(&INFO, id)?;
    let (customer, policy) = load(op, org).await?;
    let mut layout = op.0.layout(format!("Retention · {customer}"), NAV);
    layout.notice = notice.map(str::to_owned);
    let mut shown = render(&RetentionPage {
        layout,
        org: org.to_owned(),
        customer,
        rules: policy.rules.into_iter().collect(),
        legal_hold: policy.legal_hold,
        csrf: op.0.session.csrf.clone(),
        form,
        refused: refused.clone(),
    });
    if refused.is_some() {
        *shown.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(shown)
}

/// A job class as a path segment of `/v1/retention/{org}/rules/{job_class}`: `*` or a name
/// of letters, digits, `-`, `_` and `.` (what job classes are named; nothing to encode).
fn job_class(typed: &str) -> Result<&str, String> {
    let class = typed.trim();
    if class == ANY_CLASS || segment(&INFO, class).is_ok() {
        Ok(class)
    } else {
        Err(format!(
            "a job class is 1 to 200 letters, digits, '-', '_' or '.', or {ANY_CLASS} for every class without a rule of its own"
        ))
    }
}

async fn set_rule(
    Path(id): Path<String>,
    posted: Posted<Admin, RuleForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let org = segment(&INFO, &id)?.to_owned();
    let class = match job_class(&form.job_class) {
        Ok(c) => c.to_owned(),
        Err(detail) => return page(&op, &org, form, Some(detail), None).await,
    };
    let Ok(days) = form.days.trim().parse::<u32>() else {
        let detail = "keep for a whole number of days (0 or more)".to_owned();
        return page(&op, &org, form, Some(detail), None).await;
    };
    // The API checks the rest (at most so many days).
    let set =
        op.0.api()
            .put(
                &format!("/retention/{org}/rules/{class}"),
                &serde_json::json!({ "keep_artifacts_days": days }),
            )
            .await;
    if let Err(e) = set {
        let detail = correctable(e)?;
        return page(&op, &org, form, Some(detail), None).await;
    }
    Ok(redirect(&format!(
        "/admin/customers/{org}/retention?done=rule"
    )))
}

/// Placing or releasing the legal hold, as its confirmation page explains it.
struct HoldAction {
    name: &'static str,
    title: &'static str,
    explain: &'static str,
    button: &'static str,
    /// It asks for the reason.
    reason: bool,
}

const PLACE: HoldAction = HoldAction {
    name: "place",
    title: "Place a legal hold?",
    explain: "While the hold is in place no artifact of this customer is removed, whatever the retention rules say. The reason is recorded in the event log.",
    button: "Place legal hold",
    reason: true,
};

const RELEASE: HoldAction = HoldAction {
    name: "release",
    title: "Release the legal hold?",
    explain: "The retention rules apply again: artifacts older than their rule allows are removed by the next retention sweep, and cannot be brought back.",
    button: "Release legal hold",
    reason: false,
};

fn hold_action(name: &str) -> Result<&'static HoldAction, PageError> {
    match name {
        "place" => Ok(&PLACE),
        "release" => Ok(&RELEASE),
        _ => Err(PageError::not_found(
            &INFO,
            format!("no legal hold action {name:?}"),
        )),
    }
}

#[derive(Template)]
#[template(path = "admin/retention_hold.html")]
struct HoldPage {
    layout: Layout,
    org: String,
    customer: String,
    legal_hold: Option<String>,
    action: &'static HoldAction,
    csrf: String,
    reason: String,
    refused: Option<String>,
}

async fn hold_page(
    op: &Operator,
    org: &str,
    action: &'static HoldAction,
    reason: String,
    refused: Option<String>,
) -> Result<Response, PageError> {
    let (customer, policy) = load(op, org).await?;
    let mut shown = render(&HoldPage {
        layout: op.0.layout(action.title, NAV),
        org: org.to_owned(),
        customer,
        legal_hold: policy.legal_hold,
        action,
        csrf: op.0.session.csrf.clone(),
        reason,
        refused: refused.clone(),
    });
    if refused.is_some() {
        *shown.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    Ok(shown)
}

async fn confirm_hold(
    me: SignedIn<Admin>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let op = operator(me)?;
    let org = segment(&INFO, &id)?;
    hold_page(&op, org, hold_action(&action)?, String::new(), None).await
}

#[derive(Debug, Deserialize)]
struct HoldForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    confirm: Option<String>,
}

async fn hold(
    Path((id, action)): Path<(String, String)>,
    posted: Posted<Admin, HoldForm>,
) -> Result<Response, PageError> {
    let Posted { signed_in, form } = posted;
    let op = operator(signed_in)?;
    let org = segment(&INFO, &id)?;
    let action = hold_action(&action)?;
    let reason = form.reason.trim().to_owned();
    if form.confirm.as_deref() != Some("yes") {
        let detail = "tick the box to confirm, then send the form again".to_owned();
        return hold_page(&op, org, action, reason, Some(detail)).await;
    }
    if action.reason && reason.is_empty() {
        let detail = "say why the artifacts are held (the reason is recorded)".to_owned();
        return hold_page(&op, org, action, reason, Some(detail)).await;
    }
    let api = op.0.api();
    let path = format!("/retention/{org}/legal-hold");
    let done = if action.reason {
        api.post(&path, &serde_json::json!({ "reason": reason }))
            .await
    } else {
        api.delete(&path).await
    };
    if let Err(e) = done {
        let detail = correctable(e)?;
        return hold_page(&op, org, action, reason, Some(detail)).await;
    }
    Ok(redirect(&format!(
        "/admin/customers/{org}/retention?done={}",
        action.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_classes_are_names_or_the_star() {
        assert_eq!(job_class(" gpu-batch "), Ok("gpu-batch"));
        assert_eq!(job_class("*"), Ok("*"));
        assert!(job_class("a/b").is_err());
        assert!(job_class("").is_err());
        assert!(job_class("..").is_err());
    }
}
