//! The README's commands, as written: the shell blocks of a section, run
//! with bash from a folder whose `.stack` is the running `hourglass up`'s.

use std::path::Path;
use std::process::Command;

fn readme() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md")
}

/// The ```` ```sh ```` blocks between `## {heading}` and the next `## `.
pub fn shell_blocks(heading: &str) -> Vec<String> {
    let text = readme();
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let section = &text[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(at) = rest.find("```sh\n") {
        rest = &rest[at + "```sh\n".len()..];
        let end = rest.find("```").expect("block ends");
        blocks.push(rest[..end].to_owned());
        rest = &rest[end + 3..];
    }
    assert!(!blocks.is_empty(), "README's {heading:?} has no sh block");
    blocks
}

/// The JSON a block's comment line says it prints (`# {...}`).
pub fn expected_output(block: &str) -> Option<serde_json::Value> {
    block
        .lines()
        .filter_map(|l| l.trim().strip_prefix("# "))
        .find_map(|l| serde_json::from_str(l).ok())
}

/// Run `block` with bash (errexit) in `dir`; its stdout.
pub fn run(block: &str, dir: &Path) -> String {
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "README block failed:\n{block}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every JSON document in `text`, in order (curl prints them back to back).
pub fn json_documents(text: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
