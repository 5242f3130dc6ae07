//! The figures a scenario measured: printed as one `FAULTS …` line and, with
//! `KV_FAULTS_REPORT=<file>`, appended to that file as one tab-separated line
//! (`backend`, `scenario`, then `name=value` pairs) for `scripts/reliability`.

use std::fmt::Display;
use std::io::Write;

/// The figures of one scenario run on one backend.
#[derive(Debug, Clone)]
pub struct Report {
    backend: String,
    scenario: &'static str,
    figures: Vec<(&'static str, String)>,
}

impl Report {
    /// An empty report.
    pub fn new(backend: &str, scenario: &'static str) -> Self {
        Report {
            backend: backend.to_owned(),
            scenario,
            figures: Vec::new(),
        }
    }

    /// Adds a figure.
    pub fn add(&mut self, name: &'static str, value: impl Display) -> &mut Self {
        self.figures.push((name, value.to_string()));
        self
    }

    /// The figure called `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.figures
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Prints the report and appends it to `$KV_FAULTS_REPORT` when set.
    pub fn emit(&self) {
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(n, v)| format!("{n}={}", v.replace(['\t', '\n'], " ")))
            .collect();
        println!(
            "FAULTS {} {} {}",
            self.backend,
            self.scenario,
            figures.join(" ")
        );
        if let Ok(path) = std::env::var("KV_FAULTS_REPORT") {
            let line = format!(
                "{}\t{}\t{}\n",
                self.backend,
                self.scenario,
                figures.join("\t")
            );
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(error) = written {
                eprintln!("cannot append to KV_FAULTS_REPORT={path}: {error}");
            }
        }
    }
}
