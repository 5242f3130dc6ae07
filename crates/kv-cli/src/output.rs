//! How values and pairs are shown: text as is, binary values escaped (human output) or in
//! base64 (JSON), and progress spinners only on a terminal.

use std::io::IsTerminal;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use indicatif::{ProgressBar, ProgressStyle};
use kv::KvPair;
use serde_json::{Value, json};

/// True when `value` can be printed as is: UTF-8 with no control character but newline and
/// tab.
pub fn is_text(value: &[u8]) -> bool {
    std::str::from_utf8(value)
        .map(|s| !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t'))
        .unwrap_or(false)
}

/// A value for human output: text as is; anything else escaped like a Rust byte string
/// (`\xNN`, `\n`, `\\`…), so that a terminal never receives raw control bytes.
pub fn display(value: &[u8]) -> String {
    if is_text(value) {
        String::from_utf8_lossy(value).into_owned()
    } else {
        value.escape_ascii().to_string()
    }
}

/// A value encoded in base64 (standard alphabet, padded).
pub fn base64(value: &[u8]) -> String {
    STANDARD.encode(value)
}

/// A pair as JSON: `{"key", "index", "value"}` when the value is UTF-8 text, else
/// `{"key", "index", "value_base64"}`.
pub fn pair_json(pair: &KvPair) -> Value {
    let mut object = json!({ "key": pair.key, "index": pair.last_index });
    match std::str::from_utf8(&pair.value) {
        Ok(text) => object["value"] = json!(text),
        Err(_) => object["value_base64"] = json!(base64(&pair.value)),
    }
    object
}

/// A spinner on stderr with `message`, only when both stdout and stderr are terminals (never
/// when the output is piped or redirected).
pub fn spinner(message: impl Into<String>) -> Option<ProgressBar> {
    if !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.into());
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// A progress bar over `total` items on stderr, only on a terminal (see [`spinner`]), and
/// only for large totals where it helps.
pub fn progress(total: u64, message: impl Into<String>) -> Option<ProgressBar> {
    if total < 10_000 || !(std::io::stdout().is_terminal() && std::io::stderr().is_terminal()) {
        return None;
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(message.into());
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values_are_escaped_text_is_not() {
        assert_eq!(display(b"hello\nworld"), "hello\nworld");
        assert_eq!(display("héllo".as_bytes()), "héllo");
        assert_eq!(display(b"\x00\xffa\\"), "\\x00\\xffa\\\\");
        assert_eq!(display(b"\x1b[31m"), "\\x1b[31m");
        let pair = KvPair::new("k", vec![0xffu8, 0], 3);
        assert_eq!(
            pair_json(&pair),
            json!({"key": "k", "index": 3, "value_base64": "/wA="})
        );
    }
}
