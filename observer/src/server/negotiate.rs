//! Content negotiation of a scrape: the format from `Accept` (as Prometheus's client
//! libraries choose it: the entry of highest quality, protobuf only when it is the
//! delimited `MetricFamily` encoding) and gzip from `Accept-Encoding`.

/// The format of a scrape's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// Delimited protobuf `MetricFamily` messages.
    Protobuf,
}

/// One entry of a comma-separated header: the value, its parameters and its `q`.
struct Entry<'a> {
    value: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f64,
}

fn entries(header: &str) -> impl Iterator<Item = Entry<'_>> {
    header.split(',').filter_map(|part| {
        let mut fields = part.split(';').map(str::trim);
        let value = fields.next().filter(|v| !v.is_empty())?;
        let mut q = 1.0;
        let mut params = Vec::new();
        for p in fields {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            if k.eq_ignore_ascii_case("q") {
                q = v
                    .parse()
                    .ok()
                    .filter(|q: &f64| q.is_finite())
                    .unwrap_or(0.0);
            } else {
                params.push((k, v));
            }
        }
        Some(Entry { value, params, q })
    })
}

/// The format to answer an `Accept` header with: protobuf when the entry of highest quality
/// (the first of those) is `application/vnd.google.protobuf` with
/// `proto=io.prometheus.client.MetricFamily` and `encoding=delimited`; text otherwise
/// (`OpenMetrics`, text, `*/*`, no header).
#[must_use]
pub fn format(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<Entry<'_>> = None;
    for e in entries(accept) {
        if e.q > 0.0 && best.as_ref().is_none_or(|b| e.q > b.q) {
            best = Some(e);
        }
    }
    let Some(best) = best else {
        return Format::Text;
    };
    let param = |name: &str| {
        best.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    };
    if best
        .value
        .eq_ignore_ascii_case("application/vnd.google.protobuf")
        && param("proto") == Some("io.prometheus.client.MetricFamily")
        && param("encoding") == Some("delimited")
    {
        Format::Protobuf
    } else {
        Format::Text
    }
}

/// Whether an `Accept-Encoding` header allows gzip (`gzip` or `x-gzip` with a non-zero
/// quality, or `*` with one when gzip is not named).
#[must_use]
pub fn gzip(accept_encoding: Option<&str>) -> bool {
    let Some(header) = accept_encoding else {
        return false;
    };
    let mut named = None;
    let mut any = None;
    for e in entries(header) {
        if e.value.eq_ignore_ascii_case("gzip") || e.value.eq_ignore_ascii_case("x-gzip") {
            named = Some(e.q > 0.0);
        } else if e.value == "*" {
            any = Some(e.q > 0.0);
        }
    }
    named.or(any).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 sends with `--enable-feature=native-histograms`, and without.
    const PROM_NATIVE: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    const PROM_CLASSIC: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn formats() {
        assert_eq!(format(Some(PROM_NATIVE)), Format::Protobuf);
        assert_eq!(format(Some(PROM_CLASSIC)), Format::Text);
        assert_eq!(format(None), Format::Text);
        assert_eq!(format(Some("*/*")), Format::Text);
        assert_eq!(format(Some("")), Format::Text);
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
            )),
            Format::Protobuf
        );
        // Another protobuf encoding, or protobuf below text's quality: text.
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text"
            )),
            Format::Text
        );
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.4,text/plain;q=0.5"
            )),
            Format::Text
        );
        // q=0 means "not this".
        assert_eq!(
            format(Some(
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0"
            )),
            Format::Text
        );
        // Garbage is text, never a panic.
        assert_eq!(format(Some(";;,,;q=;=")), Format::Text);
    }

    #[test]
    fn gzip_from_accept_encoding() {
        assert!(gzip(Some("gzip")));
        assert!(gzip(Some("deflate, gzip;q=0.5")));
        assert!(gzip(Some("*")));
        assert!(gzip(Some("X-GZIP")));
        assert!(!gzip(Some("gzip;q=0")));
        assert!(!gzip(Some("*, gzip;q=0")));
        assert!(!gzip(Some("identity")));
        assert!(!gzip(Some("br")));
        assert!(!gzip(None));
    }
}
