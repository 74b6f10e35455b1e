//! The one parser of the text exposition format in the project: `socklat top` reads the
//! daemon's `/metrics` with it, and the tests check the daemon's output through it.

use std::collections::BTreeMap;

/// One sample line: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The value of label `k`, if the sample has it.
    #[must_use]
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels.get(k).map(String::as_str)
    }

    /// Whether the sample has every `(label, value)` of `want`.
    #[must_use]
    pub fn matches(&self, want: &[(&str, &str)]) -> bool {
        want.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// A line that is not a sample, comment or blank line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}: {text}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
    /// The line.
    pub text: String,
}

/// Parses every sample of an exposition text. Comments (`# HELP`, `# TYPE`) and blank lines
/// are skipped; a timestamp after the value is accepted and dropped.
///
/// # Errors
/// On the first line that is not a sample.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            parse_line(l).map_err(|why| ParseError {
                line: i + 1,
                why,
                text: l.to_string(),
            })
        })
        .collect()
}

/// Parses one sample line.
fn parse_line(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("no metric name");
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                None => return Err("unterminated label set"),
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if key.is_empty() || chars.next().map(|(_, c)| c) != Some('"') {
                return Err("a label value must be quoted");
            }
            let mut val = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '\\' => match chars.next().ok_or("unterminated label value")?.1 {
                        'n' => val.push('\n'),
                        c => val.push(c),
                    },
                    '"' => break,
                    c => val.push(c),
                }
            }
            if labels.insert(key, val).is_some() {
                return Err("a label appears twice");
            }
            while chars.peek().is_some_and(|(_, c)| *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((_, ',' | '}')) => {}
                _ => return Err("a label value must be followed by , or }"),
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or("no value")?
        .parse()
        .map_err(|_| "the value is not a number")?;
    if fields.next().is_some_and(|ts| ts.parse::<i64>().is_err()) || fields.next().is_some() {
        return Err("text after the value");
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_labels_escapes_and_special_values() {
        let text = "# HELP x y\n# TYPE x counter\nx 1\n\
                    y{a=\"1\",b=\"q\\\"uo}te,\\\\n\\n\"} 2.5\n\
                    z_bucket{le=\"+Inf\"} 3 1700000000\nw{} NaN\n";
        let s = parse(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "x");
        assert!(s[0].labels.is_empty());
        assert_eq!(s[1].label("b"), Some("q\"uo}te,\\n\n"));
        assert!(s[1].matches(&[("a", "1")]) && !s[1].matches(&[("a", "2")]));
        assert!((s[1].value - 2.5).abs() < f64::EPSILON);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!((s[2].value - 3.0).abs() < f64::EPSILON);
        assert!(s[3].value.is_nan());
    }

    #[test]
    fn malformed_lines_are_refused_with_their_number() {
        for (bad, why) in [
            ("x", "no value"),
            ("x{a=\"1\" 3", "a label value must be followed by , or }"),
            ("x{a=\"1} 3", "unterminated label value"),
            ("x{a=1} 3", "a label value must be quoted"),
            ("x{a=\"1\",a=\"2\"} 3", "a label appears twice"),
            ("x{a=\"1\"} three", "the value is not a number"),
            ("x 1 2 3", "text after the value"),
            ("{a=\"1\"} 1", "no metric name"),
        ] {
            let e = parse(&format!("ok 1\n{bad}\n")).unwrap_err();
            assert_eq!((e.line, e.why), (2, why), "{bad}");
        }
    }

    /// What the daemon writes, the parser reads back: every sample, with its labels.
    #[test]
    fn the_daemons_exposition_reads_back() {
        use crate::exposition::{Row, Scrape, render};
        use crate::labels::Labels;
        let mut row = Row::empty_other();
        row.labels = std::sync::Arc::new(Labels {
            cgroup: "/a\\b\n\"c\"".into(),
            ..Labels::default()
        });
        row.lost = 7;
        let text = render(&Scrape {
            rows: vec![row],
            ..Scrape::default()
        });
        let samples = parse(&text).unwrap();
        let lost: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "socklat_ringbuf_lost_events_total")
            .collect();
        assert_eq!(lost.len(), 2, "the cgroup and _other");
        assert_eq!(lost[0].label("cgroup"), Some("/a\\b\n\"c\""));
        assert!((lost[0].value - 7.0).abs() < f64::EPSILON);
        let sample_lines = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples.len(), sample_lines);
    }
}
