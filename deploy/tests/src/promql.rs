//! What a PromQL expression reads: the metric names it selects (with the label names of
//! their matchers) and the label names it groups or matches on. A small lexer, not a
//! parser — promtool checks the syntax; this answers "which series does it need".
//!
//! Grafana's variables (`$__rate_interval`, `${datasource}`) are skipped.

use std::collections::BTreeSet;

/// One vector selector: `name{label="…", …}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matcher_labels: Vec<String>,
}

/// What an expression reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reads {
    pub selectors: Vec<Selector>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right` lists.
    pub grouping_labels: BTreeSet<String>,
}

impl Reads {
    /// The metric names selected.
    #[must_use]
    pub fn metrics(&self) -> BTreeSet<&str> {
        self.selectors.iter().map(|s| s.metric.as_str()).collect()
    }
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "atan2", "inf", "nan"];
/// Aggregation operators: followed by `(` or by a grouping clause (`sum by (x) (…)`).
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// The metric names and labels `expr` reads.
///
/// # Errors
/// On an unterminated string, bracket or brace, or a character PromQL does not have.
pub fn reads(expr: &str) -> Result<Reads, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut lexer = Lexer { chars, at: 0 };
    let mut out = Reads::default();
    while let Some(c) = lexer.peek() {
        match c {
            c if c.is_whitespace() => lexer.at += 1,
            '#' => lexer.skip_while(|c| c != '\n'),
            '"' | '\'' | '`' => lexer.string()?,
            '$' => lexer.variable(),
            '[' => lexer.bracket()?,
            '{' => {
                // A selector without a metric name (`{__name__=~"…"}`): its labels only.
                let labels = lexer.matchers()?;
                out.selectors.push(Selector {
                    metric: String::new(),
                    matcher_labels: labels,
                });
            }
            c if c.is_ascii_digit() || (c == '.' && lexer.next_is_digit()) => {
                lexer.skip_while(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_');
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let word = lexer.identifier();
                let lower = word.to_ascii_lowercase();
                if GROUPING.contains(&lower.as_str()) {
                    if lexer.next_non_space() == Some('(') {
                        out.grouping_labels.extend(lexer.label_list()?);
                    }
                } else if lower == "offset" {
                    lexer.skip_spaces();
                    lexer.skip_while(|c| c.is_ascii_alphanumeric() || c == '-');
                } else if KEYWORDS.contains(&lower.as_str())
                    || AGGREGATIONS.contains(&lower.as_str())
                    || lexer.next_non_space() == Some('(')
                {
                    // An operator keyword, an aggregation, or a function name.
                } else {
                    let matcher_labels = if lexer.next_non_space() == Some('{') {
                        lexer.skip_spaces();
                        lexer.matchers()?
                    } else {
                        Vec::new()
                    };
                    out.selectors.push(Selector {
                        metric: word,
                        matcher_labels,
                    });
                }
            }
            '(' | ')' | ',' | '+' | '-' | '*' | '/' | '%' | '^' | '=' | '!' | '<' | '>' | '@'
            | ':' => lexer.at += 1,
            other => return Err(format!("unexpected {other:?} at {} in {expr}", lexer.at)),
        }
    }
    Ok(out)
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
}

impl Lexer {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn next_is_digit(&self) -> bool {
        self.chars
            .get(self.at + 1)
            .is_some_and(char::is_ascii_digit)
    }

    fn skip_while(&mut self, keep: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&keep) {
            self.at += 1;
        }
    }

    fn skip_spaces(&mut self) {
        self.skip_while(char::is_whitespace);
    }

    fn next_non_space(&self) -> Option<char> {
        self.chars[self.at..]
            .iter()
            .copied()
            .find(|c| !c.is_whitespace())
    }

    fn identifier(&mut self) -> String {
        let start = self.at;
        self.skip_while(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        self.chars[start..self.at].iter().collect()
    }

    fn string(&mut self) -> Result<(), String> {
        let quote = self.chars[self.at];
        self.at += 1;
        while let Some(c) = self.peek() {
            self.at += 1;
            if c == '\\' && quote != '`' {
                self.at += 1;
            } else if c == quote {
                return Ok(());
            }
        }
        Err("unterminated string".into())
    }

    fn variable(&mut self) {
        self.at += 1; // '$'
        if self.peek() == Some('{') {
            self.skip_while(|c| c != '}');
            self.at += 1;
        } else {
            self.skip_while(|c| c.is_ascii_alphanumeric() || c == '_');
        }
    }

    /// `[5m]`, `[$__rate_interval]`, `[1h:1m]`: durations and variables only.
    fn bracket(&mut self) -> Result<(), String> {
        self.skip_while(|c| c != ']');
        if self.peek() == Some(']') {
            self.at += 1;
            Ok(())
        } else {
            Err("unterminated [".into())
        }
    }

    /// `{a="x", b=~"y"}`: the label names.
    fn matchers(&mut self) -> Result<Vec<String>, String> {
        self.at += 1; // '{'
        let mut labels = Vec::new();
        loop {
            self.skip_while(|c| c.is_whitespace() || c == ',');
            match self.peek() {
                Some('}') => {
                    self.at += 1;
                    return Ok(labels);
                }
                None => return Err("unterminated {".into()),
                Some('"') => {
                    // A quoted metric name (`{"name"}`, Prometheus 3): not used here.
                    self.string()?;
                }
                Some(_) => {
                    let label = self.identifier();
                    if label.is_empty() {
                        return Err(format!("bad matcher at {}", self.at));
                    }
                    self.skip_while(|c| c.is_whitespace() || matches!(c, '=' | '!' | '~'));
                    if !matches!(self.peek(), Some('"' | '\'' | '`')) {
                        return Err(format!("matcher {label} has no quoted value"));
                    }
                    self.string()?;
                    labels.push(label);
                }
            }
        }
    }

    /// `(a, b)` after a grouping keyword.
    fn label_list(&mut self) -> Result<Vec<String>, String> {
        self.skip_spaces();
        self.at += 1; // '('
        let mut labels = Vec::new();
        loop {
            self.skip_while(|c| c.is_whitespace() || c == ',');
            match self.peek() {
                Some(')') => {
                    self.at += 1;
                    return Ok(labels);
                }
                Some(c) if c.is_ascii_alphabetic() || c == '_' => labels.push(self.identifier()),
                other => return Err(format!("bad label list near {other:?}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reads;

    fn metrics(expr: &str) -> Vec<String> {
        reads(expr)
            .expect("lexes")
            .metrics()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn finds_metrics_not_functions_keywords_labels_or_strings() {
        let expr = r#"histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket{http_route!~"/health/.*|(x)"}[5m])))
            / on (job) group_left (instance) max without (pod) (up offset 5m) and bool 1e3 > inf"#;
        assert_eq!(
            metrics(expr),
            ["http_server_request_duration_seconds_bucket", "up"]
        );
        let r = reads(expr).expect("lexes");
        let grouping: Vec<&str> = r.grouping_labels.iter().map(String::as_str).collect();
        assert_eq!(grouping, ["http_route", "instance", "job", "le", "pod"]);
        assert_eq!(r.selectors[0].matcher_labels, ["http_route"]);
    }

    #[test]
    fn aggregation_modifier_after_the_argument_and_recorded_names() {
        let r = reads("sum(rate(a_total[5m])) by (queue) > 0 unless on() reprise:lag:sum")
            .expect("lexes");
        assert_eq!(
            r.metrics().into_iter().collect::<Vec<_>>(),
            ["a_total", "reprise:lag:sum"]
        );
        assert!(r.grouping_labels.contains("queue"));
    }

    #[test]
    fn skips_grafana_variables_and_subqueries() {
        assert_eq!(
            metrics("deriv(sum(x_total{a=\"$var\"})[15m:1m]) / rate(y[$__rate_interval]) * ${k}"),
            ["x_total", "y"]
        );
    }

    #[test]
    fn reports_unterminated_input() {
        assert!(reads("rate(x{a=\"b}[5m])").is_err());
        assert!(reads("rate(x[5m)").is_err());
    }
}
