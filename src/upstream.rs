//! [`MindTickleClient`]: the reqwest adapter behind the `MindTickleApi` port.
//!
//! Per-tenant credentials come from the tenant's RLS-protected secrets row; bearer tokens
//! are cached per tenant and refreshed before expiry (and once on 401/403). Answers are
//! typed; failures map to the small `UpstreamError` enum. Rate limiting is not done here:
//! every call already holds a permit of the tenant's `TenantLimiter`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::actors::ports::UpstreamCredentials;
use crate::actors::untrusted::{check_catalog, check_courses, check_roster, path_segment};
use crate::actors::upstream::{
    CatalogCourse, MindTickleApi, RosterUser, UpstreamCourse, UpstreamError,
};
use crate::actors::TenantId;
use crate::config::MindTickleConfig;

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

pub struct MindTickleClient {
    http: reqwest::Client,
    base: String,
    credentials: Arc<dyn UpstreamCredentials>,
    margin: Duration,
    tokens: Mutex<HashMap<TenantId, CachedToken>>,
    /// Largest answer body read; a larger one fails the job (`mindtickle.max_answer_bytes`).
    max_answer_bytes: usize,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: u64,
}

fn transport(e: reqwest::Error) -> UpstreamError {
    if e.is_timeout() {
        UpstreamError::Timeout
    } else {
        // Without the URL: it is configuration, but keep errors free of anything sensitive.
        UpstreamError::Transport(e.without_url().to_string())
    }
}

fn status_error(status: StatusCode, headers: &reqwest::header::HeaderMap) -> UpstreamError {
    match status.as_u16() {
        429 => UpstreamError::RateLimited {
            retry_after: headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
        },
        401 | 403 => UpstreamError::Unauthorized,
        404 => UpstreamError::NotFound,
        s if s >= 500 => UpstreamError::Server { status: s },
        s => UpstreamError::Invalid(format!("status {s}")),
    }
}

impl MindTickleClient {
    pub fn new(
        cfg: &MindTickleConfig,
        credentials: Arc<dyn UpstreamCredentials>,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_millis(cfg.request_timeout_ms.min(5_000)))
            .use_rustls_tls()
            .tls_built_in_root_certs(true);
        if !cfg.ca_file.is_empty() {
            let pem = std::fs::read(&cfg.ca_file)
                .map_err(|e| format!("mindtickle.ca_file: cannot read {}: {e}", cfg.ca_file))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("mindtickle.ca_file: {}: {e}", cfg.ca_file))?;
            if certs.is_empty() {
                return Err(format!(
                    "mindtickle.ca_file: {} holds no certificate",
                    cfg.ca_file
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if !cfg.client_cert_file.is_empty() {
            let mut pem = std::fs::read(&cfg.client_cert_file).map_err(|e| {
                format!(
                    "mindtickle.client_cert_file: cannot read {}: {e}",
                    cfg.client_cert_file
                )
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(&cfg.client_key_file).map_err(|e| {
                format!(
                    "mindtickle.client_key_file: cannot read {}: {e}",
                    cfg.client_key_file
                )
            })?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                format!("mindtickle.client_key_file: not a PEM certificate and key: {e}")
            })?;
            builder = builder.identity(identity);
        }
        let http = builder.build().map_err(|e| format!("mindtickle: {e}"))?;
        Ok(Self {
            http,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            credentials,
            margin: Duration::from_secs(cfg.token_refresh_margin_s),
            tokens: Mutex::new(HashMap::new()),
            max_answer_bytes: cfg.max_answer_bytes,
        })
    }

    /// One unauthenticated request to the base URL, at start: a TLS handshake the settings
    /// cannot complete (unknown CA, wrong host, plaintext server) is a configuration error
    /// naming the setting; any HTTP answer, or no answer at all, is not (the API may be
    /// down now and back later).
    pub async fn preflight(&self) -> Result<(), String> {
        if !self.base.starts_with("https://") {
            return Ok(());
        }
        match self.http.get(&self.base).send().await {
            Ok(_) => Ok(()),
            Err(e) if crate::tls::is_client_certificate_refusal(&e) => Err(format!(
                "mindtickle.client_cert_file: the MindTickle API requires a client certificate \
                 it accepts: {}",
                e.without_url()
            )),
            Err(e) if crate::tls::is_tls_rejection(&e) => Err(format!(
                "mindtickle.ca_file: TLS handshake with the MindTickle API refused: {} (is its \
                 certificate signed by a system root or this CA, and issued for this host?)",
                e.without_url()
            )),
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "MindTickle API not reachable at start; jobs will retry");
                Ok(())
            }
        }
    }

    async fn token(&self, tenant: &TenantId, fresh: bool) -> Result<String, UpstreamError> {
        let mut tokens = self.tokens.lock().await;
        if !fresh {
            if let Some(t) = tokens.get(tenant) {
                if Instant::now() < t.refresh_at {
                    return Ok(t.token.clone());
                }
            }
        }
        let (client_id, secret) = self
            .credentials
            .upstream_credentials(tenant)
            .await
            .map_err(|e| UpstreamError::Transport(e.to_string()))?
            .ok_or(UpstreamError::NoCredentials)?;
        let resp = self
            .http
            .post(format!("{}/oauth/token", self.base))
            .json(&serde_json::json!({"client_id": client_id, "client_secret": secret}))
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(status_error(resp.status(), resp.headers()));
        }
        let answer: TokenAnswer = resp
            .json()
            .await
            .map_err(|_| UpstreamError::Invalid("token answer".into()))?;
        let lifetime = Duration::from_secs(answer.expires_in);
        let refresh_at = Instant::now() + lifetime.saturating_sub(self.margin.min(lifetime / 2));
        tokens.insert(
            tenant.clone(),
            CachedToken {
                token: answer.access_token.clone(),
                refresh_at,
            },
        );
        Ok(answer.access_token)
    }

    /// GET with the tenant's token; on 401/403 refreshes the token once and retries.
    async fn get<T: DeserializeOwned>(
        &self,
        tenant: &TenantId,
        path: &str,
    ) -> Result<T, UpstreamError> {
        self.send(tenant, reqwest::Method::GET, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        tenant: &TenantId,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, UpstreamError> {
        let mut fresh = false;
        loop {
            let token = self.token(tenant, fresh).await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&token);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            if status.is_success() {
                let body = self.bounded_body(resp).await?;
                return serde_json::from_slice(&body).map_err(|e| {
                    UpstreamError::Invalid(format!("answer is not the expected JSON: {e}"))
                });
            }
            let err = status_error(status, resp.headers());
            if err == UpstreamError::Unauthorized && !fresh {
                fresh = true;
                continue;
            }
            return Err(err);
        }
    }
}

impl MindTickleClient {
    /// The answer body, refused past `max_answer_bytes` (announced or streamed): a huge or
    /// endless answer cannot exhaust memory.
    async fn bounded_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, UpstreamError> {
        let max = self.max_answer_bytes;
        let too_large = || {
            UpstreamError::Invalid(format!(
                "answer larger than {max} bytes (mindtickle.max_answer_bytes)"
            ))
        };
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[derive(Deserialize)]
struct CoursesAnswer {
    courses: Vec<UpstreamCourse>,
}

#[derive(Deserialize)]
struct CatalogAnswer {
    courses: Vec<CatalogCourse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RosterPage {
    users: Vec<RosterUser>,
    next_page: Option<u32>,
}

#[async_trait]
impl MindTickleApi for MindTickleClient {
    async fn user_courses(
        &self,
        tenant: &TenantId,
        user_id: &str,
    ) -> Result<Vec<UpstreamCourse>, UpstreamError> {
        let a: CoursesAnswer = self
            .get(
                tenant,
                &format!("/v2/users/{}/courses", path_segment(user_id)?),
            )
            .await?;
        check_courses(&a.courses)?;
        Ok(a.courses)
    }

    async fn catalog(&self, tenant: &TenantId) -> Result<Vec<CatalogCourse>, UpstreamError> {
        let a: CatalogAnswer = self.get(tenant, "/v2/courses").await?;
        check_catalog(&a.courses)?;
        Ok(a.courses)
    }

    async fn push_user(
        &self,
        tenant: &TenantId,
        change: &serde_json::Value,
    ) -> Result<(), UpstreamError> {
        let user_id = change["userId"]
            .as_str()
            .ok_or_else(|| UpstreamError::Invalid("change without userId".into()))?;
        let path = format!("/v2/users/{}", path_segment(user_id)?);
        let _: serde_json::Value = if change["active"] == serde_json::Value::Bool(false) {
            self.send(
                tenant,
                reqwest::Method::POST,
                &format!("{path}/deactivate"),
                None,
            )
            .await?
        } else {
            let user = &change["user"];
            let body = serde_json::json!({
                "id": user_id,
                "email": user["emails"][0]["value"],
                "userName": user["userName"],
                "active": true,
            });
            self.send(tenant, reqwest::Method::PUT, &path, Some(&body))
                .await?
        };
        Ok(())
    }

    async fn roster(&self, tenant: &TenantId) -> Result<Vec<RosterUser>, UpstreamError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let p: RosterPage = self.get(tenant, &format!("/v2/users?page={page}")).await?;
            out.extend(p.users);
            match p.next_page {
                Some(n) if n > page => page = n,
                _ => {
                    check_roster(&out)?;
                    return Ok(out);
                }
            }
        }
    }
}
