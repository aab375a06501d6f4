//! Bearer JWTs: verified with one pinned algorithm (HS256 secret, or RS256 /
//! ES256 public keys from a PEM file or a JWKS file), `exp` required, `exp`
//! and `nbf` checked with a small leeway. The token's project (and tenant)
//! become the [`Scope`] every query is filtered by. Hourglass issues no
//! tokens: the app's own auth service does (docs/query-api.md).

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
    allow_project_wide_tokens: bool,
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
        // A configured issuer or audience is required, not only checked when
        // the token happens to carry the claim.
        let mut required = vec!["exp"];
        if !cfg.jwt_issuer.is_empty() {
            validation.set_issuer(&[&cfg.jwt_issuer]);
            required.push("iss");
        }
        if cfg.jwt_audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&cfg.jwt_audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
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
            allow_project_wide_tokens: cfg.allow_project_wide_tokens,
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
        // Fail closed: a token reads the whole project only when it carries
        // no tenant claim at all and the service allows that.
        let tenant_id = match claims.get(&self.tenant_claim) {
            None if self.allow_project_wide_tokens => None,
            None => {
                return Err(ApiError::Forbidden(format!(
                    "the token has no `{}` claim: tokens are scoped to one tenant \
                     (query.allow_project_wide_tokens lets a token without it read the whole project)",
                    self.tenant_claim
                )));
            }
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

/// An HS256 token for `project` (the whole project: no tenant claim) valid
/// for `ttl`, signed with `secret`: what `hourglass up` hands out for its
/// local demo project. In production the app's auth service mints tokens.
pub fn project_token(
    cfg: &QueryConfig,
    project: &str,
    subject: &str,
    ttl: std::time::Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    let exp = chrono::Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
    let mut claims = Map::new();
    claims.insert(cfg.project_claim.clone(), Value::from(project));
    claims.insert("sub".into(), Value::from(subject));
    claims.insert("exp".into(), Value::from(exp));
    if !cfg.jwt_issuer.is_empty() {
        claims.insert("iss".into(), Value::from(cfg.jwt_issuer.as_str()));
    }
    if !cfg.jwt_audience.is_empty() {
        claims.insert("aud".into(), Value::from(cfg.jwt_audience.as_str()));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(cfg.jwt_secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "unit-test-secret-0123456789";

    fn verifier(edit: impl FnOnce(&mut QueryConfig)) -> Verifier {
        let mut cfg = QueryConfig {
            jwt_secret: SECRET.into(),
            ..QueryConfig::default()
        };
        edit(&mut cfg);
        Verifier::from_config(&cfg).unwrap()
    }

    fn token(mut claims: Value) -> String {
        claims["exp"] = json!(chrono::Utc::now().timestamp() + 600);
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn tenant(v: &Verifier, claims: Value) -> Result<Option<String>, String> {
        v.verify(&token(claims))
            .map(|s| s.tenant_id)
            .map_err(|e| match e {
                ApiError::Forbidden(m) => format!("403 {m}"),
                ApiError::Unauthorized(m) => format!("401 {m}"),
                other => format!("other {other}"),
            })
    }

    #[test]
    fn a_token_without_a_usable_tenant_claim_reads_nothing() {
        let v = verifier(|_| {});
        assert_eq!(
            tenant(&v, json!({"project_id": "p", "tenant_id": "t1"})),
            Ok(Some("t1".into()))
        );
        for claims in [
            json!({"project_id": "p"}),
            json!({"project_id": "p", "tenant_id": null}),
            json!({"project_id": "p", "tenant_id": 5}),
            json!({"project_id": "p", "tenant_id": ""}),
            json!({"project_id": "p", "tenant_id": ["t1"]}),
        ] {
            let got = tenant(&v, claims.clone());
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("403")),
                "{claims}: {got:?}"
            );
        }
    }

    #[test]
    fn project_wide_tokens_only_when_allowed_and_only_without_the_claim() {
        let v = verifier(|c| c.allow_project_wide_tokens = true);
        assert_eq!(tenant(&v, json!({"project_id": "p"})), Ok(None));
        for bad in [json!(null), json!(5), json!(""), json!(false)] {
            let got = tenant(&v, json!({"project_id": "p", "tenant_id": bad}));
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("403")),
                "{bad}: {got:?}"
            );
        }
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let v = verifier(|c| {
            c.allow_project_wide_tokens = true;
            c.jwt_issuer = "https://auth.example".into();
            c.jwt_audience = "hourglass".into();
        });
        let ok = json!({"project_id": "p", "iss": "https://auth.example", "aud": "hourglass"});
        assert_eq!(tenant(&v, ok), Ok(None));
        for claims in [
            json!({"project_id": "p"}),
            json!({"project_id": "p", "iss": "https://auth.example"}),
            json!({"project_id": "p", "aud": "hourglass"}),
            json!({"project_id": "p", "iss": "https://evil.example", "aud": "hourglass"}),
            json!({"project_id": "p", "iss": "https://auth.example", "aud": "other"}),
        ] {
            let got = tenant(&v, claims.clone());
            assert!(
                got.as_ref().is_err_and(|e| e.starts_with("401")),
                "{claims}: {got:?}"
            );
        }
    }
}
