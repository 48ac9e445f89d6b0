//! The request, read in full (bodies are small: objects, patches, options):
//! its query parameters, the headers the verbs read, and the body decoded.

use std::collections::HashMap;

use bytes::Bytes;
use hyper::Method;
use serde_json::Value;

use crate::proto;
use crate::store::ApiError;

/// `a=b&c=d%20e` → map (`application/x-www-form-urlencoded`: `+` is a space,
/// a `%` that starts no escape stays as it is; the last of a repeated key wins).
pub(super) fn parse_query(q: &str) -> HashMap<String, String> {
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// The request, read in full (bodies are small: objects, patches, options).
pub(super) struct Req {
    pub(super) method: Method,
    pub(super) query: HashMap<String, String>,
    pub(super) accept: String,
    pub(super) content_type: String,
    pub(super) user_agent: String,
    pub(super) body: Bytes,
}

impl Req {
    pub(super) fn q(&self, key: &str) -> Option<&str> {
        self.query
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(super) fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }

    /// The body as a JSON object (JSON, YAML or protobuf).
    pub(super) fn object(&self) -> Result<Value, ApiError> {
        if self
            .content_type
            .starts_with("application/vnd.kubernetes.protobuf")
        {
            return proto::decode(&self.body);
        }
        if self.content_type.contains("yaml") {
            return serde_yaml::from_slice::<Value>(&self.body)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
    }

    /// The field manager for non-apply writes, as the API server derives it.
    pub(super) fn manager(&self) -> String {
        match self.q("fieldManager") {
            Some(m) => m.to_owned(),
            None => self
                .user_agent
                .split('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = parse_query(
            "labelSelector=name%3Dhollow-node&limit=500&fieldSelector=metadata.name%3Dn1+x",
        );
        assert_eq!(q["labelSelector"], "name=hollow-node");
        assert_eq!(q["limit"], "500");
        assert_eq!(q["fieldSelector"], "metadata.name=n1 x");
        assert_eq!(parse_query("p=100%")["p"], "100%");
        assert_eq!(parse_query("p=%zz&&q")["p"], "%zz");
        assert_eq!(parse_query("q")["q"], "");
    }
}
