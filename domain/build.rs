//! The fingerprint of the code that defines aggregate states (`STATE_FINGERPRINT`): a saved
//! state (snapshot) is read back only by a build whose states have the same shape and meaning.
//! Any change to the domain or crypto sources gives a new fingerprint, so snapshots written by
//! another build are ignored and rewritten rather than misread.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut hash = Sha256::new();
    for root in [manifest.join("src"), manifest.join("../crypto/src")] {
        println!("cargo:rerun-if-changed={}", root.display());
        let mut files = Vec::new();
        sources(&root, &mut files);
        files.sort();
        for file in files {
            let name = file.strip_prefix(&root).unwrap_or(&file);
            hash.update(name.to_string_lossy().as_bytes());
            hash.update([0]);
            hash.update(std::fs::read(&file).unwrap_or_default());
            hash.update([0]);
        }
    }
    let digest = hash.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=QUANTUS_STATE_FINGERPRINT={hex}");
}
