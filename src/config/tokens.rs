//! The tokens file's shape (`auth.tokensFile`): who each bearer token is, which databases it
//! reaches, with which scopes. Here, beside the configuration, because two sides use it: the API
//! reads it, and the operator writes one per engine — typed on both, so a renamed field fails to
//! compile instead of failing an engine at start.

use serde::{Deserialize, Serialize};

use super::file::Secret;

/// What a token may do; `admin` includes `read` and `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
    /// Only `/metrics`, for a scraper.
    Metrics,
}

impl Scope {
    /// The name the file spells it with (and the operator's tokens Secret keys it by).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }
}

/// The whole file: `tokens: [{name, token, databases, scopes}]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<TokenSpec>,
}

/// One token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSpec {
    /// Who writes with it (the audit trail's actor).
    pub name: String,
    pub token: Secret,
    /// Database keys, or `"*"` for all.
    pub databases: Vec<String>,
    pub scopes: Vec<Scope>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_is_spelled_as_the_file_spells_it() {
        for scope in [Scope::Read, Scope::Write, Scope::Admin, Scope::Metrics] {
            assert_eq!(serde_json::to_value(scope).unwrap(), scope.as_str());
        }
    }
}
