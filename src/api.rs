//! HTTP JSON API (axum): thin handlers over intake, spool and scheduler.

use crate::config::parse_duration;
use crate::intake::{Intake, IntakeError, RecipientSpec, Submission};
use crate::rules::Level;
use crate::spool::{Lookup, Priority};
use crate::verp::{id_str, parse_id};
use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

pub struct ApiState {
    pub intake: Arc<Intake>,
    pub ctx: Arc<crate::delivery::Ctx>,
    pub token: Option<String>,
}

type St = State<Arc<ApiState>>;

pub fn router(state: Arc<ApiState>) -> Router {
    let api = Router::new()
        .route("/api/v1/messages", post(inject))
        .route("/api/v1/messages/{id}", get(message))
        .route("/api/v1/status", get(status))
        .route("/api/v1/pause", post(pause))
        .route("/api/v1/resume", post(resume))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/level", get(get_level).post(set_level))
        .route("/api/v1/rules/reload", post(reload))
        .route("/api/v1/paths/{id}/suspend", post(suspend_path))
        .route("/api/v1/paths/{id}/resume", post(resume_path))
        .route("/api/v1/domains/{domain}/check", get(domain_check))
        .route("/api/v1/campaigns", get(campaigns))
        .route(
            "/api/v1/campaigns/{campaign}/{action}",
            post(campaign_action),
        )
        .route("/api/v1/tenants/{tenant}/{action}", post(tenant_action))
        .route(
            "/api/v1/quarantine",
            get(quarantine_list).post(quarantine_add),
        )
        .route("/api/v1/quarantine/export", get(quarantine_export))
        .route("/api/v1/quarantine/import", post(quarantine_import))
        .route(
            "/api/v1/quarantine/{address}",
            axum::routing::delete(quarantine_remove),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(|| async { err(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

fn err(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({"error": msg.into()}))).into_response()
}

async fn auth(State(st): St, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(token) = &st.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok = given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0;
        if !ok {
            return err(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RecipientIn {
    Plain(String),
    Full {
        email: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        vars: Option<crate::template::Vars>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InjectIn {
    #[serde(default)]
    campaign: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    pool: Option<String>,
    #[serde(default)]
    priority: Option<String>,
    #[serde(default)]
    expires_in: Option<String>,
    recipients: Vec<RecipientIn>,
    content: String,
}

async fn inject(State(st): St, body: Body) -> Response {
    let limit = st.intake.cfg.intake.max_request_size;
    let bytes = match to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body exceeds max_request_size ({limit} bytes)"),
            )
        }
    };
    let req: InjectIn = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let priority = match req.priority.as_deref() {
        None | Some("bulk") => Priority::Bulk,
        Some("transactional") => Priority::Transactional,
        Some(p) => {
            return err(
                StatusCode::BAD_REQUEST,
                format!("priority {p:?} is not \"bulk\" or \"transactional\""),
            )
        }
    };
    let expires_in = match req.expires_in.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return err(StatusCode::BAD_REQUEST, format!("expires_in: {e}")),
    };
    if req.recipients.is_empty() {
        return err(StatusCode::BAD_REQUEST, "recipients is empty");
    }
    if req.content.len() > st.intake.cfg.intake.max_message_size {
        return err(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "content is {} bytes, over max_message_size ({} bytes)",
                req.content.len(),
                st.intake.cfg.intake.max_message_size
            ),
        );
    }
    let sub = Submission {
        campaign: req.campaign,
        tenant: req.tenant,
        pool: req.pool,
        priority,
        expires_in,
        recipients: req
            .recipients
            .into_iter()
            .map(|r| match r {
                RecipientIn::Plain(email) => RecipientSpec {
                    email,
                    id: None,
                    vars: None,
                },
                RecipientIn::Full { email, id, vars } => RecipientSpec { email, id, vars },
            })
            .collect(),
        content: req.content.into_bytes(),
        strip_intake_headers: false,
        channel: "http",
    };
    match st.intake.submit(sub).await {
        Ok(receipt) => (StatusCode::ACCEPTED, Json(receipt)).into_response(),
        Err(IntakeError::NoRecipients(rejected)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "no valid recipient", "accepted": 0, "messages": [], "rejected": rejected})),
        )
            .into_response(),
        Err(IntakeError::Message(e)) => {
            let code = if matches!(e, crate::intake::message::MessageError::TooLarge(..)) {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            err(code, format!("content: {e}"))
        }
        Err(IntakeError::Busy(e)) => err(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(IntakeError::Spool(e)) => {
            tracing::error!(error = %e, "spool write failed");
            err(StatusCode::INTERNAL_SERVER_ERROR, "local storage error; nothing was accepted")
        }
        Err(e) => err(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn message(State(st): St, Path(id): Path<String>) -> Response {
    let Some(n) = parse_id(&id.to_ascii_lowercase()) else {
        return err(StatusCode::BAD_REQUEST, "id must be 16 hex digits");
    };
    let lookup = {
        let spool = st.intake.spool.clone();
        tokio::task::spawn_blocking(move || spool.lookup(n)).await
    };
    let (state, d) = match lookup {
        Ok(Ok(Some(Lookup::Active(d)))) => (
            if d.attempts == 0 {
                "queued"
            } else {
                "deferred"
            },
            d,
        ),
        Ok(Ok(Some(Lookup::Finished(f)))) => (f.state.as_str(), f.delivery),
        Ok(Ok(None)) => return err(StatusCode::NOT_FOUND, format!("no delivery {id}")),
        Ok(Err(e)) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let attempts: Vec<Value> = d
        .history()
        .iter()
        .map(|a| {
            json!({"ts": crate::clock::rfc3339(a.ts), "mx": a.mx, "ip": a.ip, "code": a.code,
                   "enhanced": a.enhanced, "response": a.response})
        })
        .collect();
    Json(json!({
        "id": id_str(d.id),
        "state": state,
        "recipient": d.recipient,
        "recipient_id": d.recipient_id(),
        "campaign": d.campaign(),
        "tenant": d.tenant(),
        "envelope_from": st.intake.verp.envelope_of(&d),
        "created": crate::clock::rfc3339(d.created_ms),
        "expires": crate::clock::rfc3339(d.expires_ms),
        "next_attempt": if d.attempts > 0 && state == "deferred" { Some(crate::clock::rfc3339(d.next_ms)) } else { None },
        "attempt_count": d.attempts,
        "attempts": attempts,
    }))
    .into_response()
}

async fn status(State(st): St) -> Response {
    let totals = st.intake.sched.totals();
    let paths = st.intake.sched.paths(100);
    let (level, per_source) = st.intake.sched.levels();
    Json(json!({
        "totals": totals,
        "paths": paths,
        "level": level.as_str(),
        "source_levels": per_source.iter().map(|(s, l)| json!({"source": s, "level": l.as_str()})).collect::<Vec<_>>(),
        "spool_bytes": st.intake.spool.file_bytes(),
    }))
    .into_response()
}

async fn metrics(State(st): St) -> Response {
    let i = &st.intake;
    let m = &i.metrics;
    let t = i.sched.totals();
    for (state, v) in [
        ("waiting", t.waiting),
        ("resolving", t.resolving),
        ("ready", t.ready),
        ("in_flight", t.in_flight),
    ] {
        m.queue.with_label_values(&[state]).set(v as i64);
    }
    for (rule, conns, limit) in i.sched.rule_connections() {
        m.connections.with_label_values(&[&rule]).set(conns as i64);
        m.connection_limit
            .with_label_values(&[&rule])
            .set(limit as i64);
    }
    for (source, level) in i.sched.source_levels() {
        let idx = Level::ALL.iter().position(|l| *l == level).unwrap_or(4);
        m.level.with_label_values(&[&source]).set(idx as i64);
        m.level_percent
            .with_label_values(&[&source])
            .set((level.factor() * 100.0).round() as i64);
    }
    m.spool_bytes.set(i.spool.file_bytes() as i64);
    let mut by_state = [0i64; 3];
    for c in i.campaigns.list() {
        by_state[c.state as usize] += 1;
    }
    for (k, st) in ["active", "paused", "cancelled"].iter().enumerate() {
        m.campaigns.with_label_values(&[st]).set(by_state[k]);
    }
    m.quarantine.reset();
    for r in crate::bounce::Reason::ALL {
        m.quarantine.with_label_values(&[r.as_str()]).set(0);
    }
    for (reason, n) in i.quarantine.counts(i.clock.now_ms()) {
        m.quarantine.with_label_values(&[&reason]).set(n as i64);
    }
    if let Some(p) = i.spool.disk_used_percent() {
        m.spool_disk_percent.set(p.round() as i64);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

async fn queues(State(st): St) -> Response {
    Json(json!({
        "totals": st.intake.sched.totals(),
        "paths": st.intake.sched.paths(10_000),
    }))
    .into_response()
}

async fn get_level(State(st): St) -> Response {
    let (level, per_source) = st.intake.sched.levels();
    Json(json!({
        "level": level.as_str(),
        "sources": per_source.iter().map(|(s, l)| json!({"source": s, "level": l.as_str()})).collect::<Vec<_>>(),
        "warmup": st.intake.sched.warmup_status(),
    }))
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelIn {
    level: String,
    #[serde(default)]
    source: Option<String>,
}

async fn set_level(State(st): St, body: axum::body::Bytes) -> Response {
    let req: LevelIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let Some(level) = Level::parse(&req.level) else {
        return err(
            StatusCode::BAD_REQUEST,
            format!(
                "unknown level {:?} (slow, normal, fast, very_fast, boost, custom)",
                req.level
            ),
        );
    };
    if let Err(e) = st.intake.sched.set_level(level, req.source.as_deref()) {
        return err(StatusCode::BAD_REQUEST, e);
    }
    let key = match &req.source {
        Some(s) => format!("level:{s}"),
        None => "level".to_string(),
    };
    let spool = st.intake.spool.clone();
    let value = level.as_str().to_string();
    match tokio::task::spawn_blocking(move || spool.meta_set(&key, &value)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("level set but not saved: {e}"),
            )
        }
        Err(e) => return err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    Json(json!({"level": level.as_str(), "source": req.source})).into_response()
}

async fn reload(State(st): St) -> Response {
    match crate::engine::reload_rules(&st.intake.cfg, &st.intake.sched) {
        Ok(n) => {
            st.intake
                .metrics
                .reloads
                .with_label_values(&["mx", "ok"])
                .inc();
            Json(json!({"reloaded": true, "rules": n})).into_response()
        }
        Err(e) => {
            st.intake
                .metrics
                .reloads
                .with_label_values(&["mx", "refused"])
                .inc();
            err(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("rules refused, the running rules stay: {e}"),
            )
        }
    }
}

async fn suspend_path(State(st): St, Path(id): Path<String>) -> Response {
    if st.intake.sched.set_path_suspended(&id, true) {
        Json(json!({"path": id, "suspended": true})).into_response()
    } else {
        err(StatusCode::NOT_FOUND, format!("no path {id}"))
    }
}

async fn resume_path(State(st): St, Path(id): Path<String>) -> Response {
    if st.intake.sched.set_path_suspended(&id, false) {
        Json(json!({"path": id, "suspended": false})).into_response()
    } else {
        err(StatusCode::NOT_FOUND, format!("no path {id}"))
    }
}

async fn pause(State(st): St) -> Response {
    st.intake.sched.set_paused(true);
    Json(json!({"paused": true})).into_response()
}

async fn resume(State(st): St) -> Response {
    st.intake.sched.set_paused(false);
    Json(json!({"paused": false})).into_response()
}

#[derive(Deserialize)]
struct QuarantineQuery {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

async fn quarantine_list(
    State(st): St,
    axum::extract::Query(q): axum::extract::Query<QuarantineQuery>,
) -> Response {
    let now = st.intake.clock.now_ms();
    let limit = q.limit.unwrap_or(100).min(10_000);
    let list = st
        .intake
        .quarantine
        .list(q.reason.as_deref(), q.after.as_deref(), limit, now);
    let next = if list.len() == limit {
        list.last().map(|e| e.address.clone())
    } else {
        None
    };
    let entries: Vec<Value> = list
        .iter()
        .map(|e| {
            json!({"address": e.address, "tenant": e.tenant, "reason": e.reason, "type": e.bounce_type,
                   "error_count": e.error_count,
                   "first_error": crate::clock::rfc3339(e.first_error_ms),
                   "last_error": crate::clock::rfc3339(e.last_error_ms),
                   "quarantined_at": e.quarantined_at.map(crate::clock::rfc3339),
                   "release_at": e.release_at.map(crate::clock::rfc3339),
                   "last_response": e.last_response})
        })
        .collect();
    Json(json!({"entries": entries, "next_after": next})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuarantineIn {
    address: String,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
}

async fn quarantine_add(State(st): St, body: axum::body::Bytes) -> Response {
    let req: QuarantineIn = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let addr = match crate::intake::address::parse(&req.address) {
        Ok(a) => a.as_string(),
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("address: {e}")),
    };
    let reason = req.reason.unwrap_or_else(|| "manual".into());
    let now = st.intake.clock.now_ms();
    match st
        .intake
        .quarantine
        .add(req.tenant.as_deref(), &addr, &reason, now)
        .await
    {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"address": addr, "reason": reason})),
        )
            .into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn quarantine_remove(State(st): St, Path(address): Path<String>) -> Response {
    match st.intake.quarantine.remove(&address).await {
        Ok(0) => err(
            StatusCode::NOT_FOUND,
            format!("{address} is not in quarantine"),
        ),
        Ok(n) => Json(json!({"address": address, "removed": n})).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn quarantine_export(State(st): St) -> Response {
    let now = st.intake.clock.now_ms();
    (
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        st.intake.quarantine.export_csv(now),
    )
        .into_response()
}

async fn quarantine_import(State(st): St, body: axum::body::Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return err(StatusCode::BAD_REQUEST, "CSV must be UTF-8");
    };
    let now = st.intake.clock.now_ms();
    match st.intake.quarantine.import_csv(text, now).await {
        Ok((n, bad)) => Json(json!({"imported": n, "rejected": bad})).into_response(),
        Err(e) => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn campaigns(State(st): St) -> Response {
    let c = &st.intake.campaigns;
    let tenants: Vec<Value> = c
        .tenant_states()
        .into_iter()
        .map(|(t, s, r)| json!({"tenant": t, "state": s, "reason": r}))
        .collect();
    Json(json!({"campaigns": c.list(), "tenants": tenants})).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RateIn {
    #[serde(default)]
    messages_per_hour: Option<u64>,
}

async fn campaign_action(
    State(st): St,
    Path((campaign, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    use crate::campaign::State as CState;
    let c = &st.intake.campaigns;
    match action.as_str() {
        "pause" => {
            c.set_state(
                &campaign,
                CState::Paused,
                Some("paused by an operator".into()),
            )
            .await;
        }
        "resume" => {
            c.set_state(&campaign, CState::Active, None).await;
            st.intake.sched.unpark(Some(&campaign));
        }
        "cancel" => {
            c.set_state(
                &campaign,
                CState::Cancelled,
                Some("cancelled by an operator".into()),
            )
            .await;
            let taken = st
                .intake
                .sched
                .take_matching(|d| d.campaign() == Some(campaign.as_str()));
            let n = taken.len();
            for (d, qid) in taken {
                st.ctx.cancelled(d, qid).await;
            }
            return Json(json!({"campaign": campaign, "state": "cancelled", "dropped": n}))
                .into_response();
        }
        "rate" => {
            let req: RateIn = if body.is_empty() {
                RateIn::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return err(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
                }
            };
            if req.messages_per_hour == Some(0) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "messages_per_hour must be above zero (or null for no cap)",
                );
            }
            c.set_rate_cap(&campaign, req.messages_per_hour).await;
        }
        other => {
            return err(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?} (pause, resume, cancel, rate)"),
            )
        }
    }
    Json(json!(c.get(&campaign))).into_response()
}

async fn tenant_action(State(st): St, Path((tenant, action)): Path<(String, String)>) -> Response {
    use crate::campaign::State as CState;
    let c = &st.intake.campaigns;
    let state = match action.as_str() {
        "pause" => CState::Paused,
        "resume" => CState::Active,
        "cancel" => CState::Cancelled,
        other => {
            return err(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?} (pause, resume, cancel)"),
            )
        }
    };
    c.set_tenant_state(&tenant, state, Some(format!("{action} by an operator")))
        .await;
    let mut dropped = 0;
    match state {
        CState::Active => st.intake.sched.unpark(None),
        CState::Cancelled => {
            let taken = st
                .intake
                .sched
                .take_matching(|d| d.tenant() == Some(tenant.as_str()));
            dropped = taken.len();
            for (d, qid) in taken {
                st.ctx.cancelled(d, qid).await;
            }
        }
        CState::Paused => {}
    }
    Json(json!({"tenant": tenant, "state": state, "dropped": dropped})).into_response()
}

async fn domain_check(State(st): St, Path(domain): Path<String>) -> Response {
    let domain = match crate::domain::normalize_domain(&domain) {
        Ok(d) => d,
        Err(e) => return err(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let signer = st.ctx.renderer.dkim.as_deref();
    let setup = crate::domain::setup_for(&st.intake.cfg, signer).dkim_of(signer, &domain);
    let checks = crate::domain::check(&domain, &setup, st.ctx.dns.inner()).await;
    let ok = checks.iter().all(|c| c.status == "ok");
    Json(json!({"domain": domain, "ok": ok, "records": checks})).into_response()
}
