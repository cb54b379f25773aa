//! The series names and label names of a Prometheus text exposition (a `/metrics` scrape).

use std::collections::{BTreeMap, BTreeSet};

/// Every series name of the exposition with the union of the label names it carries.
///
/// # Errors
/// When a sample line is malformed (the message names the line).
pub fn series(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, labels) =
            sample(line).map_err(|e| format!("line {}: {e}: {line}", number + 1))?;
        out.entry(name).or_default().extend(labels);
    }
    Ok(out)
}

fn sample(line: &str) -> Result<(String, Vec<String>), String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    let rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
                chars.next();
            }
            match chars.peek() {
                Some('}') => break,
                None => return Err("unterminated label set".into()),
                _ => {}
            }
            let label: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim()
                .to_owned();
            if chars.next() != Some('"') {
                return Err(format!("label {label:?} has no quoted value"));
            }
            let mut escaped = false;
            loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some('\\') if !escaped => escaped = true,
                    Some('"') if !escaped => break,
                    Some(_) => escaped = false,
                }
            }
            labels.push(label);
        }
    }
    Ok((name.to_owned(), labels))
}

#[cfg(test)]
mod tests {
    use super::series;

    #[test]
    fn reads_names_and_labels_of_every_kind() {
        let text = r#"
# HELP shop_orders_placed_total Orders placed
# TYPE shop_orders_placed_total counter
shop_orders_placed_total 12
# TYPE http_server_request_duration_seconds histogram
http_server_request_duration_seconds_bucket{http_route="/orders",le="0.005"} 3
http_server_request_duration_seconds_bucket{http_route="/orders/{id}",le="+Inf"} 4
http_server_request_duration_seconds_sum{http_route="/orders"} 0.1
reprise_dead_letters_pending{queue="a \"quoted\", odd} queue"} 2 1700000000000
"#;
        let s = series(text).expect("parses");
        assert_eq!(s.len(), 4);
        assert!(s["shop_orders_placed_total"].is_empty());
        let bucket = &s["http_server_request_duration_seconds_bucket"];
        assert!(bucket.contains("le") && bucket.contains("http_route"));
        assert_eq!(
            s["reprise_dead_letters_pending"].iter().collect::<Vec<_>>(),
            ["queue"]
        );
    }

    #[test]
    fn refuses_a_broken_line() {
        assert!(series("foo{a=\"b} 1\n").is_err());
        assert!(series("foo{a=b} 1\n").is_err());
    }
}
