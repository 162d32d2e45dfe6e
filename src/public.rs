//! The public listener (`[listen] public`): the one-click unsubscribe endpoint, separate from
//! the admin API, which stays private.
//!
//! `POST /u/{token}` (body `List-Unsubscribe=One-Click`, RFC 8058) adds the address to the
//! suppression list with reason `unsubscribed` and emits an `unsubscribed` event; repeated
//! posts are idempotent; a forged token gets 400. `GET /u/{token}` only shows a confirmation
//! page with a button: link scanners follow links and must never unsubscribe anyone.

use crate::clock::Clock;
use crate::events::{Event, Events};
use crate::quarantine::Quarantine;
use crate::unsubscribe::Tokens;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub struct PublicState {
    pub tokens: Tokens,
    pub quarantine: Arc<Quarantine>,
    pub events: Events,
    pub clock: Clock,
}

pub fn router(state: Arc<PublicState>) -> Router {
    Router::new()
        .route("/u/{token}", get(confirm_page).post(unsubscribe))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

fn html(code: StatusCode, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\"><title>{title}</title></head>\
<body style=\"font-family:sans-serif;max-width:32em;margin:4em auto\"><h1>{title}</h1>{body}</body></html>"
    );
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn confirm_page(State(st): State<Arc<PublicState>>, Path(token): Path<String>) -> Response {
    match st.tokens.verify(&token) {
        Ok(s) => html(
            StatusCode::OK,
            "Unsubscribe",
            &format!(
                "<p>Stop sending mail to <b>{}</b>?</p><form method=\"post\" action=\"/u/{}\">\
<input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
                escape(&s.recipient),
                escape(&token)
            ),
        ),
        Err(_) => html(StatusCode::BAD_REQUEST, "Invalid link", "<p>This unsubscribe link is not valid.</p>"),
    }
}

async fn unsubscribe(State(st): State<Arc<PublicState>>, Path(token): Path<String>) -> Response {
    let s = match st.tokens.verify(&token) {
        Ok(s) => s,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let now = st.clock.now_ms();
    let already = st
        .quarantine
        .blocked(s.tenant.as_deref(), &s.recipient, now);
    if already.is_none() {
        if let Err(e) = st
            .quarantine
            .add(s.tenant.as_deref(), &s.recipient, "unsubscribed", now)
            .await
        {
            tracing::error!(error = %e, "cannot record unsubscribe");
            return (StatusCode::SERVICE_UNAVAILABLE, "try again later\n").into_response();
        }
        st.events.emit(Event {
            ts: crate::clock::rfc3339(now),
            event: "unsubscribed".into(),
            campaign: s.campaign.clone(),
            tenant: s.tenant.clone(),
            recipient: Some(s.recipient.clone()),
            ..Event::default()
        });
    }
    html(
        StatusCode::OK,
        "Unsubscribed",
        "<p>You will not receive these messages any more.</p>",
    )
}
