//! `SCHEMES.md` — the table of every URL scheme, its backend and its URL options — is
//! generated from each backend's `Config::from_url` rustdoc, and this test fails when the file
//! and the docs disagree. Regenerate with:
//!
//! `KV_UPDATE_SCHEMES=1 cargo test -p kv --test schemes_doc`

use std::path::Path;

/// The rustdoc right above `pub fn from_url` in `crates/kv-<backend>/src/config.rs`, as lines
/// without `///`, code examples dropped.
fn from_url_doc(backend: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(format!("kv-{backend}"))
        .join("src/config.rs");
    let source =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let lines: Vec<&str> = source.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with("pub fn from_url("))
        .unwrap_or_else(|| panic!("no `pub fn from_url(` in {}", path.display()));
    let mut doc: Vec<String> = lines[..at]
        .iter()
        .rev()
        .take_while(|l| l.trim_start().starts_with("///"))
        .map(|l| l.trim_start().trim_start_matches("///").trim().to_owned())
        .collect();
    doc.reverse();
    let mut out = Vec::new();
    let mut in_code = false;
    for line in doc {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && !line.is_empty() {
            out.push(line);
        }
    }
    assert!(!out.is_empty(), "kv-{backend}: from_url has no rustdoc");
    out
}

/// `[text](Self::item)`-style rustdoc links (meaningless outside rustdoc) become `text`.
fn drop_intra_doc_links(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|i| open + i) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|i| close + i) else {
            break;
        };
        let target = &rest[close + 2..end];
        out.push_str(&rest[..open]);
        if target.contains("::") || !target.contains(['/', '.', ':']) {
            out.push_str(&rest[open + 1..close]);
        } else {
            out.push_str(&rest[open..=end]);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The doc as one table cell: bullets become `•`, `|` is escaped.
fn cell(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| match l.strip_prefix("* ") {
            Some(item) => format!("• {}", drop_intra_doc_links(item)),
            None => drop_intra_doc_links(l),
        })
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn generate() -> String {
    let mut out = String::from(
        "<!-- Generated from each backend's `Config::from_url` rustdoc by \
         crates/kv/tests/schemes_doc.rs; regenerate with \
         `KV_UPDATE_SCHEMES=1 cargo test -p kv --test schemes_doc`. -->\n\n\
         | scheme (`kv::connect`, `--store`) | backend crate | cargo feature of `kv` | URL form and options (the backend's `Config::from_url`) |\n\
         | --- | --- | --- | --- |\n",
    );
    let mut backends: Vec<&str> = Vec::new();
    for s in kv::all_schemes() {
        if !backends.contains(&s.backend) {
            backends.push(s.backend);
        }
    }
    for backend in backends {
        let schemes: Vec<String> = kv::all_schemes()
            .iter()
            .filter(|s| s.backend == backend)
            .map(|s| {
                if backend == "bolt" {
                    format!("`{}:`", s.scheme)
                } else {
                    format!("`{}://`", s.scheme)
                }
            })
            .collect();
        out.push_str(&format!(
            "| {} | [`kv-{backend}`](crates/kv-{backend}) | `{backend}` | {} |\n",
            schemes.join(", "),
            cell(&from_url_doc(backend)),
        ));
    }
    out.push_str(
        "\n`http://` and `https://`, which `kv-etcd` and `kv-consul` accept when used directly, are \
         refused by `kv::connect` (they do not say which store is meant): write `etcd://`, \
         `etcds://`, `consul://` or `consul+https://`. Without `--store` or `KV_STORE`, the `kv` \
         tool and `kv::connect_from_env` use `bolt:.kv`, an embedded store in `./.kv`.\n",
    );
    out
}

#[test]
fn schemes_md_matches_the_backends_docs() {
    let generated = generate();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("SCHEMES.md");
    if std::env::var_os("KV_UPDATE_SCHEMES").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == generated,
        "crates/kv/SCHEMES.md is out of date with the backends' from_url docs: run \
         `KV_UPDATE_SCHEMES=1 cargo test -p kv --test schemes_doc`"
    );
}

/// Every scheme `kv::connect` routes to a backend is one that backend's docs name.
#[test]
fn every_scheme_is_documented_by_its_backend() {
    for s in kv::all_schemes() {
        let doc = from_url_doc(s.backend).join(" ");
        assert!(
            doc.contains(&format!("{}:", s.scheme))
                || doc.contains(&format!("`{}`", s.scheme))
                || doc.contains(&format!("{},", s.scheme))
                || doc.contains(&format!(" {} ", s.scheme)),
            "kv-{}'s from_url docs do not mention the scheme {:?}",
            s.backend,
            s.scheme
        );
    }
}

/// The workspace README shows the same table (its "Choosing the store at run time" section):
/// every row of SCHEMES.md must appear there unchanged.
#[test]
fn readme_shows_the_schemes_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let table = generate();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        assert!(
            readme.contains(row),
            "README.md lacks this row of crates/kv/SCHEMES.md (copy the table again):\n{row}"
        );
    }
}
