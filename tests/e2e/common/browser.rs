//! The built-in page as a user sees it: Debian's `chromium`, headless,
//! runs the page's script against the live query API; the test reads the
//! numbers from the drawn DOM and keeps a screenshot.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `HOURGLASS_CHROMIUM`, else `chromium` (the test command installs it).
fn chromium() -> String {
    std::env::var("HOURGLASS_CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Headless, as root too, with a throwaway profile; virtual time lets the
/// page's fetches finish before the DOM is taken, without sleeping.
fn run(profile: &Path, extra: &[String], url: &str) -> std::process::Output {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): scripts/test installs it", chromium()));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The page's DOM after its script ran.
pub fn dump_dom(profile: &Path, url: &str) -> String {
    String::from_utf8_lossy(&run(profile, &["--dump-dom".into()], url).stdout).into_owned()
}

/// A PNG of the page at 1280 px wide; returns its path.
pub fn screenshot(profile: &Path, url: &str, path: &Path) -> PathBuf {
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("artifact folder");
    run(
        profile,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,1100".into(),
            "--hide-scrollbars".into(),
        ],
        url,
    );
    assert!(path.exists(), "no screenshot at {}", path.display());
    path.to_owned()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Text of every element carrying `data-cell`, by that attribute's value
/// (inner tags dropped).
pub fn cells(dom: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = dom;
    while let Some(at) = rest.find("data-cell=\"") {
        rest = &rest[at + "data-cell=\"".len()..];
        let end = rest.find('"').expect("attribute ends");
        let key = unescape(&rest[..end]);
        let open = rest.find('>').expect("tag ends") + 1;
        let close = rest.find("</td>").expect("cell ends");
        let mut text = String::new();
        let mut in_tag = false;
        for c in rest[open..close].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        out.insert(key, unescape(text.trim()));
        rest = &rest[close..];
    }
    out
}

/// `data-name="value"` of the `<body>` tag.
pub fn body_attribute(dom: &str, name: &str) -> Option<String> {
    let body = &dom[dom.find("<body")?..];
    let tag = &body[..body.find('>')?];
    let key = format!("data-{name}=\"");
    let at = tag.find(&key)? + key.len();
    Some(unescape(&tag[at..at + tag[at..].find('"')?]))
}
