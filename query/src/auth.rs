//! Bearer JWTs: verified with one pinned algorithm (HS256 secret, or RS256 /
//! ES256 public keys from a PEM file or a JWKS file), `exp` required, `exp`
//! and `nbf` checked with a small leeway. The token's project (and tenant)
//! become the [`Scope`] every query is filtered by. Hourglass issues no
//! tokens: the app's own auth service does (README "Query API").

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use hourglass_core::config::{JwtAlgorithm, QueryConfig};

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("query.jwt_secret is empty: HS256 needs a shared secret (HOURGLASS_QUERY__JWT_SECRET)")]
    NoSecret,
    #[error("query.jwt_algorithm {0:?} needs query.jwt_public_key_file or query.jwt_jwks_file")]
    NoPublicKey(JwtAlgorithm),
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable {alg:?} key: {reason}")]
    BadKey {
        path: String,
        alg: JwtAlgorithm,
        reason: String,
    },
}

/// Who is asking, and what they may see: every query filters by it.
#[derive(Debug, Clone)]
pub struct Scope {
    pub project_id: String,
    pub tenant_id: Option<String>,
    pub admin: bool,
    /// `sub`, for the deletions log.
    pub subject: String,
    /// Rate-limit key: the token's hash.
    pub token_key: u64,
}

/// The keys a token may be signed with.
pub struct Verifier {
    validation: Validation,
    /// One key (secret or PEM), or keys by `kid` (JWKS).
    key: Option<DecodingKey>,
    keys_by_id: HashMap<String, DecodingKey>,
    project_claim: String,
    tenant_claim: String,
    admin_claim: String,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
    }
}

fn read(path: &str) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|source| AuthConfigError::Read {
        path: path.into(),
        source,
    })
}

impl Verifier {
    pub fn from_config(cfg: &QueryConfig) -> Result<Self, AuthConfigError> {
        let alg = algorithm(cfg.jwt_algorithm);
        let mut validation = Validation::new(alg);
        validation.leeway = cfg.jwt_leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if !cfg.jwt_issuer.is_empty() {
            validation.set_issuer(&[&cfg.jwt_issuer]);
        }
        if cfg.jwt_audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.jwt_audience]);
        }
        let bad_key = |path: &str, reason: String| AuthConfigError::BadKey {
            path: path.into(),
            alg: cfg.jwt_algorithm,
            reason,
        };
        let mut key = None;
        let mut keys_by_id = HashMap::new();
        match cfg.jwt_algorithm {
            JwtAlgorithm::HS256 => {
                if cfg.jwt_secret.is_empty() {
                    return Err(AuthConfigError::NoSecret);
                }
                key = Some(DecodingKey::from_secret(cfg.jwt_secret.as_bytes()));
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                if !cfg.jwt_public_key_file.is_empty() {
                    let path = &cfg.jwt_public_key_file;
                    let pem = read(path)?;
                    let k = if cfg.jwt_algorithm == JwtAlgorithm::RS256 {
                        DecodingKey::from_rsa_pem(&pem)
                    } else {
                        DecodingKey::from_ec_pem(&pem)
                    };
                    key = Some(k.map_err(|e| bad_key(path, e.to_string()))?);
                } else if !cfg.jwt_jwks_file.is_empty() {
                    let path = &cfg.jwt_jwks_file;
                    let set: JwkSet = serde_json::from_slice(&read(path)?)
                        .map_err(|e| bad_key(path, e.to_string()))?;
                    for jwk in &set.keys {
                        let Some(kid) = jwk.common.key_id.clone() else {
                            continue;
                        };
                        if let Ok(k) = DecodingKey::from_jwk(jwk) {
                            keys_by_id.insert(kid, k);
                        }
                    }
                    if keys_by_id.is_empty() {
                        return Err(bad_key(path, "no key with a `kid`".into()));
                    }
                } else {
                    return Err(AuthConfigError::NoPublicKey(cfg.jwt_algorithm));
                }
            }
        }
        Ok(Self {
            validation,
            key,
            keys_by_id,
            project_claim: cfg.project_claim.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            admin_claim: cfg.admin_claim.clone(),
        })
    }

    /// The scope of a bearer token, or why it is refused.
    pub fn verify(&self, token: &str) -> Result<Scope, ApiError> {
        let unauthorized = |why: String| ApiError::Unauthorized(format!("invalid token: {why}"));
        // The header is read only to pick a JWKS key; the algorithm that
        // counts is the pinned one in `validation` (`none` is not even parsed).
        let header = decode_header(token).map_err(|e| unauthorized(e.to_string()))?;
        let key = match &self.key {
            Some(k) => k,
            None => header
                .kid
                .as_deref()
                .and_then(|kid| self.keys_by_id.get(kid))
                .ok_or_else(|| unauthorized("no key with this token's `kid`".into()))?,
        };
        let claims = decode::<Map<String, Value>>(token, key, &self.validation)
            .map_err(|e| unauthorized(e.to_string()))?
            .claims;
        let project_id = match claims.get(&self.project_claim) {
            Some(Value::String(p)) if !p.is_empty() => p.clone(),
            _ => {
                return Err(ApiError::Forbidden(format!(
                    "the token has no `{}` claim: every query is scoped to one project",
                    self.project_claim
                )));
            }
        };
        let tenant_id = match claims.get(&self.tenant_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            Some(_) => {
                return Err(ApiError::Forbidden(format!(
                    "the `{}` claim must be a non-empty string",
                    self.tenant_claim
                )));
            }
        };
        let admin = claims.get(&self.admin_claim) == Some(&Value::Bool(true));
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Scope {
            project_id,
            tenant_id,
            admin,
            subject,
            token_key: token_key(token),
        })
    }
}

fn token_key(token: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl FromRequestParts<Arc<AppState>> for Scope {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthorized("missing `Authorization: Bearer <JWT>`".into())
            })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("expected `Authorization: Bearer <JWT>`".into())
            })?;
        let scope = state.verifier.verify(token)?;
        state.check_rate(&scope)?;
        Ok(scope)
    }
}
