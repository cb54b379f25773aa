//! Message headers as stored in `dead_letters.headers` (`jsonb`): ordered `[name, value]`
//! pairs, because headers are ordered and may repeat a name (as in Kafka), which a JSON
//! object could not keep.

use reprise_core::event_bus::Headers;

/// The JSON text of `headers`: `[["name","value"], ...]`, in order.
pub(crate) fn encode_headers(headers: &Headers) -> String {
    let pairs: Vec<[&str; 2]> = headers
        .0
        .iter()
        .map(|(k, v)| [k.as_str(), v.as_str()])
        .collect();
    serde_json::to_string(&pairs).expect("string pairs always serialize")
}

/// The inverse of [`encode_headers`].
pub(crate) fn parse_headers(json: &str) -> Result<Headers, serde_json::Error> {
    serde_json::from_str::<Vec<(String, String)>>(json).map(Headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_keep_order_and_duplicates() {
        let headers = Headers(vec![
            ("b".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3\"quoted\"".into()),
        ]);
        let json = encode_headers(&headers);
        assert_eq!(json, r#"[["b","1"],["a","2"],["b","3\"quoted\""]]"#);
        assert_eq!(parse_headers(&json).unwrap(), headers);
    }

    #[test]
    fn an_object_is_not_headers() {
        assert!(parse_headers(r#"{"a":"1"}"#).is_err());
    }
}
