//! `stampgate drill --junit FILE`: the drill's expectations as JUnit XML,
//! the format CI systems (GitLab, Jenkins, GitHub test reporters) show as
//! test results: one `<testcase>` per expectation, a `<failure>` for each
//! one that does not hold, and the build and config as properties so a
//! failed run names the code that failed.

use std::fmt::Write as _;

use super::report::Report;

/// The report's verdicts as one JUnit `<testsuite>`.
pub fn render(report: &Report) -> String {
    let failures = report.expectations.iter().filter(|v| !v.passed).count();
    let suite = format!("stampgate drill {}", report.scenario);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">",
        esc(&suite),
        report.expectations.len(),
        report.duration_s
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\" timestamp=\"{}\" hostname=\"{}\">",
        esc(&suite),
        report.expectations.len(),
        report.duration_s,
        esc(&report.started),
        esc(&report.build.host)
    );
    out.push_str("    <properties>\n");
    let fingerprint = report.config_fingerprint.as_deref().unwrap_or("none");
    for (name, value) in [
        ("stampgate.version", report.build.version.as_str()),
        ("stampgate.commit", &report.build.commit),
        ("stampgate.build", &report.build.build),
        ("config.fingerprint", fingerprint),
        ("load.rate", &report.rate.to_string()),
    ] {
        let _ = writeln!(
            out,
            "      <property name=\"{name}\" value=\"{}\"/>",
            esc(value)
        );
    }
    out.push_str("    </properties>\n");
    let classname = format!("drill.{}", report.scenario);
    for v in &report.expectations {
        let _ = write!(
            out,
            "    <testcase classname=\"{}\" name=\"{}\"",
            esc(&classname),
            esc(&v.name)
        );
        if v.passed {
            out.push_str("/>\n");
        } else {
            let message = format!("expected {}, got {}", v.expected, v.actual);
            let _ = writeln!(
                out,
                ">\n      <failure message=\"{}\" type=\"expectation\">{}</failure>\n    </testcase>",
                esc(&message),
                esc(&message)
            );
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// Text for XML attributes and content. Characters XML 1.0 cannot carry
/// at all (most control characters) become `?`.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(esc("a<b>&\"c'\u{1}"), "a&lt;b&gt;&amp;&quot;c&apos;?");
    }
}
