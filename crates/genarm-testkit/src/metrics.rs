//! Reading a Prometheus text exposition in tests: a metric's total over its label sets.

/// The sum of `name`'s samples over every label set in `exposition` (0 when absent). Only
/// samples named exactly `name` count: `genarm_steps_total` does not match
/// `genarm_steps_total_x`, and comments are skipped.
pub fn total(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name))
        .filter(|rest| rest.starts_with([' ', '{']))
        .filter_map(|rest| rest.rsplit(' ').next().and_then(|v| v.trim().parse::<f64>().ok()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::total;

    #[test]
    fn sums_label_sets_of_exactly_the_name() {
        let text = "# HELP genarm_x_total help\n# TYPE genarm_x_total counter\n\
                    genarm_x_total{worker=\"a\"} 2\ngenarm_x_total{worker=\"b b\"} 3.5\n\
                    genarm_x_total_other 100\ngenarm_y 7\n";
        assert_eq!(total(text, "genarm_x_total"), 5.5);
        assert_eq!(total(text, "genarm_y"), 7.0);
        assert_eq!(total(text, "genarm_z"), 0.0);
    }
}
