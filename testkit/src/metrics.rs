//! Reading one sample out of a Prometheus text exposition (what `/metrics` serves).

/// The value of the first sample of `name` whose labels include every pair of `labels`
/// (`&[]` for the first sample of the family); None when there is none. Comment lines and
/// families whose name merely starts with `name` are skipped.
pub fn metric_value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP x_total X.\n# TYPE x_total counter\nx_total{kind=\"a\"} 1\nx_total{kind=\"b\"} 2.5\nx_total_other 9\ny 7\n";

    #[test]
    fn samples_are_found_by_name_and_labels() {
        assert_eq!(metric_value(BODY, "x_total", &[]), Some(1.0));
        assert_eq!(metric_value(BODY, "x_total", &[("kind", "b")]), Some(2.5));
        assert_eq!(metric_value(BODY, "x_total", &[("kind", "c")]), None);
        assert_eq!(metric_value(BODY, "y", &[]), Some(7.0));
        assert_eq!(metric_value(BODY, "x", &[]), None, "a prefix is not a name");
    }
}
